"""Train or evaluate from a config: ``python tools/train_net.py --config-file F [KEY VALUE ...]``.

detectron2-style options: ``--num-gpus N`` spawns N local processes (DistributedDataParallel;
NCCL on GPUs, gloo on CPUs), ``--resume`` continues from ``OUTPUT_DIR``'s last checkpoint,
``--eval-only`` evaluates ``MODEL.WEIGHTS`` on each ``DATASETS.TEST`` set (without weights it
refuses unless ``--allow-random-weights``); with ``TEST.SAVE_PREDICTIONS True`` it also writes
the predictions in the official formats (COCO panoptic PNG + JSON with the data set's category
ids; Cityscapes label-id PNGs and instance txt + masks for Cityscapes-format data) and
``metrics.json`` to ``OUTPUT_DIR/inference``; it draws the first ``TEST.NUM_PICTURES`` images
(prediction beside ground truth) to ``OUTPUT_DIR/eval_pictures``. With several test sets, each
writes to a subfolder named after it, and the metrics of every set but the first are named
``SET/PQ``... Multi-node: launch this with ``torchrun``, or submit
it to Slurm with ``--slurm`` (see :mod:`.slurm`).

Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2 during training saves a checkpoint and exits with
``128 + signal number`` and a line saying how to resume. Errors are one line (``--debug`` or
``AXIAL_DEEPLAB_DEBUG=1``: with the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from contextlib import nullcontext

from ..checkpoint.io import BackboneOnlyError
from ..config import ConfigError, load_config
from ..utils.atomic import write_json
from ..utils.cli import check_output_folder, run_cli
from ..utils.log_file import log_to_file
from .build import (
    build_evaluate_fn,
    build_trainer,
    prepare_model,
    resolve_config_seed,
    save_config,
)
from .distributed import init_from_env, is_main_process
from .launch import default_argument_parser, launch
from .preemption import TrainingInterrupted
from .resume import LAST_CHECKPOINT, checkpoint_to_resume, numbered_checkpoints


def check_weights(cfg, args: argparse.Namespace) -> None:
    """``--eval-only`` needs ``MODEL.WEIGHTS`` (a random model's score means nothing)."""
    if args.eval_only and not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        raise ConfigError(
            "--eval-only without MODEL.WEIGHTS would evaluate a randomly initialised model: "
            "pass MODEL.WEIGHTS path/to/model.pth (or --allow-random-weights to do it anyway)"
        )


def eval_config(args: argparse.Namespace):
    """``--eval-only`` without ``--config-file``: the config stored in ``MODEL.WEIGHTS`` (our
    checkpoints and converted ones carry it), then the ``KEY VALUE`` overrides."""
    from ..checkpoint.io import load_checkpoint_file
    from .predictor_setup import config_from_yaml

    weights = load_config(None, args.opts).MODEL.WEIGHTS
    if not weights:
        return load_config(None, args.opts)
    stored = load_checkpoint_file(weights, mmap=True).config_yaml
    if stored is None:
        raise SystemExit(f"error: {weights} carries no config: pass --config-file")
    print(f"config: stored in {weights}")
    return config_from_yaml(stored, list(args.opts), source=weights)


def notice_stored_config(cfg, config_file: str) -> None:
    """``--eval-only --config-file``: say where the config stored in ``MODEL.WEIGHTS`` (if any)
    describes another model (``predictor_setup.notice_config_differences``)."""
    from ..checkpoint.io import load_checkpoint_file
    from .predictor_setup import notice_config_differences

    weights = cfg.MODEL.WEIGHTS
    if not os.path.isfile(weights):
        return  # the model's preparation names the missing file
    stored = load_checkpoint_file(weights, mmap=True).config_yaml
    if stored:
        notice_config_differences(cfg, stored, config_file, weights)


def check_checkpoint_classes(cfg, catalog) -> None:
    """``--eval-only``: the classes stored in ``MODEL.WEIGHTS`` (when it stores them) against
    those of each ``DATASETS.TEST`` set. The same names in another order would score every class
    against another one: refused. Other differences (renamed classes) get a note."""
    from ..checkpoint.io import load_checkpoint_file
    from ..data.build import class_name_difference

    stored = (
        load_checkpoint_file(cfg.MODEL.WEIGHTS, mmap=True).metadata if cfg.MODEL.WEIGHTS else None
    )
    if not stored or "class_names" not in stored:
        return
    ours = list(stored["class_names"])
    for name in cfg.DATASETS.TEST:
        metadata = catalog.get(name)[1]
        _notice_thing_difference(stored, metadata, cfg.MODEL.WEIGHTS)
        theirs = [str(n) for n in metadata.class_names]
        difference = class_name_difference(ours, theirs, cfg.MODEL.WEIGHTS, f"data set {name}")
        if difference is None:
            continue
        where, reordered = difference
        if reordered:
            raise ConfigError(
                f"--eval-only: the checkpoint and the data set order their classes differently "
                f"({where}): every class would be scored against another one; list the data "
                "set's categories in the order the model was trained with"
            )
        if is_main_process():
            print(f"note: the checkpoint's class names differ from the data set's ({where}); "
                  "classes are scored by position")  # fmt: skip


def _notice_thing_difference(stored: dict, metadata, weights: str) -> None:
    """Note the classes that are things in the checkpoint's metadata and stuff in the data set,
    or the other way round: evaluation follows the data set's ``isthing`` (instances are only
    grouped for its things), so those classes score differently than in training."""
    if "thing_ids" not in stored or not is_main_process():
        return
    ours, theirs = set(stored["thing_ids"]), set(metadata.thing_train_ids)
    if ours == theirs:
        return
    names = list(metadata.class_names)

    def listed(ids: set[int]) -> str:
        shown = [f"{i} ({names[i]})" if 0 <= i < len(names) else str(i) for i in sorted(ids)]
        return ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "")

    parts = [
        f"{what} {listed(ids)}"
        for what, ids in (
            ("things in it but stuff in the data set:", ours - theirs),
            ("stuff in it but things in the data set:", theirs - ours),
        )
        if ids
    ]
    print(f"note: {weights} and data set {metadata.name} mark different classes as things "
          f"({'; '.join(parts)}); the data set's isthing is used")  # fmt: skip


def notice_cpu_fallback(device: str) -> None:
    """Say that a CUDA ``MODEL.DEVICE`` runs on the CPU for want of a GPU: once, from the first
    process (``--num-gpus N`` starts N of them)."""
    if device.startswith("cuda") and not torch_cuda_available():
        if os.environ.get("RANK", "0") == "0":
            print(f"MODEL.DEVICE={device} but no GPU is available: running on the CPU.")


def run(args: argparse.Namespace) -> dict[str, float]:
    if args.eval_only and not args.config_file:
        cfg = eval_config(args)
    else:
        cfg = load_config(args.config_file or None, args.opts)
        if args.eval_only and cfg.MODEL.WEIGHTS and is_main_process():
            notice_stored_config(cfg, args.config_file)
    check_weights(cfg, args)
    notice_cpu_fallback(cfg.MODEL.DEVICE)
    device = init_from_env(cfg.MODEL.DEVICE)
    check_output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    logged = is_main_process() and cfg.OUTPUT_DIR  # what was printed, in OUTPUT_DIR/log.txt
    with log_to_file(os.path.join(cfg.OUTPUT_DIR, "log.txt")) if logged else nullcontext():
        metrics = _evaluate(cfg, args, device) if args.eval_only else _train(cfg, args, device)
        if is_main_process() and metrics:
            print(json.dumps({k: round(v, 3) for k, v in metrics.items()}, indent=1))
    return metrics


def _evaluate(cfg, args: argparse.Namespace, device) -> dict[str, float]:
    """``--eval-only``: MODEL.WEIGHTS on every DATASETS.TEST set."""
    from ..data.build import build_catalog

    try:
        model = prepare_model(cfg, device, whole=not args.allow_random_weights)
    except BackboneOnlyError as exc:
        raise ConfigError(
            f"--eval-only: {exc}; or pass --allow-random-weights to evaluate it anyway"
        ) from None
    catalog = build_catalog(cfg)
    check_checkpoint_classes(cfg, catalog)
    save_dir = os.path.join(cfg.OUTPUT_DIR, "inference") if cfg.TEST.SAVE_PREDICTIONS else ""
    pictures = os.path.join(cfg.OUTPUT_DIR, "eval_pictures")
    metrics = build_evaluate_fn(
        cfg, catalog, device, save_dir=save_dir, pictures_dir=pictures, verbose=True
    )(model)
    if save_dir and is_main_process():
        write_json(os.path.join(save_dir, "metrics.json"), metrics, indent=1)
        print(f"predictions in the official formats written to {save_dir}")
    return metrics


def _train(cfg, args: argparse.Namespace, device) -> dict[str, float]:
    """Training, new or resumed (``--resume``)."""
    resume_from = checkpoint_to_resume(cfg.OUTPUT_DIR) if args.resume else None
    if not args.resume:
        check_no_earlier_run(cfg.OUTPUT_DIR)
    cfg = resolve_config_seed(cfg, resume_from)
    trainer = build_trainer(cfg, device)
    resumed = args.resume and trainer.resume()  # before config.yaml: a refused resume keeps it
    if is_main_process():
        save_config(cfg)
    if args.resume and not resumed and is_main_process():  # e.g. a mistyped OUTPUT_DIR
        print(f"--resume: no checkpoint in {cfg.OUTPUT_DIR}: training from the start")
    if resumed and is_main_process():
        print(f"resumed from iteration {trainer.iteration} of {cfg.OUTPUT_DIR}")
        if trainer.iteration >= cfg.SOLVER.MAX_ITER:
            print(f"this run already finished (SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}): nothing "
                  "to train; raise SOLVER.MAX_ITER to continue, or evaluate with --eval-only "
                  f"MODEL.WEIGHTS {cfg.OUTPUT_DIR}/model_{trainer.iteration:07d}.pth")  # fmt: skip
    return trainer.train()


def check_no_earlier_run(output_dir: str) -> None:
    """A new run (no ``--resume``) must not start in a folder holding another run's checkpoints:
    it would cut that run's ``metrics.json`` and overwrite its checkpoints one by one."""
    found = numbered_checkpoints(output_dir)
    if found or os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)):
        names = ", ".join(os.path.basename(p) for p in found[-2:]) or LAST_CHECKPOINT
        raise ConfigError(
            f"OUTPUT_DIR {output_dir} holds an earlier run ({names}): pass --resume to continue "
            "it, or give another OUTPUT_DIR (or delete that one) to start a new run"
        )


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resume_command(argv: list[str]) -> str:
    """The command line that resumes an interrupted run (``--resume`` added once): this script
    as it was started (``tools/train_net.py`` when not run as a script)."""
    args = [a for a in argv if a != "--resume"]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "tools/train_net.py"
    command = shlex.join([sys.executable, script, "--resume", *args])
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # started by torchrun: rerun it the same way
        return f"your torchrun command with --resume added ({command.split(' ', 1)[1]})"
    return command


def _main(argv: list[str]) -> None:
    args = default_argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    if args.slurm:
        from .slurm import submit

        submit(args)
        return
    try:
        launch(run, args.num_gpus, (args,))
    except TrainingInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per process
            print(f"{exc}\nresume with: {resume_command(argv)}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None


def main(argv: list[str] | None = None) -> None:
    run_cli(_main, argv)


if __name__ == "__main__":
    main()
