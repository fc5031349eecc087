"""Pictures of panoptic predictions people can read.

Panels: panoptic overlay (segment fills, outlines, one non-overlapping class label per segment),
semantic map, centre heatmap with its colour scale, offset field with its colour wheel; a legend
strip names the classes present with their colours and areas; :func:`prediction_panels` lays them
out, ground truth beside the prediction when it is known, at a readable size (small inputs are
enlarged, :func:`enlarge`).

All functions take and return numpy arrays (``[H, W, 3]`` uint8 RGB pictures), so they work on any
prediction source. Colours come from the data set's category colours when given, else a fixed
palette.
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
FONT = cv2.FONT_HERSHEY_SIMPLEX
READABLE_SIDE = 384  # pictures are enlarged until their short side reaches this...
MAX_ENLARGED_SIDE = 2048  # ...unless their long side would pass this
TITLE_HEIGHT = 26


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
    jitter = (np.array([37, 91, 53]) * instance) % 121 - 60
    return np.clip(base.astype(int) + jitter, 0, 255).astype(np.uint8)


def font_scale(shape: tuple[int, ...]) -> float:
    """Text size for a picture of ``shape``: grows with its short side, within [0.5, 1.0]."""
    return float(np.clip(min(shape[:2]) / 700, 0.5, 1.0))


def _text_color(background: np.ndarray) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    luma = float(np.dot(np.asarray(background, float), [0.299, 0.587, 0.114]))
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _label_box(
    canvas: np.ndarray, text: str, anchor: tuple[int, int], scale: float, taken: list
) -> bool:
    """The box of ``text`` centred on ``anchor (x, y)``, moved inside the picture and then down
    or up by whole box heights until it overlaps no box in ``taken`` (then appended to it);
    False when none is free or the box is larger than the picture."""
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    w, h = tw + 6, th + base + 4
    height, width = canvas.shape[:2]
    if w > width or h > height:
        return False  # a label larger than the picture would hide it
    x = int(np.clip(anchor[0] - w // 2, 0, width - w))
    for shift in (0, 1, -1, 2, -2):
        y = int(np.clip(anchor[1] - h // 2 + shift * h, 0, height - h))
        box = (x, y, x + w, y + h)
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in taken):
            taken.append(box)
            return True
    return False


def _draw_label(canvas: np.ndarray, text: str, box: tuple, color: np.ndarray, scale: float) -> None:
    x0, y0, x1, y1 = box
    fill = tuple(int(v) for v in (np.asarray(color, float) * 0.75))
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), fill, -1)
    (_, th), _ = cv2.getTextSize(text, FONT, scale, 1)
    cv2.putText(canvas, text, (x0 + 3, y0 + th + 2), FONT, scale, _text_color(fill), 1, cv2.LINE_AA)


def _interior_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the mask pixel farthest from its border (a label there stays on it)."""
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def segment_edges(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour has another label (1-pixel lines
    between segments; the picture's border is not an edge)."""
    edges = np.zeros(labels.shape, bool)
    edges[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edges[:-1] |= labels[1:] != labels[:-1]
    return edges


def panoptic_overlay(
    image: np.ndarray,
    panoptic: np.ndarray,
    *,
    label_divisor: int,
    class_names: Sequence[str],
    class_colors: np.ndarray | None = None,
    void_label: int = -1,
    alpha: float = 0.55,
    scores: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Blend segment colors over ``image [H, W, 3]``, outline every segment and label it.

    ``panoptic [H, W]``: ``class * label_divisor + instance``; pixels of ``void_label`` (or whose
    class is outside ``class_names``) stay unpainted. Labels (class name, and ``scores[label]``
    when given) sit on each segment's most interior pixel; they never overlap: things are labelled
    first, then larger segments, and a label with no free place is left out (the legend still
    names its class).
    """
    if image.shape[:2] != panoptic.shape:
        raise ValueError(f"image {image.shape[:2]} and panoptic {panoptic.shape} sizes differ")
    colors = palette(len(class_names)) if class_colors is None else np.asarray(class_colors)
    out = image.astype(np.float32).copy()
    segments = []
    for segment in np.unique(panoptic):
        cls, inst = divmod(int(segment), label_divisor)
        if segment == void_label or not 0 <= cls < len(class_names):
            continue
        mask = panoptic == segment
        color = _instance_color(colors[cls], inst)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
        segments.append((inst == 0, -int(mask.sum()), int(segment), cls, color, mask))
    out = out.clip(0, 255).astype(np.uint8)
    out[segment_edges(panoptic) & (panoptic != void_label)] = 255  # white outlines
    scale, taken = font_scale(image.shape), []
    for _, _, segment, cls, color, mask in sorted(segments, key=lambda s: s[:3]):
        text = class_names[cls]
        if scores is not None and segment in scores and segment % label_divisor:
            text = f"{text} {max(scores[segment], 0.0) + 0.0:.2f}"  # + 0.0: no "-0.00"
        if _label_box(out, text, _interior_point(mask), scale, taken):
            _draw_label(out, text, taken[-1], color, scale)
    return out


def semantic_map(
    semantic: np.ndarray, num_classes: int, class_colors: np.ndarray | None = None
) -> np.ndarray:
    """``semantic [H, W]`` class ids to colors; ids outside ``[0, num_classes)`` are black."""
    colors = palette(num_classes) if class_colors is None else np.asarray(class_colors, np.uint8)
    table = np.concatenate([colors, np.zeros((1, 3), np.uint8)])
    index = np.where((semantic >= 0) & (semantic < num_classes), semantic, num_classes)
    return table[index]


def _backing(canvas: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Darken ``box (x0, y0, x1, y1)`` of ``canvas`` so that an inset drawn there stands out."""
    x0, y0, x1, y1 = (max(0, v) for v in box)
    canvas[y0:y1, x0:x1] = (canvas[y0:y1, x0:x1] * 0.35).astype(np.uint8)


def heatmap(center: np.ndarray, centers: np.ndarray | None = None, *, scale: bool = True):
    """``center [H, W]`` scores in [0, 1] as a colour map; ``centers [K, 2] (y, x)`` marked with
    white crosses; ``scale``: a colour bar 0..1 (if the picture has room) in the first corner,
    of top-right, top-left, bottom-right and bottom-left, that holds the fewest centres (the
    crosses are drawn over it, so none is hidden).
    """
    gray = (np.clip(center, 0, 1) * 255).astype(np.uint8)
    out = cv2.applyColorMap(gray, cv2.COLORMAP_JET)[..., ::-1].copy()
    points = np.zeros((0, 2)) if centers is None else np.asarray(centers).reshape(-1, 2)
    height, width = out.shape[:2]
    if scale and height >= 96 and width >= 96:
        _color_bar(out, points)
    size = _marker_size(out.shape)
    for y, x in points:
        cv2.drawMarker(out, (int(x), int(y)), (255, 255, 255), cv2.MARKER_CROSS, size, 2)
    return out


def _marker_size(shape: tuple[int, ...]) -> int:
    """The size of :func:`heatmap`'s centre crosses, in pixels."""
    return max(7, min(shape[:2]) // 30)


def _color_bar(out: np.ndarray, points: np.ndarray) -> None:
    """Draw :func:`heatmap`'s colour bar with its labels in the corner of ``out`` with the
    fewest ``points [K, 2] (y, x)``."""
    height, width = out.shape[:2]
    fs = font_scale(out.shape)
    bar_h, bar_w = height // 3, max(8, width // 40)
    (tw, th), _ = cv2.getTextSize("0.5", FONT, fs, 1)
    box_w, box_h = bar_w + tw + 14, bar_h + th + 10  # backing box, from its corner at 2 px
    corners = [(width - 2 - box_w, 2), (2, 2), (width - 2 - box_w, height - 2 - box_h),
               (2, height - 2 - box_h)]  # fmt: skip

    reach = _marker_size(out.shape) // 2 + 1  # a cross near the box reaches into it

    def inside(corner: tuple[int, int]) -> int:
        bx, by = corner
        ys, xs = points[:, 0], points[:, 1]
        x_in = (xs >= bx - reach) & (xs < bx + box_w + reach)
        return int((x_in & (ys >= by - reach) & (ys < by + box_h + reach)).sum())

    bx, by = min(corners, key=inside)  # the first of the emptiest
    _backing(out, (bx, by, bx + box_w, by + box_h))
    x1, y0 = bx + box_w - 4, by + 4 + th // 2
    x0 = x1 - bar_w
    ramp = np.linspace(255, 0, bar_h).astype(np.uint8)[:, None].repeat(bar_w, 1)
    out[y0 : y0 + bar_h, x0:x1] = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[..., ::-1]
    for value in (1.0, 0.5, 0.0):
        y = y0 + round((1 - value) * (bar_h - 1)) + th // 2
        cv2.putText(out, f"{value:g}", (x0 - tw - 5, y), FONT, fs, (255, 255, 255), 1, cv2.LINE_AA)


def _offset_colors(dy: np.ndarray, dx: np.ndarray, scale: float) -> np.ndarray:
    """Hue = direction of ``(dy, dx)``, brightness = length / ``scale`` (clipped to 1)."""
    hue = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * 179
    value = np.clip(np.hypot(dy, dx) / scale, 0, 1) * 255
    hsv = np.stack([hue, np.full_like(hue, 255), value], axis=-1)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def offset_field(offset: np.ndarray, max_norm: float | None = None, *, wheel: bool = True):
    """``offset [2, H, W] (dy, dx)`` (each pixel's vector to its instance centre) as colours:
    hue = direction, brightness = length relative to ``max_norm`` (default: the longest).
    ``wheel``: a colour wheel in the bottom-right corner (a pixel whose vector points from the
    wheel's middle to a place on it has that place's colour) and the length of full brightness."""
    if offset.ndim != 3 or offset.shape[0] != 2:
        raise ValueError(f"expected offsets [2, H, W], got {offset.shape}")
    dy, dx = offset.astype(np.float32)
    scale = max_norm or max(float(np.hypot(dy, dx).max()), 1e-6)
    out = _offset_colors(dy, dx, scale)
    height, width = out.shape[:2]
    if wheel and height >= 96 and width >= 96:
        fs = font_scale(out.shape)
        radius = max(16, min(height, width) // 9)
        text = f"{scale:.0f} px" if scale >= 10 else f"{scale:.2g} px"  # "350 px", not "3.5e+02"
        (tw, th), _ = cv2.getTextSize(text, FONT, fs, 1)
        cy, cx = height - radius - th - 12, width - radius - 6
        _backing(out, (min(cx - radius, width - tw - 6) - 4, cy - radius - 4, width, height))
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float32)
        disc = _offset_colors(yy, xx, radius)
        inside = np.hypot(yy, xx) <= radius
        region = out[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
        region[inside] = disc[inside]
        cv2.putText(
            out, text, (width - tw - 4, height - 6), FONT, fs, (255, 255, 255), 1, cv2.LINE_AA
        )
    return out


def legend(entries: Sequence[tuple[str, np.ndarray]], width: int, scale: float = 0.5):
    """A ``[h, width, 3]`` white strip with a colour swatch and text per ``(text, color)`` entry,
    flowing over as many rows as needed."""
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, 1)
    row_h, swatch = th + base + 10, th + base
    rows: list[list[tuple[int, str, np.ndarray]]] = [[]]
    x = 6
    for text, color in entries:
        item_w = swatch + 6 + cv2.getTextSize(text, FONT, scale, 1)[0][0] + 16
        if x + item_w > width and rows[-1]:
            rows.append([])
            x = 6
        rows[-1].append((x, text, color))
        x += item_w
    out = np.full((len(rows) * row_h + 4, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = 4 + r * row_h
        for x, text, color in row:
            cv2.rectangle(out, (x, y), (x + swatch, y + swatch), [int(v) for v in color], -1)
            cv2.rectangle(out, (x, y), (x + swatch, y + swatch), (80, 80, 80), 1)
            org = (x + swatch + 6, y + th + 1)
            cv2.putText(out, text, org, FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def class_legend(
    semantic: np.ndarray,
    class_names: Sequence[str],
    class_colors: np.ndarray | None,
    width: int,
    *,
    thing_ids: Sequence[int] = (),
    also: Sequence[int] = (),
) -> np.ndarray:
    """Legend of the classes present in ``semantic [H, W]``, largest first, with their share of
    the picture (things marked with ``*``), then the classes of ``also`` absent from it (e.g.
    present in the ground truth only)."""
    colors = palette(len(class_names)) if class_colors is None else np.asarray(class_colors)
    ids, counts = np.unique(
        semantic[(semantic >= 0) & (semantic < len(class_names))], return_counts=True
    )
    total = max(1, semantic.size)
    entries = [
        (f"{class_names[c]}{'*' if c in thing_ids else ''} {_percent(n / total)}", colors[c])
        for c, n in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1])
    ]
    entries += [
        (f"{class_names[c]}{'*' if c in thing_ids else ''} 0%", colors[c])
        for c in sorted(set(also) - set(ids.tolist()))
        if 0 <= c < len(class_names)
    ]
    entries = entries or [("no class predicted", np.array([0, 0, 0]))]
    return legend(entries, width, scale=max(0.45, font_scale((width, width)) * 0.9))


def _percent(share: float) -> str:
    return "<1%" if 0 < share < 0.01 else f"{100 * share:.0f}%"


def enlarge_factor(
    shape: tuple[int, ...], min_side: int = READABLE_SIDE, max_side: int = MAX_ENLARGED_SIDE
) -> int:
    """The integer factor that brings the short side of ``shape`` to at least ``min_side``, but
    the long side to no more than ``max_side`` (a 2 x 3000 strip is not drawn 576,000 wide)."""
    factor = max(1, -(-min_side // max(1, min(shape[:2]))))
    return max(1, min(factor, max_side // max(1, max(shape[:2]))))


def enlarge(image: np.ndarray, prediction: Mapping, factor: int) -> tuple[np.ndarray, dict]:
    """``image`` and the maps of ``prediction`` (``panoptic``, ``semantic``, ``center``,
    ``offset``, ``centers``; others are kept) scaled up ``factor`` times: the image smoothly, the
    maps by pixel repetition, the offsets and centre coordinates multiplied."""
    if factor == 1:
        return image, dict(prediction)
    size = (image.shape[1] * factor, image.shape[0] * factor)  # cv2: (w, h)
    out = dict(prediction)
    for key in ("panoptic", "semantic", "center", "offset"):
        if key in out:
            out[key] = np.asarray(out[key]).repeat(factor, -2).repeat(factor, -1)
    if "offset" in out:
        out["offset"] = out["offset"] * factor
    if "centers" in out:
        out["centers"] = np.asarray(out["centers"]) * factor + factor // 2
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), out


def tile(
    pictures: Mapping[str, np.ndarray], columns: int = 2, footer: np.ndarray | None = None
) -> np.ndarray:
    """Lay out titled pictures (resized to the first one's size) in a grid, then ``footer`` (a
    picture as wide as the grid, e.g. a :func:`legend`) below; one ``[H', W', 3]`` RGB picture."""
    items = list(pictures.items())
    h, w = items[0][1].shape[:2]
    columns = min(columns, len(items))
    rows = -(-len(items) // columns)
    canvas = np.full((rows * (h + TITLE_HEIGHT), columns * w, 3), 255, np.uint8)
    scale = float(np.clip(w / 700, 0.5, 0.75))
    for i, (title, pic) in enumerate(items):
        if pic.shape[:2] != (h, w):
            pic = cv2.resize(pic, (w, h), interpolation=cv2.INTER_NEAREST)
        r, c = divmod(i, columns)
        y0 = r * (h + TITLE_HEIGHT)
        canvas[y0 + TITLE_HEIGHT : y0 + TITLE_HEIGHT + h, c * w : (c + 1) * w] = pic
        org = (c * w + 4, y0 + TITLE_HEIGHT - 8)
        cv2.putText(canvas, title, org, FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    if footer is not None:
        if footer.shape[1] != canvas.shape[1]:
            raise ValueError(f"footer width {footer.shape[1]} != grid width {canvas.shape[1]}")
        canvas = np.concatenate([canvas, footer])
    return canvas


def prediction_panels(
    image: np.ndarray,
    prediction: Mapping,
    *,
    class_names: Sequence[str],
    label_divisor: int,
    thing_ids: Sequence[int] = (),
    class_colors: np.ndarray | None = None,
    void_label: int = -1,
    ground_truth: np.ndarray | None = None,
    min_side: int = READABLE_SIDE,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The titled panels of one prediction and the legend strip for :func:`tile`'s footer.

    ``prediction``: ``panoptic`` ``[H, W]``, ``semantic`` ``[H, W]``, ``center`` ``[H, W]``,
    ``offset`` ``[2, H, W]``, ``centers`` ``[K, 2] (y, x)`` and optionally ``segments_info``
    (its ``label`` / ``score`` label thing segments with their scores); ``ground_truth``: a
    panoptic map ``[H, W]`` in the same encoding, drawn beside the prediction. Pictures whose
    short side is below ``min_side`` are enlarged by a whole factor first.
    """
    factor = enlarge_factor(image.shape, min_side)
    big, pred = enlarge(image, prediction, factor)
    gt = (
        None
        if ground_truth is None
        else np.asarray(ground_truth).repeat(factor, 0).repeat(factor, 1)
    )
    scores = {
        int(s["label"]): float(s["score"])
        for s in prediction.get("segments_info", ())
        if "score" in s
    }
    overlay = dict(
        label_divisor=label_divisor,
        class_names=class_names,
        class_colors=class_colors,
        void_label=void_label,
    )
    panels = {"input": big} if gt is not None else {}
    panels["prediction"] = panoptic_overlay(big, pred["panoptic"], scores=scores, **overlay)
    if gt is not None:
        panels["ground truth"] = panoptic_overlay(big, gt, **overlay)
    panels["semantic"] = semantic_map(pred["semantic"], len(class_names), class_colors)
    panels["centre heatmap (+ detected centres)"] = heatmap(pred["center"], pred["centers"])
    panels["offsets to instance centres"] = offset_field(pred["offset"])
    columns = 3 if gt is not None else 2
    width = columns * big.shape[1]
    also = () if gt is None else np.unique(gt[gt != void_label] // label_divisor).tolist()
    strip = class_legend(
        pred["semantic"], class_names, class_colors, width, thing_ids=thing_ids, also=also
    )
    return panels, strip


def compose(panels: Mapping[str, np.ndarray], strip: np.ndarray) -> np.ndarray:
    """:func:`prediction_panels`' output as one picture: the panels in as many columns as the
    legend strip is wide, the strip below."""
    columns = strip.shape[1] // next(iter(panels.values())).shape[1]
    return tile(panels, columns=columns, footer=strip)
