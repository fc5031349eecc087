"""Bench: training samples/s of the data pipeline on Cityscapes-sized synthetic data.

Usage::

    python bench/data_throughput.py --images 8 --samples 24 --workers 1 2

Writes ``--images`` synthetic 1024 x 2048 scenes in Cityscapes format to a temporary folder, then
times the training pipeline (PNG + image decode, per-sample validation, random scale 0.5-2.0 step
0.25, 512 x 1024 crop with padding, flip, and Panoptic-DeepLab targets when
``axial_deeplab.modeling.targets`` is importable) through the DataLoader with batch size 1.
Prints samples/s for each worker count, after one warm-up batch per worker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice

from axial_deeplab.data.catalog import builtin_catalog
from axial_deeplab.data.dataset import PanopticDataset
from axial_deeplab.data.loader import build_train_loader
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
from axial_deeplab.data.transforms import TrainAugmentation


def target_generator(thing_ids):
    try:
        from axial_deeplab.modeling.targets import PanopticTargetGenerator
    except ImportError:
        return None
    return PanopticTargetGenerator(thing_ids=thing_ids)


def samples_per_second(dataset, workers: int, samples: int) -> float:
    loader = build_train_loader(dataset, batch_size=1, seed=0, num_workers=workers)
    batches = iter(loader)
    for _ in islice(batches, max(workers, 1)):  # warm-up: start the workers
        pass
    start = time.perf_counter()
    for _ in islice(batches, samples):
        pass
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="synthetic images written")
    parser.add_argument("--samples", type=int, default=24, help="samples timed per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-targets", action="store_true", help="time without target generation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        write_synthetic_dataset(out, splits={"train": args.images}, height=1024, width=2048,
                                formats=("cityscapes",), max_things=20)  # fmt: skip
        print(f"wrote {args.images} 1024x2048 scenes in {time.perf_counter() - start:.1f} s")
        records, meta = builtin_catalog(out).get("cityscapes_fine_panoptic_train")
        targets = None if args.no_targets else target_generator(meta.thing_train_ids)
        aug = TrainAugmentation(crop_size=(512, 1024), min_scale=0.5, max_scale=2.0)
        dataset = PanopticDataset(records, metadata=meta, transform=aug, target_generator=targets)
        print(f"targets: {'PanopticTargetGenerator' if targets else 'none'}")
        for workers in args.workers:
            rate = samples_per_second(dataset, workers, args.samples)
            print(
                f"workers={workers}: {rate:.2f} samples/s ({rate / max(workers, 1):.2f} per worker)"
            )


if __name__ == "__main__":
    main()
