"""Seeded synthetic panoptic ground truth and perturbed predictions, for tests and benchmarks.

A scene is stuff bands plus elliptic thing instances, a VOID rectangle and, sometimes, a crowd
region; a prediction is the scene shifted, with segments relabelled, dropped, split, merged, and
false blobs added. Every function takes a ``numpy.random.Generator``: no global RNG.
"""

from __future__ import annotations

import numpy as np

from axial_deeplab.data.validation import MAX_SEGMENT_ID


def synthetic_categories(num_things: int = 8, num_stuff: int = 5) -> list[dict]:
    """COCO-style categories: ids ``1..num_things`` are things, the next ``num_stuff`` stuff."""
    return [
        {"id": i + 1, "name": f"{'thing' if i < num_things else 'stuff'}_{i + 1}",
         "isthing": int(i < num_things)}
        for i in range(num_things + num_stuff)
    ]  # fmt: skip


def _ellipse(h: int, w: int, rng: np.random.Generator, max_radius: float) -> np.ndarray:
    """Boolean ``[H, W]`` mask of a random axis-aligned ellipse."""
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(4, max_radius, size=2)
    ys = (np.arange(h)[:, None] - cy) / ry
    xs = (np.arange(w)[None, :] - cx) / rx
    return ys**2 + xs**2 <= 1.0


def _relabel(index_map: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Give the segments of a dense ``[H, W]`` index map (0 = VOID) random unique ids < 2^24."""
    n = int(index_map.max())
    ids = np.zeros(n + 1, dtype=np.int64)
    ids[1:] = rng.choice(MAX_SEGMENT_ID, size=n, replace=False) + 1
    return ids[index_map], ids


def synthetic_ground_truth(
    rng: np.random.Generator, categories: list[dict], height: int, width: int
) -> tuple[np.ndarray, list[dict]]:
    """A ``[H, W]`` int64 id map and its ``segments_info`` (every listed id present in the map)."""
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    index = np.zeros((height, width), dtype=np.int64)  # dense segment index, 0 = VOID
    cats, crowd = [0], [0]
    edges = np.sort(rng.choice(np.arange(1, height), size=rng.integers(1, 4), replace=False))
    for y0, y1 in zip(np.r_[0, edges], np.r_[edges, height]):
        index[y0:y1] = len(cats)
        cats.append(int(rng.choice(stuff)))
        crowd.append(0)
    for k in range(int(rng.integers(2, 12))):
        index[_ellipse(height, width, rng, max(height, width) / 5)] = len(cats)
        cats.append(int(rng.choice(things)))
        crowd.append(int(k == 0 and rng.random() < 0.3))
    y, x = rng.integers(0, max(height - 8, 1)), rng.integers(0, max(width - 8, 1))
    index[y : y + int(rng.integers(2, 40)), x : x + int(rng.integers(2, 60))] = 0
    ids_map, ids = _relabel(index, rng)
    areas = np.bincount(index.ravel(), minlength=len(cats))
    segments = [
        {"id": int(ids[i]), "category_id": cats[i], "iscrowd": crowd[i], "area": int(areas[i])}
        for i in range(1, len(cats))
        if areas[i] > 0
    ]
    return ids_map, segments


def synthetic_prediction(
    rng: np.random.Generator,
    categories: list[dict],
    gt_ids: np.ndarray,
    gt_segments: list[dict],
) -> tuple[np.ndarray, list[dict]]:
    """Perturb a ground truth into a prediction: ``[H, W]`` int64 id map and ``segments_info``."""
    height, width = gt_ids.shape
    same_kind = {
        flag: [c["id"] for c in categories if c["isthing"] == flag] for flag in (0, 1)
    }  # fmt: skip
    isthing = {c["id"]: c["isthing"] for c in categories}
    lut = {0: 0}
    cats = [0]
    for seg in gt_segments:
        r = rng.random()
        if r < 0.1:  # dropped: becomes VOID
            lut[seg["id"]] = 0
            continue
        if r < 0.2 and len(cats) > 1:  # merged into the previous predicted segment
            lut[seg["id"]] = len(cats) - 1
            continue
        cat = seg["category_id"]
        if r < 0.3:  # relabelled with a class of the same kind
            cat = int(rng.choice(same_kind[isthing[cat]]))
        lut[seg["id"]] = len(cats)
        cats.append(cat)
    keys = np.array(sorted(lut))
    values = np.array([lut[k] for k in keys])
    index = values[np.searchsorted(keys, gt_ids)]
    dy, dx = rng.integers(-6, 7, size=2)
    index = np.roll(index, (int(dy), int(dx)), axis=(0, 1))
    for _ in range(int(rng.integers(0, 3))):  # split: right part of a segment gets its own id
        k = int(rng.integers(1, len(cats)))
        cols = np.nonzero((index == k).any(axis=0))[0]
        if cols.size > 1:
            right = (index == k) & (np.arange(width)[None, :] >= cols[cols.size // 2])
            index[right] = len(cats)
            cats.append(cats[k])
    for _ in range(int(rng.integers(0, 4))):  # false positive blobs
        index[_ellipse(height, width, rng, max(height, width) / 8)] = len(cats)
        cats.append(int(rng.choice([c["id"] for c in categories])))
    areas = np.bincount(index.ravel(), minlength=len(cats))
    ids_map, ids = _relabel(index, rng)
    segments = [
        {"id": int(ids[i]), "category_id": cats[i], "iscrowd": 0}
        for i in range(1, len(cats))
        if areas[i] > 0
    ]
    return ids_map, segments
