"""The quick start: synthetic data -> train a small Axial-DeepLab on the CPU -> PQ -> pictures.

``python -m axial_deeplab.quickstart`` (what ``make quickstart`` runs) does everything on a fresh
machine: it writes synthetic panoptic scenes (COCO panoptic format) under ``OUTPUT_DIR/data``,
trains ``configs/quickstart/synthetic_axial.yaml``, evaluates PQ on held-out scenes, and draws
predictions on held-out scenes and on the real samples in ``../shared/data`` when present.
Re-running resumes an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import load_config
from .data.catalog import builtin_catalog
from .data.synthetic_writer import register_synthetic, write_synthetic_dataset
from .engine.build import build_trainer, save_config
from .engine.distributed import init_from_env, is_main_process
from .engine.preemption import TrainingInterrupted
from .utils.atomic import write_json
from .utils.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "quickstart" / "synthetic_axial.yaml"
SAMPLES = REPO.parent / "shared" / "data" / "coco_panoptic_sample" / "images"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="quick-start config")
    parser.add_argument("--train-images", type=int, default=96, help="synthetic training scenes")
    parser.add_argument("--val-images", type=int, default=24, help="held-out synthetic scenes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides")
    return parser.parse_args(argv)


def prepare_data(out_dir: str, *, train: int, val: int, seed: int, size: tuple[int, int]) -> None:
    """Write the synthetic scenes once (a ``done`` marker makes re-runs skip this)."""
    marker = os.path.join(out_dir, "done.json")
    wanted = {"train": train, "val": val, "seed": seed, "size": list(size)}
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == wanted:
                return
    write_synthetic_dataset(
        out_dir, splits={"train": train, "val": val}, height=size[0], width=size[1], seed=seed,
        formats=("coco",),
    )  # fmt: skip
    write_json(marker, wanted)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """The command line; errors are one line (``--debug``: with the traceback); Ctrl-C or
    SIGTERM saves a checkpoint, and re-running resumes from it."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> dict[str, float]:
    try:
        return _quickstart(argv)
    except TrainingInterrupted as exc:
        print(f"{exc}\nre-run the same command to resume", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None


def _quickstart(argv: list[str]) -> dict[str, float]:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    start = time.perf_counter()
    data_dir = os.path.join(cfg.OUTPUT_DIR, "data")
    size = tuple(cfg.INPUT.CROP.SIZE)
    prepare_data(data_dir, train=args.train_images, val=args.val_images, seed=args.seed, size=size)
    catalog = builtin_catalog(cfg.DATASETS.ROOT or None)
    register_synthetic(catalog, data_dir, splits=("train", "val"))
    device = init_from_env(cfg.MODEL.DEVICE)
    save_config(cfg)
    trainer = build_trainer(cfg, device, catalog)
    if trainer.resume():
        print(f"resumed from iteration {trainer.iteration} in {cfg.OUTPUT_DIR}")
    metrics = trainer.train()
    if not metrics and trainer.evaluate is not None:  # resumed a finished run: evaluate it again
        metrics = trainer.evaluate(trainer.model)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nheld-out synthetic scenes ({args.val_images}): " + ", ".join(
        f"{k} {v:.1f}" for k, v in metrics.items()))  # fmt: skip
    if is_main_process():
        folder = draw_predictions(trainer.unwrapped, catalog, cfg, device)
        print(f"pictures of predictions in {folder}")
    print(f"total time {minutes:.1f} min; outputs in {cfg.OUTPUT_DIR}")
    return metrics


def _enlarge(image, prediction: dict, min_side: int) -> tuple:
    """Nearest-neighbour upscaling of small images and their maps, so pictures stay legible."""
    k = max(1, -(-min_side // min(image.shape[:2])))
    if k == 1:
        return image, prediction
    up = {
        key: prediction[key].repeat(k, -2).repeat(k, -1)
        for key in ("panoptic", "semantic", "center", "offset")
    }
    up["offset"] = up["offset"] * k
    up["centers"] = prediction["centers"] * k + k // 2
    return image.repeat(k, 0).repeat(k, 1), up


def draw_predictions(model, catalog, cfg, device, count: int = 6) -> str:
    """Picture tiles (overlay, semantic map, centers, offsets) of held-out synthetic scenes and of
    the real COCO samples (a model trained on synthetic shapes: expect shapes, not COCO classes)."""
    from .engine.evaluate import PostProcessing
    from .engine.infer_net import render, write_image_outputs
    from .engine.inference import Predictor
    from .engine.inputs import read_image

    records, metadata = catalog.get(cfg.DATASETS.TEST[0])
    predictor = Predictor(
        model, metadata=metadata, postprocessing=PostProcessing.from_config(cfg), device=device
    )
    folder = os.path.join(cfg.OUTPUT_DIR, "pictures")
    os.makedirs(folder, exist_ok=True)
    paths = [r["file_name"] for r in records[:count]]
    paths += sorted(str(p) for p in SAMPLES.glob("*.jpg")) if SAMPLES.is_dir() else []
    for path in paths:
        image = read_image(path)
        prediction = predictor.predict(image)
        info = {"file_name": path}
        big_image, big_prediction = _enlarge(image, prediction, min_side=320)
        pictures = render(big_image, big_prediction, predictor.metadata)
        write_image_outputs(folder, Path(path).stem, image, prediction, info, pictures)
    return folder


if __name__ == "__main__":
    main()
