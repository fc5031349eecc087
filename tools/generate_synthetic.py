"""Write synthetic panoptic scenes in COCO panoptic and Cityscapes formats.

Example::

    python tools/generate_synthetic.py --out datasets/synthetic --train 64 --val 16 \
        --height 96 --width 128 --seed 0
"""

from __future__ import annotations

import argparse

from axial_deeplab.data.synthetic_writer import FORMATS, MIN_SCENE_SIZE, write_synthetic_dataset
from axial_deeplab.utils.cli import add_debug_flag, check_output_folder, int_at_least, run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (coco/ and cityscapes/ inside)")
    count, size = int_at_least(0), int_at_least(MIN_SCENE_SIZE)
    parser.add_argument("--train", type=count, default=64, help="number of training images")
    parser.add_argument("--val", type=count, default=16, help="number of validation images")
    parser.add_argument("--height", type=size, default=96, help="image height in pixels")
    parser.add_argument("--width", type=size, default=128, help="image width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument(
        "--max-things", type=int_at_least(1), default=6, help="thing instances per image, max"
    )
    add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, argv)


def _main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_output_folder(args.out, "--out")
    paths = write_synthetic_dataset(
        args.out,
        splits={"train": args.train, "val": args.val},
        height=args.height,
        width=args.width,
        seed=args.seed,
        formats=tuple(args.formats),
        max_things=args.max_things,
    )
    for fmt, splits in paths.items():
        for split, files in splits.items():
            print(f"{fmt} {split}: " + ", ".join(f"{k}={v}" for k, v in files.items()))


if __name__ == "__main__":
    main()
