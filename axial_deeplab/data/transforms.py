"""Augmentation of an image and its panoptic label together (numpy, explicit random generator).

Images are ``[H, W, 3]`` uint8 RGB, labels ``[H, W]`` integer segment ids (0 = VOID). Images are
resized bilinearly, labels with nearest neighbour (pixel centres: output pixel ``i`` takes input
pixel ``floor((i + 0.5) * in / out)``), so no new segment id ever appears. Padded label pixels are
VOID (0) and padded image pixels the pixel mean, so that padding is ignored by the losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

VOID = 0  # segment id of unlabelled pixels in a panoptic PNG


def scale_choices(min_scale: float, max_scale: float, step: float) -> np.ndarray:
    """The scale factors ``min, min + step, ..., max`` (``step`` 0: only ``min`` and ``max`` bounds)."""
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"scale range must satisfy 0 < min <= max, got [{min_scale}, {max_scale}]")
    if step < 0:
        raise ValueError(f"scale step must be >= 0, got {step}")
    if step == 0:
        return np.array([min_scale, max_scale])
    count = int(round((max_scale - min_scale) / step)) + 1
    return min_scale + step * np.arange(count)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size]`` source indices of a pixel-centre nearest-neighbour resize."""
    idx = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size)).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H, W]`` label to ``size = (h, w)``."""
    rows = nearest_indices(label.shape[0], size[0])  # [h]
    cols = nearest_indices(label.shape[1], size[1])  # [w]
    return label[rows[:, None], cols[None, :]]  # [h, w]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``[H, W, 3]`` uint8 image to ``size = (h, w)``."""
    if image.shape[:2] == tuple(size):
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resize_pair(
    image: np.ndarray, label: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (bilinear) and label (nearest) to ``size = (h, w)``."""
    if label.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
    if label.shape == tuple(size):
        return image, label
    return resize_image(image, size), resize_label(label, size)


def pad_pair(
    image: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int],
    *,
    fill: Sequence[float],
    offset: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Pad image (with ``fill``, per channel) and label (with VOID) to at least ``size = (h, w)``.

    ``offset = (top, left)`` places the original inside the padded canvas.
    """
    height, width = label.shape
    out_h, out_w = max(size[0], height), max(size[1], width)
    if (out_h, out_w) == (height, width):
        return image, label
    top, left = offset
    if not (0 <= top <= out_h - height and 0 <= left <= out_w - width):
        raise ValueError(
            f"pad offset {offset} outside [0, {out_h - height}] x [0, {out_w - width}]"
        )
    fill = np.clip(np.rint(np.asarray(fill, dtype=np.float64)), 0, 255).astype(image.dtype)
    new_image = np.empty((out_h, out_w, image.shape[2]), dtype=image.dtype)
    new_image[...] = fill  # [3] broadcast over [h, w, 3]
    new_image[top : top + height, left : left + width] = image
    new_label = np.full((out_h, out_w), VOID, dtype=label.dtype)
    new_label[top : top + height, left : left + width] = label
    return new_image, new_label


def resize_shortest_edge_size(
    height: int, width: int, short_edge: int, max_size: int = 0
) -> tuple[int, int]:
    """``(h, w)`` with the short side ``short_edge`` and the long side at most ``max_size`` (if > 0)."""
    scale = short_edge / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(round(height * scale)), int(round(width * scale))


@dataclass(frozen=True)
class TrainAugmentation:
    """Random scale, then pad + random crop to ``crop_size``, then random horizontal flip.

    ``crop_size``: ``(h, w)``, or ``None`` for no crop. ``scales``: factors drawn uniformly from
    :func:`scale_choices` (``scale_step`` 0: a continuous uniform draw in the range).
    ``random_pad``: place the image at a random position inside the padding (else top-left).
    """

    crop_size: tuple[int, int] | None = (512, 1024)
    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    flip_prob: float = 0.5
    random_pad: bool = False
    pad_value: tuple[float, float, float] = (123.675, 116.28, 103.53)

    def __post_init__(self) -> None:
        scale_choices(self.min_scale, self.max_scale, self.scale_step)  # validates the range
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def sample_scale(self, rng: np.random.Generator) -> float:
        if self.scale_step == 0:
            return float(rng.uniform(self.min_scale, self.max_scale))
        return float(rng.choice(scale_choices(self.min_scale, self.max_scale, self.scale_step)))

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment ``image [H, W, 3]`` and ``label [H, W]``; draws from ``rng`` only."""
        scale = self.sample_scale(rng)
        height, width = label.shape
        size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        if (
            self.crop_size is not None
            and size[0] >= self.crop_size[0]
            and size[1] >= self.crop_size[1]
        ):
            image, label = self._resize_and_crop(image, label, size, rng)
        else:
            image, label = resize_pair(image, label, size)
            if self.crop_size is not None:
                image, label = self._crop(image, label, rng)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def _resize_and_crop(
        self,
        image: np.ndarray,
        label: np.ndarray,
        size: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`resize_pair` to ``size`` (at least the crop: no padding) then :meth:`_crop`,
        with the same draws and result, the label resized only inside the crop window."""
        if label.shape != image.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
        crop_h, crop_w = self.crop_size
        top = int(rng.integers(0, size[0] - crop_h + 1))
        left = int(rng.integers(0, size[1] - crop_w + 1))
        rows = nearest_indices(label.shape[0], size[0])[top : top + crop_h]  # [crop_h]
        cols = nearest_indices(label.shape[1], size[1])[left : left + crop_w]  # [crop_w]
        image = resize_image(image, size)[top : top + crop_h, left : left + crop_w]
        return image, label[rows[:, None], cols[None, :]]

    def _crop(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        crop_h, crop_w = self.crop_size
        height, width = label.shape
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:
            offset = (0, 0)
            if self.random_pad:
                offset = (int(rng.integers(0, pad_h + 1)), int(rng.integers(0, pad_w + 1)))
            image, label = pad_pair(
                image, label, (crop_h, crop_w), fill=self.pad_value, offset=offset
            )
        top = int(rng.integers(0, label.shape[0] - crop_h + 1))
        left = int(rng.integers(0, label.shape[1] - crop_w + 1))
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        return image[window], label[window]


@dataclass(frozen=True)
class EvalResize:
    """Deterministic resize for evaluation: short side to ``short_edge`` (long side capped by
    ``max_size``), then optional padding to ``pad_to`` ``(h, w)`` (image: pad value, label: VOID).

    ``short_edge`` 0 keeps the size. The ``rng`` argument is accepted and unused.
    """

    short_edge: int = 0
    max_size: int = 0
    pad_to: tuple[int, int] | None = None
    pad_value: tuple[float, float, float] = (123.675, 116.28, 103.53)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.short_edge > 0:
            size = resize_shortest_edge_size(*label.shape, self.short_edge, self.max_size)
            image, label = resize_pair(image, label, size)
        if self.pad_to is not None:
            image, label = pad_pair(image, label, self.pad_to, fill=self.pad_value)
        return image, label
