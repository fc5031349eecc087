"""Bench: our training sample pipeline against detectron2's Panoptic-DeepLab dataset mapper.

Usage (detectron2's project folder is imported by path from a snapshot outside this repository;
detectron2 itself must be installed)::

    python bench/data_pipeline.py --d2-project /tmp/d2/projects/Panoptic-DeepLab \
        [--images 6] [--samples 24]

Writes ``--images`` synthetic 1024 x 2048 crowd-free scenes in Cityscapes format, then, in this
process with one thread (what one DataLoader worker does), makes ``--samples`` training samples
with each pipeline, alternating sample by sample so that load changes hit both alike:

- ours: :class:`~axial_deeplab.data.dataset.PanopticDataset` (JPEG/PNG image and panoptic PNG
  reading, checks, random scale 0.5-2.0 step 0.25, 512 x 1024 crop, flip, targets);
- detectron2: ``PanopticDeeplabDatasetMapper`` with its Cityscapes recipe's augmentations
  (``ResizeShortestEdge`` to a short side drawn from 512..2048 as in its config, ``RandomCrop``
  512 x 1024, ``RandomFlip``) and ``PanopticDeepLabTargetGenerator`` (sigma 8, small instances
  below 4096 px weighted 3, stuff ignored in the offset loss), on the same records.

Prints samples/s of each and the ratios, from wall-clock and from CPU time (one thread: the CPU
time is the work, less sensitive to other jobs on a shared machine), then checks that both pipelines give the same image and
targets for every image without augmentation (detectron2 keeps weight 1 on ignored pixels, so
semantic weights are compared where the label is not ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types

import cv2
import numpy as np
import torch

from axial_deeplab.data.catalog import builtin_catalog
from axial_deeplab.data.dataset import PanopticDataset
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
from axial_deeplab.data.transforms import TrainAugmentation
from axial_deeplab.modeling.targets import PanopticTargetGenerator

D2_SHORT_EDGES = (512, 640, 704, 832, 896, 1024, 1152, 1216, 1344, 1408, 1536, 1664, 1728, 1856,
                  1920, 2048)  # fmt: skip  # its Cityscapes config's MIN_SIZE_TRAIN
TARGET_KEYS = ("sem_seg", "center", "center_weights", "offset", "offset_weights")


def _import_d2_project(folder: str):
    """detectron2's ``panoptic_deeplab`` package from its project folder. Its mapper imports
    ``rgb2id`` from panopticapi (not on PyPI): an equivalent is provided if it is missing."""
    try:
        import panopticapi.utils  # noqa: F401
    except ImportError:
        utils = types.ModuleType("panopticapi.utils")
        utils.rgb2id = lambda rgb: rgb.astype(np.int64) @ np.array([1, 256, 65536])  # [H, W]
        sys.modules["panopticapi"] = types.ModuleType("panopticapi")
        sys.modules["panopticapi.utils"] = utils
    sys.path.insert(0, folder)
    from panoptic_deeplab.dataset_mapper import PanopticDeeplabDatasetMapper
    from panoptic_deeplab.target_generator import PanopticDeepLabTargetGenerator

    return PanopticDeeplabDatasetMapper, PanopticDeepLabTargetGenerator


def _d2_mapper(folder: str, thing_ids, augment: bool):
    from detectron2.data import transforms as T

    mapper_class, generator_class = _import_d2_project(folder)
    augmentations = []
    if augment:
        augmentations = [
            T.ResizeShortestEdge(D2_SHORT_EDGES, 4096, "choice"),
            T.RandomCrop("absolute", (512, 1024)),
            T.RandomFlip(),
        ]
    generator = generator_class(
        ignore_label=255, thing_ids=list(thing_ids), sigma=8, ignore_stuff_in_offset=True,
        small_instance_area=4096, small_instance_weight=3,
    )  # fmt: skip
    return mapper_class(
        augmentations=augmentations, image_format="RGB",
        panoptic_target_generator=generator,
    )  # fmt: skip


def _compare(ours: dict, theirs: dict) -> dict[str, bool]:
    """Equality of the image and each target (semantic weights where the label is not void)."""
    same = {"image": torch.equal(ours["image"], theirs["image"])}
    for key in TARGET_KEYS:
        a, b = np.asarray(ours[key]), np.asarray(theirs[key])
        same[key] = a.shape == b.reshape(a.shape).shape and np.array_equal(a, b.reshape(a.shape))
    valid = np.asarray(ours["sem_seg"]) != 255
    same["sem_seg_weights (not void)"] = np.array_equal(
        np.asarray(ours["sem_seg_weights"])[valid], np.asarray(theirs["sem_seg_weights"])[valid]
    )
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d2-project", required=True, help="detectron2/projects/Panoptic-DeepLab")
    parser.add_argument("--images", type=int, default=6, help="synthetic scenes written")
    parser.add_argument("--samples", type=int, default=24, help="samples timed per pipeline")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as out:
        write_synthetic_dataset(out, splits={"train": args.images}, height=1024, width=2048,
                                formats=("cityscapes",), max_things=20, crowd_prob=0.0)  # fmt: skip
        records, meta = builtin_catalog(out).get("cityscapes_fine_panoptic_train")
        thing_ids = meta.thing_train_ids
        generator = PanopticTargetGenerator(thing_ids=thing_ids)
        aug = TrainAugmentation(crop_size=(512, 1024), min_scale=0.5, max_scale=2.0)
        ours = PanopticDataset(records, metadata=meta, transform=aug, target_generator=generator)
        d2 = _d2_mapper(args.d2_project, thing_ids, augment=True)
        times: dict[str, list[float]] = {"ours": [], "detectron2": []}
        cpu: dict[str, list[float]] = {"ours": [], "detectron2": []}
        for i in range(args.samples + 1):  # the first of each: warm-up, not timed
            index = i % len(records)
            for name in ("ours", "detectron2") if i % 2 else ("detectron2", "ours"):
                start, start_cpu = time.perf_counter(), time.process_time()
                ours[(i, index)] if name == "ours" else d2(records[index])
                if i:
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        print(f"{args.samples} samples of 1024x2048 -> 512x1024 each, 1 thread, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        for name, t in times.items():
            print(f"{name:12s} {1 / statistics.median(t):6.2f} samples/s wall (median "
                  f"{1000 * statistics.median(t):.0f} ms, min {1000 * min(t):.0f}, max "
                  f"{1000 * max(t):.0f}), {1 / statistics.median(cpu[name]):6.2f} samples/s of "
                  f"CPU time")  # fmt: skip
        for kind, table in (("wall", times), ("CPU", cpu)):
            ratio = statistics.median(table["detectron2"]) / statistics.median(table["ours"])
            print(f"ours / detectron2 samples per second ({kind} time): {ratio:.2f}x")
        plain = PanopticDataset(records, metadata=meta, target_generator=generator)
        d2_plain = _d2_mapper(args.d2_project, thing_ids, augment=False)
        same = [_compare(plain[i], d2_plain(records[i])) for i in range(len(records))]
        merged = {key: all(s[key] for s in same) for key in same[0]}
        print(f"same image and targets without augmentation on {len(records)} images: {merged}")


if __name__ == "__main__":
    main()
