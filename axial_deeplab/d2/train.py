"""Training and evaluation with detectron2's ``DefaultTrainer`` and ``launch`` (``tools/d2_train_net.py``).

:class:`Trainer` keeps detectron2's loop, hooks, checkpointer and writers and plugs in our parts:
the optimizer and poly schedule of ``axial_deeplab.engine.optim`` (with detectron2's gradient
clipping from ``SOLVER.CLIP_GRADIENTS``), our mapper in the data loaders and our evaluators.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import pickle
import re
import tempfile
import weakref
from collections.abc import Iterator, Sequence

import torch
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.engine import defaults as d2_defaults
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.registry import Registry
from torch.multiprocessing.spawn import ProcessRaisedException

from axial_deeplab.engine.build import build_config_optimizer
from axial_deeplab.engine.launch import portable
from axial_deeplab.engine.optim import build_lr_scheduler
from axial_deeplab.engine.train_net import check_weights
from axial_deeplab.layers.batch_norm import batch_norm_for_devices
from axial_deeplab.utils.cli import add_debug_flag

from .checkpoint import UNSAFE_FLAG, SafeDetectionCheckpointer
from .config import load_config
from .data import AxialDeepLabDatasetMapper, register_datasets
from .evaluation import build_evaluator

logger = logging.getLogger(__name__)

# detectron2's registries' error for a name they do not hold, and the config key naming each
_REGISTRY_MISS = re.compile(r"No object named '(.*)' found in '(\w+)' registry!")
_REGISTRY_KEYS = {
    "META_ARCH": "MODEL.META_ARCHITECTURE",
    "BACKBONE": "MODEL.BACKBONE.NAME",
    "SEM_SEG_HEADS": "MODEL.SEM_SEG_HEAD.NAME",
}


@contextlib.contextmanager
def _ddp_on_cpus() -> Iterator[None]:
    """Within the block, detectron2's ``create_ddp_model`` wraps a CPU model without
    ``device_ids``: it passes the local rank always, which DistributedDataParallel refuses for a
    CPU module, so ``--num-gpus N`` (gloo processes) failed on a machine without GPUs."""
    original = d2_defaults.create_ddp_model

    def create(model: torch.nn.Module, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with our optimizer, schedule, mapper and evaluators."""

    def __init__(self, cfg, *, allow_pickle: bool = False) -> None:
        with _ddp_on_cpus():
            super().__init__(cfg)
        # Weights are loaded weights-only (detectron2 unpickles .pkl files, which can run code).
        self.checkpointer = SafeDetectionCheckpointer(
            self.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), allow_pickle=allow_pickle
        )
        # detectron2 v0.6 checkpoints only schedulers derived from _LRScheduler; ours is a
        # LambdaLR, so it is saved explicitly (a resumed run continues the schedule).
        self.checkpointer.add_checkpointable("lr_scheduler", self.scheduler)

    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """Our model; under several processes every batch norm becomes a SyncBN on GPUs (the
        backbone's too: detectron2 itself converts none), and SyncBN falls back to per-process BN
        on CPUs, where PyTorch cannot run it (``batch_norm_for_devices``)."""
        model = super().build_model(cfg)
        device_type = torch.device(cfg.MODEL.DEVICE).type
        return batch_norm_for_devices(
            model, distributed=comm.get_world_size() > 1, device_type=device_type
        )

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        return maybe_add_gradient_clipping(cfg, build_config_optimizer(cfg, model))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        solver = cfg.SOLVER
        return build_lr_scheduler(
            optimizer,
            max_iter=solver.MAX_ITER,
            power=solver.POLY_LR_POWER,
            warmup_iters=solver.WARMUP_ITERS,
            warmup_factor=solver.WARMUP_FACTOR,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)  # loading writes the metadata
        return build_detection_train_loader(
            dicts,
            mapper=AxialDeepLabDatasetMapper(cfg, is_train=True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        return build_detection_test_loader(
            dicts,
            mapper=AxialDeepLabDatasetMapper(cfg, is_train=False, dataset_name=dataset_name),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        return build_evaluator(dataset_name)


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's arguments (``--config-file``, ``--num-gpus``, ``--eval-only``, ``--resume``,
    ``opts``...) plus the synthetic data set."""
    parser = default_argument_parser()
    add_debug_flag(parser)
    parser.add_argument(
        "--synthetic-dir",
        default="",
        help="write synthetic scenes here (once) and register synthetic_{coco,cityscapes}_*",
    )
    parser.add_argument("--synthetic-train", type=int, default=96, help="synthetic train scenes")
    parser.add_argument("--synthetic-val", type=int, default=24, help="synthetic val scenes")
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="with --eval-only: evaluate even without MODEL.WEIGHTS (random weights)",
    )
    parser.add_argument(
        UNSAFE_FLAG,
        action="store_true",
        help="load MODEL.WEIGHTS with plain pickle (runs any code in the file; trusted files only)",
    )
    return parser


def setup(args: argparse.Namespace):
    """Config from ``--config-file`` and ``opts`` (CPU when no GPU is present), logging, seeds."""
    opts = list(args.opts)
    cfg = load_config(args.config_file, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print(f"MODEL.DEVICE={cfg.MODEL.DEVICE} but no GPU is available: running on the CPU")
        cfg = load_config(args.config_file, opts + ["MODEL.DEVICE", "cpu"])
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> dict:
    """One process: register the data sets, then evaluate (``--eval-only``) or train."""
    with _registered_names_in_errors():
        return _main(args)


@contextlib.contextmanager
def _registered_names_in_errors() -> Iterator[None]:
    """detectron2's "No object named 'X' found in 'R' registry!" as a KeyError that names the
    config key, the nearest registered name and all of them."""
    try:
        yield
    except KeyError as exc:
        miss = _REGISTRY_MISS.fullmatch(str(exc.args[0]) if exc.args else "")
        if miss is None:
            raise
        import detectron2.modeling

        registries = {
            r._name: r for r in vars(detectron2.modeling).values() if isinstance(r, Registry)
        }
        name, registry = miss.groups()
        if registry not in registries:
            raise
        names = sorted(dict(registries[registry]))
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        key = _REGISTRY_KEYS.get(registry, "name")
        raise KeyError(
            f"{key} '{name}' is not in detectron2's {registry} registry{hint}; registered: "
            f"{', '.join(names)}"
        ) from None


def _main(args: argparse.Namespace) -> dict:
    cfg = setup(args)
    check_weights(cfg, args)  # --eval-only needs weights, as in tools/train_net.py
    weights = cfg.MODEL.WEIGHTS
    if args.eval_only and weights and "://" not in weights and not os.path.isfile(weights):
        # (detectron2's checkpointer would fail with an AssertionError, after the model printout)
        raise FileNotFoundError(f"MODEL.WEIGHTS not found (or not a file): {weights}")
    register_datasets(cfg, synthetic_dir=args.synthetic_dir or None)
    if cfg.TEST.AUG.ENABLED:
        logger.warning("TEST.AUG is not applied under detectron2; tools/infer.py applies it")
    if args.eval_only:
        model = Trainer.build_model(cfg)
        allow = args.unsafe_load_pickle_weights
        SafeDetectionCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, allow_pickle=allow
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg, allow_pickle=args.unsafe_load_pickle_weights)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(argv: Sequence[str] | None = None) -> None:
    """Parse, write the synthetic scenes if asked, then ``launch`` :func:`main` on every GPU;
    errors are one line (``--debug``: with the traceback)."""
    from axial_deeplab.utils.cli import run_cli

    run_cli(_run, None if argv is None else list(argv))


def _run(argv: Sequence[str]) -> None:
    args = argument_parser().parse_args(argv)
    if args.synthetic_dir:
        from axial_deeplab.quickstart import prepare_data

        cfg = load_config(args.config_file, list(args.opts))
        prepare_data(
            os.path.abspath(args.synthetic_dir),
            train=args.synthetic_train,
            val=args.synthetic_val,
            seed=0,
            size=tuple(cfg.INPUT.CROP.SIZE),
        )
    with tempfile.TemporaryDirectory(prefix="axial_deeplab_errors_") as errors:
        try:
            launch(
                _main_keeping_errors,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(errors, args),
            )
        except ProcessRaisedException as exc:  # the worker's own error, as with one process
            kept = _kept_error(errors, exc.error_index)
            if kept is None:
                raise
            raise kept from exc


def _main_keeping_errors(errors: str, args: argparse.Namespace) -> dict:
    """:func:`main` in a worker of detectron2's ``launch``; an error it raises is also pickled
    to ``errors/LOCAL_RANK.pkl`` (torch hands the parent only its traceback's text)."""
    try:
        return main(args)
    except Exception as exc:
        path = os.path.join(errors, f"{comm.get_local_rank()}.pkl")
        with contextlib.suppress(OSError), open(path, "wb") as f:  # read once we have failed
            pickle.dump(portable(exc), f)
        raise


def _kept_error(errors: str, local_rank: int) -> BaseException | None:
    """The error that worker ``local_rank`` kept in ``errors``; None if it kept none."""
    try:
        with open(os.path.join(errors, f"{local_rank}.pkl"), "rb") as f:
            return pickle.load(f)  # written by our own worker just now
    except (OSError, pickle.UnpicklingError, EOFError):
        return None
