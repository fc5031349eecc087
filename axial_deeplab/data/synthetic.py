"""Synthetic panoptic scenes: textured stuff regions, occluding thing instances and crowd regions.

Made to be learnable by a small model in minutes on a CPU at 64-128 px: every class has its own
colour (with noise) and texture or shape, thing instances carry a darker rim, and some of them
touch or occlude each other. Every function draws from the ``numpy.random.Generator`` it is given.
:mod:`.synthetic_writer` writes scenes to disk in COCO panoptic and Cityscapes formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# name, isthing, COCO-format category id, Cityscapes label id it stands in for, base RGB colour
SYNTHETIC_CLASSES = (
    ("disc", 1, 1, 24, (220, 50, 50)),  # Cityscapes "person"
    ("square", 1, 2, 26, (240, 200, 40)),  # "car"
    ("triangle", 1, 3, 27, (150, 60, 220)),  # "truck"
    ("sky", 0, 4, 23, (110, 170, 235)),  # "sky"
    ("ground", 0, 5, 7, (70, 140, 60)),  # "road"
    ("wall", 0, 6, 11, (150, 110, 90)),  # "building"
)
THINGS = tuple(i for i, c in enumerate(SYNTHETIC_CLASSES) if c[1])
SKY, GROUND, WALL = 3, 4, 5  # indices into SYNTHETIC_CLASSES
MIN_VISIBLE_AREA = 8  # thing pixels left visible below this become VOID (no slivers)


@dataclass
class Scene:
    """``image`` ``[H, W, 3]`` uint8 RGB; ``segments`` ``[H, W]`` int32, 0 = VOID and ``s >= 1``
    the ``s-1``-th entry of ``classes`` (indices into SYNTHETIC_CLASSES) and ``crowd`` (0/1)."""

    image: np.ndarray
    segments: np.ndarray
    classes: list[int]
    crowd: list[int]


def value_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1], ``[H, W]`` float32: a random ``cells x cells`` grid upsampled."""
    grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def shape_mask(kind: str, size: int, radius: float, angle: float) -> np.ndarray:
    """``[size, size]`` bool mask of a shape centred in the window, rotated by ``angle`` radians.

    ``disc`` of radius ``radius``; ``square`` of half-side ``0.85 radius``; ``triangle``:
    equilateral, circumradius ``radius`` (inside = three half-planes at distance ``radius / 2``).
    """
    d = np.arange(size) - (size - 1) / 2
    dy, dx = d[:, None], d[None, :]  # [size, 1], [1, size]
    u = np.cos(angle) * dx + np.sin(angle) * dy  # [size, size]
    v = -np.sin(angle) * dx + np.cos(angle) * dy  # [size, size]
    if kind == "disc":
        return u**2 + v**2 <= radius**2
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * radius
    if kind == "triangle":
        normals = np.deg2rad([-90.0, 30.0, 150.0])
        inside = [u * np.cos(p) + v * np.sin(p) <= radius / 2 for p in normals]
        return inside[0] & inside[1] & inside[2]
    raise ValueError(f"unknown shape {kind!r}; expected disc, square or triangle")


def _place(mask: np.ndarray, cy: float, cx: float, height: int, width: int) -> np.ndarray:
    """Paste a centred window mask at ``(cy, cx)`` into an ``[H, W]`` canvas (clipped)."""
    out = np.zeros((height, width), dtype=bool)
    size = mask.shape[0]
    y0, x0 = int(round(cy)) - size // 2, int(round(cx)) - size // 2
    ys, xs = slice(max(y0, 0), min(y0 + size, height)), slice(max(x0, 0), min(x0 + size, width))
    if ys.stop <= ys.start or xs.stop <= xs.start:  # entirely outside the canvas
        return out
    out[ys, xs] = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return out


def _stuff_layout(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``[H, W]`` class index map: sky above a wavy horizon, ground below, sometimes a wall block."""
    ys, xs = np.mgrid[:height, :width]
    horizon = rng.uniform(0.35, 0.65) * height
    wave = (
        rng.uniform(0, 0.05)
        * height
        * np.sin(2 * np.pi * xs * rng.uniform(0.5, 2) / width + rng.uniform(0, 2 * np.pi))
    )
    layout = np.where(ys >= horizon + wave, GROUND, SKY)
    if rng.random() < 0.7:
        x0 = rng.uniform(0, 0.6) * width
        x1 = x0 + rng.uniform(0.3, 0.8) * width
        top = rng.uniform(0.1, 0.8) * horizon
        layout[(layout == SKY) & (xs >= x0) & (xs < x1) & (ys >= top)] = WALL
    return layout


def _stuff_texture(rng: np.random.Generator, cls: int, height: int, width: int) -> np.ndarray:
    """``[H, W, 3]`` float32 texture of a stuff class over the whole canvas."""
    base = np.array(SYNTHETIC_CLASSES[cls][4], dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None, None] / height  # [H, 1, 1]
    if cls == SKY:  # vertical gradient, lighter towards the horizon
        tex = base + ys * np.array([60, 40, 15], dtype=np.float32)
        return np.broadcast_to(tex, (height, width, 3)) + rng.normal(0, 3, (height, width, 3))
    if cls == GROUND:  # blotchy grass-like noise
        blotches = value_noise(rng, height, width, max(2, width // 12))[..., None] * 25
        return base + blotches + rng.normal(0, 10, (height, width, 3))
    brick = np.ones((height, width), dtype=np.float32)  # wall: bricks 8 px high, 16 px wide
    rows, cols = np.mgrid[:height, :width]
    brick[rows % 8 == 0] = 0.6
    brick[((cols + 8 * ((rows // 8) % 2)) % 16 == 0)] = 0.6
    return base * brick[..., None] + rng.normal(0, 5, (height, width, 3))


def _thing_pixels(rng: np.random.Generator, cls: int, mask: np.ndarray) -> np.ndarray:
    """``[P, 3]`` colours of one thing instance's pixels: jittered class colour, darker rim."""
    colour = np.array(SYNTHETIC_CLASSES[cls][4], dtype=np.float32) + rng.normal(0, 10, 3)
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    shade = np.where(eroded[mask], 1.0, 0.6).astype(np.float32)[:, None]  # [P, 1]
    return colour * shade + rng.normal(0, 6, (int(mask.sum()), 3))


def _random_thing(
    rng: np.random.Generator, height: int, width: int, placed: list[tuple[float, float, float]]
) -> tuple[int, np.ndarray, tuple[float, float, float]]:
    """A thing class, its ``[H, W]`` mask, and its ``(cy, cx, r)``; sometimes next to ``placed``."""
    cls = int(rng.choice(THINGS))
    radius = max(4.0, rng.uniform(0.07, 0.18) * min(height, width))
    if placed and rng.random() < 0.4:  # touch or occlude an earlier instance
        py, px, pr = placed[int(rng.integers(len(placed)))]
        dist, theta = (pr + radius) * rng.uniform(0.6, 1.05), rng.uniform(0, 2 * np.pi)
        cy, cx = py + dist * np.sin(theta), px + dist * np.cos(theta)
    else:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    size = 2 * int(np.ceil(radius)) + 3
    kind = SYNTHETIC_CLASSES[cls][0]
    mask = _place(shape_mask(kind, size, radius, rng.uniform(0, 2 * np.pi)), cy, cx, height, width)
    return cls, mask, (cy, cx, radius)


def _crowd_mask(rng: np.random.Generator, cls: int, height: int, width: int) -> np.ndarray:
    """A cluster of 4-7 small shapes of one class, as one ``[H, W]`` mask."""
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    spread, mask = 0.12 * min(height, width), np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(4, 8))):
        radius = max(2.5, rng.uniform(0.03, 0.06) * min(height, width))
        size = 2 * int(np.ceil(radius)) + 3
        shape = shape_mask(SYNTHETIC_CLASSES[cls][0], size, radius, rng.uniform(0, 2 * np.pi))
        y, x = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
        mask |= _place(shape, y, x, height, width)
    return mask


def synthetic_scene(
    rng: np.random.Generator,
    height: int = 96,
    width: int = 128,
    *,
    max_things: int = 6,
    crowd_prob: float = 0.3,
    void_prob: float = 0.3,
) -> Scene:
    """One scene: 2-3 stuff regions, 1..``max_things`` thing instances painted in order (later
    ones occlude earlier ones), a crowd region with probability ``crowd_prob`` and a VOID clutter
    rectangle with probability ``void_prob``."""
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16 x 16, got {height} x {width}")
    layout = _stuff_layout(rng, height, width)
    image = np.zeros((height, width, 3), dtype=np.float32)
    segments = np.zeros((height, width), dtype=np.int32)
    classes, crowd = [], []
    for cls in (SKY, GROUND, WALL):
        mask = layout == cls
        image[mask] = _stuff_texture(rng, cls, height, width)[mask]
        segments[mask], classes, crowd = len(classes) + 1, classes + [cls], crowd + [0]
    if rng.random() < crowd_prob:
        cls = int(rng.choice(THINGS))
        mask = _crowd_mask(rng, cls, height, width)
        image[mask] = _thing_pixels(rng, cls, mask)
        segments[mask], classes, crowd = len(classes) + 1, classes + [cls], crowd + [1]
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_things + 1))):
        cls, mask, circle = _random_thing(rng, height, width, placed)
        placed.append(circle)
        image[mask] = _thing_pixels(rng, cls, mask)
        segments[mask], classes, crowd = len(classes) + 1, classes + [cls], crowd + [0]
    if rng.random() < void_prob:
        h, w = (
            int(rng.integers(height // 10, height // 4)),
            int(rng.integers(width // 10, width // 4)),
        )
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        image[y : y + h, x : x + w] = rng.uniform(0, 255, (h, w, 3))
        segments[y : y + h, x : x + w] = 0
    segments, classes, crowd = _compact(segments, classes, crowd)
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), segments, classes, crowd)


def _compact(
    segments: np.ndarray, classes: list[int], crowd: list[int]
) -> tuple[np.ndarray, list[int], list[int]]:
    """Drop segments left (almost) invisible and renumber the rest 1..S in order."""
    area = np.bincount(segments.reshape(-1), minlength=len(classes) + 1)
    is_thing = np.array([0] + [SYNTHETIC_CLASSES[c][1] for c in classes], dtype=bool)
    keep = (area > 0) & ~(is_thing & (area < MIN_VISIBLE_AREA))
    keep[0] = True  # VOID
    new_index = np.cumsum(keep) - 1  # [S + 1] old segment index -> new one
    new_index[~keep] = 0  # dropped segments become VOID
    kept = np.flatnonzero(keep[1:])
    return (
        new_index[segments].astype(np.int32),
        [classes[i] for i in kept],
        [crowd[i] for i in kept],
    )
