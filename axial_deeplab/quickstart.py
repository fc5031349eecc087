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
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .config import load_config
from .data.build import build_catalog
from .data.panoptic_io import read_panoptic_png
from .data.synthetic_writer import write_synthetic_dataset
from .engine.build import build_trainer, resolve_config_seed, save_config
from .engine.distributed import init_from_env, is_main_process
from .engine.preemption import TrainingInterrupted
from .utils.atomic import write_json
from .utils.cli import check_output_folder, run_cli
from .utils.log_file import log_to_file

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


def prepare_data(out_dir: str, *, train: int, val: int, seed: int, size: tuple[int, int]) -> str:
    """Write the synthetic scenes once (a ``done`` marker makes re-runs skip this); returns what
    was done, for the log."""
    marker = os.path.join(out_dir, "done.json")
    wanted = {"train": train, "val": val, "seed": seed, "size": list(size)}
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == wanted:
                return f"reused the {train} + {val} scenes in {out_dir}"
    write_synthetic_dataset(
        out_dir, splits={"train": train, "val": val}, height=size[0], width=size[1], seed=seed,
        formats=("coco",),
    )  # fmt: skip
    write_json(marker, wanted)
    return f"wrote {train} training + {val} held-out scenes ({size[0]}x{size[1]}) to {out_dir}"


class Stages:
    """Prints one line per stage with its duration, and the total."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def done(self, name: str, what: str) -> None:
        now = time.perf_counter()
        print(f"[{name}] {what} ({_duration(now - self.last)})", flush=True)
        self.last = now

    def total(self) -> str:
        return _duration(time.perf_counter() - self.start)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


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
    stages = Stages()
    cfg = load_config(args.config_file, args.opts)
    check_output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    logged = is_main_process()  # what was printed, in OUTPUT_DIR/log.txt as tools/train_net.py
    with log_to_file(os.path.join(cfg.OUTPUT_DIR, "log.txt")) if logged else nullcontext():
        return _stages(args, cfg, stages)


def _stages(args: argparse.Namespace, cfg, stages: Stages) -> dict[str, float]:
    data_dir = os.path.join(cfg.OUTPUT_DIR, "data")
    cfg.defrost()  # later commands find the scenes through the config stored in the checkpoints
    cfg.DATASETS.SYNTHETIC_DIR = os.path.abspath(data_dir)
    cfg.freeze()
    size = tuple(cfg.INPUT.CROP.SIZE)
    what = prepare_data(
        data_dir, train=args.train_images, val=args.val_images, seed=args.seed, size=size
    )
    stages.done("data", what)
    catalog = build_catalog(cfg)
    device = init_from_env(cfg.MODEL.DEVICE)
    cfg = resolve_config_seed(cfg)
    save_config(cfg)
    trainer = build_trainer(cfg, device, catalog)
    max_iter = cfg.SOLVER.MAX_ITER
    if trainer.resume():
        print(f"resumed from iteration {trainer.iteration} in {cfg.OUTPUT_DIR}")
    if trainer.iteration >= max_iter:
        metrics = trainer.evaluate(trainer.unwrapped.eval()) if trainer.evaluate else {}
        stages.done("train", f"already finished ({max_iter} iterations); evaluated again")
    else:
        first = trainer.iteration
        metrics = trainer.train()
        stages.done("train", f"iterations {first}..{max_iter}, checkpoints in {cfg.OUTPUT_DIR}")
    print(f"held-out synthetic scenes ({args.val_images}): " + ", ".join(
        f"{k} {v:.1f}" for k, v in metrics.items()))  # fmt: skip
    if is_main_process():
        folder, count = draw_predictions(trainer.unwrapped, catalog, cfg, device)
        stages.done("pictures", f"{count} pictures in {folder}")
        print(f"note: the pictures of real photos ({SAMPLES}) come from a model trained on "
              "synthetic shapes only: they show what it does on data it never saw and are "
              "meaningless as COCO predictions")  # fmt: skip
    weights = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
    python = typed_interpreter()
    print(f"total time {stages.total()}; outputs in {cfg.OUTPUT_DIR}\nreuse the model:\n"
          f"  {python} -m axial_deeplab.engine.infer_net --weights {weights} --input PHOTOS "
          "--output OUT\n"
          f"  {python} -m axial_deeplab.engine.train_net --eval-only MODEL.WEIGHTS {weights}\n"
          f"  {python} -m axial_deeplab.demo.server --weights {weights}")  # fmt: skip
    return metrics


def typed_interpreter() -> str:
    """The interpreter running this, as one would type it here: ``make quickstart`` runs
    ``.venv/bin/python`` without activating the venv in the user's shell, where a plain
    ``python`` may be one without torch."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def ground_truth_panoptic(record: dict, label_divisor: int) -> np.ndarray:
    """``[H, W]`` int64 ground truth of a record in the prediction's encoding (see
    :func:`~.engine.evaluate.ground_truth_labels`)."""
    from .engine.evaluate import ground_truth_labels

    ids = read_panoptic_png(record["pan_seg_file_name"])
    return ground_truth_labels(ids, record["segments_info"], label_divisor)


def draw_predictions(model, catalog, cfg, device, count: int = 6) -> tuple[str, int]:
    """Picture tiles (prediction beside ground truth, semantic map, centres, offsets, legend) of
    held-out synthetic scenes and of the real COCO samples (a model trained on synthetic shapes:
    expect shapes, not COCO classes); returns the folder and the number of pictures."""
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
    items = [(r["file_name"], r) for r in records[:count]]
    items += [(str(p), None) for p in sorted(SAMPLES.glob("*.jpg"))] if SAMPLES.is_dir() else []
    for path, record in items:
        image = read_image(path)
        prediction = predictor.predict(image)
        truth = None if record is None else ground_truth_panoptic(record, metadata.label_divisor)
        pictures = render(image, prediction, predictor.metadata, ground_truth=truth)
        info = {"file_name": path}
        write_image_outputs(folder, Path(path).stem, image, prediction, info, pictures)
    return folder, len(items)


if __name__ == "__main__":
    main()
