"""Bench: vectorised Panoptic-DeepLab targets vs a per-instance loop and detectron2's generator.

Usage (detectron2's file is imported by path, never copied into this repository)::

    python bench/targets.py --d2-target-generator \
        /tmp/d2/projects/Panoptic-DeepLab/panoptic_deeplab/target_generator.py

The label is synthetic: 1024 x 2048, stuff bands, ~30 thing instances (some small, some occluded),
void blobs, no crowd (detectron2 draws centres for crowd regions, deeplab2 and we do not).
Prints the median time of each implementation, the ratios, and whether the outputs agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from axial_deeplab.modeling.targets import panoptic_targets

THING_IDS = tuple(range(11, 19))
STUFF_BANDS = (10, 2, 8, 0)  # sky, building, vegetation, road from top to bottom


def synthetic_label(
    rng: np.random.Generator, height: int = 1024, width: int = 2048, num_instances: int = 30
) -> tuple[np.ndarray, list[dict]]:
    """A Cityscapes-like panoptic id map and its segments_info (train-id categories)."""
    panoptic = np.zeros((height, width), dtype=np.int64)
    segments = []
    bounds = np.linspace(0, height, len(STUFF_BANDS) + 1).astype(int)
    for i, cat in enumerate(STUFF_BANDS):
        panoptic[bounds[i] : bounds[i + 1]] = 1000 + cat
        segments.append({"id": 1000 + cat, "category_id": cat, "iscrowd": 0})
    yy, xx = np.ogrid[:height, :width]
    for k in range(num_instances):
        cat = int(rng.choice(THING_IDS))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(10, 160), rng.uniform(10, 200)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        seg_id = cat * 1000 + k + 1
        panoptic[mask] = seg_id
        segments.append({"id": seg_id, "category_id": cat, "iscrowd": 0})
    for _ in range(5):  # void blobs
        y0, x0 = rng.integers(0, height - 40), rng.integers(0, width - 40)
        panoptic[y0 : y0 + 40, x0 : x0 + 40] = 0
    return panoptic, segments


def per_instance_targets(panoptic, segments, *, sigma=8, small_area=4096, small_weight=3):
    """The straightforward loop: one full-image mask per segment."""
    height, width = panoptic.shape
    semantic = np.full((height, width), 255, dtype=np.int64)
    sem_w = np.zeros((height, width), dtype=np.float32)
    center = np.zeros((height, width), dtype=np.float32)
    offset = np.zeros((2, height, width), dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    radius = int(round(3 * sigma + 1))
    for seg in segments:
        mask = panoptic == seg["id"]
        semantic[mask] = seg["category_id"]
        sem_w[mask] = 1.0
        if seg["category_id"] not in THING_IDS or not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        if len(ys) < small_area:
            sem_w[mask] = small_weight
        my, mx = ys.mean(), xs.mean()
        offset[0][mask] = my - ys
        offset[1][mask] = mx - xs
        y, x = int(np.rint(my)), int(np.rint(mx))
        y0, y1 = max(0, y - radius), min(height, y + radius + 1)
        x0, x1 = max(0, x - radius), min(width, x + radius + 1)
        d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
        g = np.exp(-d2 / (2.0 * sigma**2))
        center[y0:y1, x0:x1] = np.maximum(center[y0:y1, x0:x1], g)
    return {"sem_seg": semantic, "sem_seg_weights": sem_w, "center": center[None], "offset": offset}


def ours(panoptic, segments):
    return panoptic_targets(
        panoptic,
        [s["id"] for s in segments],
        [s["category_id"] for s in segments],
        [s["iscrowd"] for s in segments],
        thing_ids=THING_IDS,
        sigma=8,
    )


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d2-target-generator", default="", help="path of detectron2's file")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    panoptic, segments = synthetic_label(np.random.default_rng(0))
    ref = ours(panoptic, segments)
    naive = per_instance_targets(panoptic, segments)
    rows = [("ours (vectorised)", median_time(lambda: ours(panoptic, segments), args.repeats))]
    rows.append(
        ("per-instance loop", median_time(lambda: per_instance_targets(panoptic, segments), 3))
    )
    agree = {k: bool(np.array_equal(ref[k], naive[k])) for k in naive}
    print(f"label {panoptic.shape}, {len(segments) - len(STUFF_BANDS)} instances")
    if args.d2_target_generator:
        spec = importlib.util.spec_from_file_location("d2_targets", args.d2_target_generator)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        gen = module.PanopticDeepLabTargetGenerator(
            ignore_label=255,
            thing_ids=THING_IDS,
            sigma=8,
            ignore_stuff_in_offset=True,
            small_instance_area=4096,
            small_instance_weight=3,
        )
        d2 = gen(panoptic, segments)
        rows.append(("detectron2", median_time(lambda: gen(panoptic, segments), 3)))
        valid = ref["sem_seg"] != 255  # detectron2 keeps weight 1 on ignored pixels
        agree["d2 sem_seg"] = bool(np.array_equal(d2["sem_seg"].numpy(), ref["sem_seg"]))
        agree["d2 sem_seg_weights"] = bool(
            np.array_equal(d2["sem_seg_weights"].numpy()[valid], ref["sem_seg_weights"][valid])
        )
        agree["d2 center"] = bool(np.array_equal(d2["center"].numpy(), ref["center"][0]))
        agree["d2 offset"] = bool(np.array_equal(d2["offset"].numpy(), ref["offset"]))
        for key in ("center_weights", "offset_weights"):
            agree[f"d2 {key}"] = bool(np.array_equal(d2[key].numpy(), ref[key]))
    base = rows[0][1]
    for name, t in rows:
        print(f"{name:20s} {t * 1000:9.1f} ms   ours/this = {base / t:.3f}")
    print("outputs equal:", agree)


if __name__ == "__main__":
    main()
