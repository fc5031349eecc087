"""Write synthetic panoptic scenes in COCO panoptic and Cityscapes formats.

Example::

    python tools/generate_synthetic.py --out datasets/synthetic --train 64 --val 16 \
        --height 96 --width 128 --seed 0
"""

from __future__ import annotations

import argparse

from axial_deeplab.data.synthetic_writer import FORMATS, write_synthetic_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (coco/ and cityscapes/ inside)")
    parser.add_argument("--train", type=int, default=64, help="number of training images")
    parser.add_argument("--val", type=int, default=16, help="number of validation images")
    parser.add_argument("--height", type=int, default=96, help="image height in pixels")
    parser.add_argument("--width", type=int, default=128, help="image width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--max-things", type=int, default=6, help="thing instances per image, max")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
