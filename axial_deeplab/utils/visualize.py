"""Pictures of panoptic predictions: overlay with class names, semantic map, center heatmap, offsets.

All functions take and return numpy arrays (``[H, W, 3]`` uint8 RGB pictures), so they work on any
prediction source. Colors come from the dataset's category colors when given, else a fixed palette.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

# Twenty high-contrast colors (the "tab20" qualitative set), then golden-ratio hues.
_BASE_COLORS = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
        [174, 199, 232],
        [255, 187, 120],
        [152, 223, 138],
        [255, 152, 150],
        [197, 176, 213],
        [196, 156, 148],
        [247, 182, 210],
        [199, 199, 199],
        [219, 219, 141],
        [158, 218, 229],
    ],
    dtype=np.uint8,
)


def palette(num_colors: int) -> np.ndarray:
    """``[num_colors, 3]`` uint8 distinct-looking colors, deterministic."""
    extra = max(0, num_colors - len(_BASE_COLORS))
    hues = (np.arange(extra) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 179, np.full(extra, 200), np.full(extra, 230)], axis=-1)
    more = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0] if extra else None
    colors = _BASE_COLORS if more is None else np.concatenate([_BASE_COLORS, more])
    return colors[:num_colors]


def _instance_color(base: np.ndarray, instance: int) -> np.ndarray:
    """Shade a class color per instance so that touching instances of a class stay apart."""
    if instance == 0:
        return base
    jitter = (np.array([37, 91, 53]) * instance) % 61 - 30
    return np.clip(base.astype(int) + jitter, 0, 255).astype(np.uint8)


def panoptic_overlay(
    image: np.ndarray,
    panoptic: np.ndarray,
    *,
    label_divisor: int,
    class_names: Sequence[str],
    class_colors: np.ndarray | None = None,
    void_label: int = -1,
    alpha: float = 0.55,
) -> np.ndarray:
    """Blend segment colors over ``image [H, W, 3]`` and write each segment's class name on it.

    ``panoptic [H, W]``: ``class * label_divisor + instance``; pixels of ``void_label`` (or whose
    class is outside ``class_names``) stay unpainted. Instances get outlines.
    """
    if image.shape[:2] != panoptic.shape:
        raise ValueError(f"image {image.shape[:2]} and panoptic {panoptic.shape} sizes differ")
    colors = palette(len(class_names)) if class_colors is None else np.asarray(class_colors)
    out = image.astype(np.float32).copy()
    labels: list[tuple[str, tuple[int, int]]] = []
    for segment in np.unique(panoptic):
        cls, inst = divmod(int(segment), label_divisor)
        if segment == void_label or not 0 <= cls < len(class_names):
            continue
        mask = panoptic == segment
        color = _instance_color(colors[cls], inst)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        ys, xs = np.nonzero(mask)
        labels.append((class_names[cls], (int(np.median(xs)), int(np.median(ys)))))
        if inst > 0:
            contours, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    out = out.clip(0, 255).astype(np.uint8)
    scale = max(0.3, min(image.shape[:2]) / 800)
    for name, (x, y) in labels:
        cv2.putText(out, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            out, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
        )
    return out


def semantic_map(
    semantic: np.ndarray, num_classes: int, class_colors: np.ndarray | None = None
) -> np.ndarray:
    """``semantic [H, W]`` class ids to colors; ids outside ``[0, num_classes)`` are black."""
    colors = palette(num_classes) if class_colors is None else np.asarray(class_colors, np.uint8)
    table = np.concatenate([colors, np.zeros((1, 3), np.uint8)])
    index = np.where((semantic >= 0) & (semantic < num_classes), semantic, num_classes)
    return table[index]


def heatmap(center: np.ndarray, centers: np.ndarray | None = None) -> np.ndarray:
    """``center [H, W]`` scores in [0, 1] as a color map; ``centers [K, 2] (y, x)`` marked."""
    gray = (np.clip(center, 0, 1) * 255).astype(np.uint8)
    out = cv2.applyColorMap(gray, cv2.COLORMAP_JET)[..., ::-1].copy()
    if centers is not None:
        for y, x in np.asarray(centers).reshape(-1, 2):
            cv2.drawMarker(out, (int(x), int(y)), (255, 255, 255), cv2.MARKER_CROSS, 7, 2)
    return out


def offset_field(offset: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """``offset [2, H, W] (dy, dx)`` as a color wheel: hue = direction, brightness = length."""
    if offset.ndim != 3 or offset.shape[0] != 2:
        raise ValueError(f"expected offsets [2, H, W], got {offset.shape}")
    dy, dx = offset.astype(np.float32)
    norm = np.hypot(dy, dx)
    scale = max_norm or max(float(norm.max()), 1e-6)
    hue = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * 179
    hsv = np.stack([hue, np.full_like(hue, 255), np.clip(norm / scale, 0, 1) * 255], axis=-1)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def tile(pictures: Mapping[str, np.ndarray], columns: int = 2) -> np.ndarray:
    """Lay out titled pictures (same size) in a grid; returns one ``[H', W', 3]`` RGB picture."""
    items = list(pictures.items())
    h, w = items[0][1].shape[:2]
    rows = -(-len(items) // columns)
    canvas = np.full((rows * (h + 24), columns * w, 3), 255, np.uint8)
    for i, (title, pic) in enumerate(items):
        if pic.shape[:2] != (h, w):
            pic = cv2.resize(pic, (w, h), interpolation=cv2.INTER_NEAREST)
        r, c = divmod(i, columns)
        y0 = r * (h + 24)
        canvas[y0 + 24 : y0 + 24 + h, c * w : (c + 1) * w] = pic
        cv2.putText(
            canvas,
            title,
            (c * w + 4, y0 + 17),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return canvas
