"""Make Cityscapes panoptic ground truth from ``gtFine`` instance maps (cityscapesscripts).

Usage (root as for training: ``$DETECTRON2_DATASETS`` or ``./datasets``)::

    pip install cityscapesscripts
    python datasets/prepare_cityscapes_panoptic.py [--root DIR] [--use-train-id] [--splits val train]

Writes ``cityscapes/gtFine/cityscapes_panoptic_{split}.json`` and the PNG folder
``cityscapes/gtFine/cityscapes_panoptic_{split}/`` (``..._trainId`` with ``--use-train-id``),
by calling cityscapesscripts' own ``createPanopticImgs.convert2panoptic``. No semantic
``labelTrainIds`` maps are needed: training targets come from the panoptic PNGs.
"""

from __future__ import annotations

import argparse
import os

from axial_deeplab.data.catalog import dataset_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", default=None, help="data set root (default: $DETECTRON2_DATASETS)"
    )
    parser.add_argument("--use-train-id", action="store_true", help="category ids = train ids")
    parser.add_argument("--splits", nargs="+", default=["val", "train"])
    args = parser.parse_args(argv)
    try:
        from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
    except ImportError:
        raise SystemExit("cityscapesscripts is needed: pip install cityscapesscripts") from None
    gt_fine = os.path.join(dataset_root(args.root), "cityscapes", "gtFine")
    if not os.path.isdir(gt_fine):
        raise SystemExit(f"not found: {gt_fine} (unpack gtFine_trainvaltest.zip under cityscapes/)")
    missing = [s for s in args.splits if not os.path.isdir(os.path.join(gt_fine, s))]
    if missing:  # checked before converting any (cityscapesscripts exits at the missing one)
        raise SystemExit(
            f"error: no {', '.join(missing)} folder in {gt_fine}: pass --splits with the splits "
            f"you have ({', '.join(sorted(d for d in os.listdir(gt_fine) if not d.startswith('.') and os.path.isdir(os.path.join(gt_fine, d)))) or 'none'})"
        )
    convert2panoptic(
        cityscapesPath=gt_fine, outputFolder=gt_fine, useTrainId=args.use_train_id,
        setNames=args.splits,
    )  # fmt: skip


if __name__ == "__main__":
    main()
