"""Builders that read the config and hand ready-made objects to the trainer and evaluator."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import yaml
from torch import nn

from ..checkpoint.io import checkpoint_entries
from ..config import ConfigError
from ..config.checks import differing_model_keys
from ..data.build import (
    build_catalog,
    build_test_dataset,
    build_train_batches,
    build_train_dataset,
    category_difference,
)
from ..data.catalog import DatasetCatalog
from ..data.loader import build_test_loader
from ..data.metadata import metadata_dict
from ..layers.batch_norm import batch_norm_for_devices
from ..modeling.build import build_model
from ..modeling.losses import PanopticDeepLabLoss
from ..modeling.targets import PanopticTargetGenerator
from ..utils.atomic import write_text
from .distributed import get_rank, get_world_size, is_distributed, is_main_process
from .eval_pictures import EvalPictureWriter
from .evaluate import PostProcessing, evaluate_panoptic
from .optim import build_lr_scheduler, build_optimizer, param_groups
from .predictions import PredictionSaver
from .resume import stored_config
from .summaries import BatchPictures
from .trainer import Trainer, TrainerOptions, resolve_seed

logger = logging.getLogger(__name__)


def build_criterion(cfg) -> PanopticDeepLabLoss:
    sem, ins = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.INS_EMBED_HEAD
    return PanopticDeepLabLoss(
        semantic_weight=sem.LOSS_WEIGHT,
        center_weight=ins.CENTER_LOSS_WEIGHT,
        offset_weight=ins.OFFSET_LOSS_WEIGHT,
        top_k_percent=sem.LOSS_TOP_K,
        ignore_label=sem.IGNORE_VALUE,
    )


def build_target_generator(cfg, thing_ids) -> PanopticTargetGenerator:
    return PanopticTargetGenerator(
        thing_ids=thing_ids,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        sigma=cfg.INPUT.GAUSSIAN_SIGMA,
        small_instance_area=cfg.INPUT.SMALL_INSTANCE_AREA,
        small_instance_weight=cfg.INPUT.SMALL_INSTANCE_WEIGHT,
        ignore_crowd_in_semantic=cfg.INPUT.IGNORE_CROWD_IN_SEMANTIC,
        crowd_as_instance=cfg.INPUT.CROWD_AS_INSTANCE,
    )


def load_model_weights(
    model: nn.Module, weights: str, *, whole: bool = False, state=None, cfg=None
) -> str:
    """``checkpoint.io.load_weights``, its error saying first which config the file was saved
    with (``matching_config_hint``) when the weights do not fit, unless that is ``cfg``'s
    model (the one in use: then the hint would say nothing)."""
    from ..checkpoint.io import load_weights

    return load_weights(
        model, weights, whole=whole, state=state, hint=lambda: matching_config_hint(weights, cfg)
    )


def prepare_model(cfg, device: torch.device, *, whole: bool = False) -> nn.Module:
    """``build_model(cfg)`` on ``device``, ``MODEL.WEIGHTS`` loaded (``whole``: all of the model's
    weights, no backbone-only file); when running distributed, DDP and every batch norm a
    SyncBN on GPUs (on CPUs, SyncBN of the config falls back to BN: ``batch_norm_for_devices``)."""
    model = build_model(cfg).to(device)
    if cfg.MODEL.WEIGHTS:
        loaded = load_model_weights(model, cfg.MODEL.WEIGHTS, whole=whole, cfg=cfg)
        if loaded == "backbone":
            print(f"loaded backbone weights from {cfg.MODEL.WEIGHTS}; decoders and heads are new")
    if is_distributed():
        model = batch_norm_for_devices(model, distributed=True, device_type=device.type)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model


def check_num_classes(cfg, metadata, name: str, *, training: bool = False) -> None:
    """``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` must equal data set ``name``'s class count (more
    classes would train logits no pixel ever has; fewer would break the loss), plus one when
    ``MODEL.SEM_SEG_HEAD.VOID_CLASS`` names a void output channel (evaluation and inference
    only: ``training`` refuses a void channel, which our losses and targets do not know)."""
    sem = cfg.MODEL.SEM_SEG_HEAD
    where = metadata.panoptic_json or "its metadata"
    if sem.VOID_CLASS >= 0 and training:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.VOID_CLASS is {sem.VOID_CLASS}: a void output channel is for "
            "evaluating and running converted models (deeplab2 COCO); training with one is not "
            f"supported: set MODEL.SEM_SEG_HEAD.VOID_CLASS -1 and NUM_CLASSES "
            f"{metadata.num_classes}"
        )
    if sem.VOID_CLASS >= 0:
        if sem.NUM_CLASSES != metadata.num_classes + 1:
            fix = (
                f"NUM_CLASSES must be {metadata.num_classes + 1} (its classes + void), or set "
                f"VOID_CLASS -1 and NUM_CLASSES {metadata.num_classes}"
            )
            if not training and cfg.MODEL.WEIGHTS:  # the weights fix the count (see below)
                fix = (
                    f"the weights {cfg.MODEL.WEIGHTS} predict {sem.NUM_CLASSES - 1} classes and "
                    "void: evaluate them on a data set with those classes"
                )
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {sem.NUM_CLASSES} with a void channel "
                f"(MODEL.SEM_SEG_HEAD.VOID_CLASS {sem.VOID_CLASS}) but data set {name} has "
                f"{metadata.num_classes} classes ({where}): {fix}"
            )
        return
    if metadata.num_classes != sem.NUM_CLASSES:
        hint = (
            " (a model with a void output channel, e.g. deeplab2 COCO's 0: set "
            "MODEL.SEM_SEG_HEAD.VOID_CLASS to it)"
            if sem.NUM_CLASSES == metadata.num_classes + 1
            else ""
        )
        fix = f"set MODEL.SEM_SEG_HEAD.NUM_CLASSES {metadata.num_classes}{hint}"
        if not training and cfg.MODEL.WEIGHTS:  # its weights fix the count: another NUM_CLASSES
            fix = (  # would not load them
                f"the weights {cfg.MODEL.WEIGHTS} predict {sem.NUM_CLASSES} classes: evaluate "
                f"them on a data set with those classes{hint}"
            )
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {sem.NUM_CLASSES} but data set {name} has "
            f"{metadata.num_classes} classes ({where}): {fix}"
        )


def matching_config_hint(weights: str, cfg=None) -> str:
    """``"; it was saved with the model of configs/X.yaml"`` when the config stored in the
    checkpoint ``weights`` has the ``MODEL`` section of files in ``configs/`` (else the stored
    backbone variant, else ``""``); ``""`` too when that is the ``MODEL`` section of ``cfg``."""
    import glob

    import yaml

    from ..checkpoint.io import load_checkpoint_file
    from ..config import load_config

    try:
        stored = load_checkpoint_file(weights, mmap=True).config_yaml
        model = (yaml.safe_load(stored or "") or {}).get("MODEL")
    except (ValueError, OSError, yaml.YAMLError):
        return ""
    if not isinstance(model, dict):
        return ""
    if cfg is not None and not differing_model_keys({"MODEL": model}, cfg):
        return ""  # the config in use is the stored one
    ignore = ("WEIGHTS", "DEVICE")
    wanted = {k: v for k, v in model.items() if k not in ignore}
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    matches = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)):
        try:
            found = yaml.safe_load(load_config(path).dump())["MODEL"]
        except (ValueError, OSError, yaml.YAMLError):
            continue
        if {k: v for k, v in found.items() if k not in ignore} == wanted:
            matches.append(os.path.relpath(path, os.path.join(root, "..")))
    if matches:
        return f"; it was saved with the model of {', '.join(matches[:3])}"
    backbone = model.get("BACKBONE", {}).get("NAME")
    detail = model.get("AXIAL_RESNET" if backbone == "axial_resnet" else "RESNETS", {})
    variant = detail.get("VARIANT", detail.get("DEPTH"))
    return f"; the config stored in it has MODEL.BACKBONE.NAME {backbone} ({variant})"


def build_evaluate_fn(
    cfg,
    catalog: DatasetCatalog,
    device: torch.device,
    *,
    save_dir: str = "",
    pictures_dir: str = "",
    verbose: bool = False,
) -> Callable[[nn.Module], dict[str, float]]:
    """``model -> metrics`` on every data set of ``DATASETS.TEST`` in turn (this rank's shard,
    gathered), as detectron2 evaluates all of them. The first set's metrics keep their names
    (``PQ``...: ``model_best.pth`` follows its PQ); another set's are named ``NAME/PQ``...

    ``save_dir``: also write the predictions there in the official formats
    (:mod:`.predictions`). ``pictures_dir``: also draw the first ``TEST.NUM_PICTURES`` images
    there, prediction beside ground truth (:mod:`.eval_pictures`). With several sets, each writes
    to a subfolder named after it. ``verbose``: print the per-class PQ table."""
    if not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: name the data set to evaluate on")
    names = list(cfg.DATASETS.TEST)
    if len(set(names)) != len(names):
        raise ConfigError(f"DATASETS.TEST names a data set twice: {names}")

    def folder(root: str, name: str) -> str:
        return os.path.join(root, name) if root and len(names) > 1 else root

    evaluators = [
        _evaluate_one_fn(cfg, catalog, name, device, folder(save_dir, name),
                         folder(pictures_dir, name), verbose)
        for name in names
    ]  # fmt: skip

    def evaluate(model: nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for i, (name, evaluate_one) in enumerate(zip(names, evaluators)):
            if len(names) > 1 and verbose and is_main_process():
                print(f"evaluation on {name}:")
            prefix = f"{name}/" if i else ""
            metrics.update({prefix + k: v for k, v in evaluate_one(model).items()})
        return metrics

    return evaluate


def _evaluate_one_fn(
    cfg, catalog: DatasetCatalog, name: str, device: torch.device, save_dir: str,
    pictures_dir: str, verbose: bool,
) -> Callable[[nn.Module], dict[str, float]]:  # fmt: skip
    """``model -> metrics`` on data set ``name`` (see :func:`build_evaluate_fn`)."""
    dataset = build_test_dataset(cfg, catalog, name)
    check_num_classes(cfg, dataset.metadata, name)
    loader = build_test_loader(dataset, rank=get_rank(), world_size=get_world_size())
    settings = PostProcessing.from_config(cfg)
    pad_to = tuple(cfg.INPUT.CROP.SIZE) if cfg.TEST.PAD_TO_CROP else None

    def evaluate(model: nn.Module) -> dict[str, float]:
        void = settings.void_class
        sinks = [PredictionSaver(save_dir, dataset.metadata, void_class=void)] if save_dir else []
        if pictures_dir and cfg.TEST.NUM_PICTURES > 0:
            sinks.append(
                EvalPictureWriter(
                    pictures_dir, dataset.metadata, cfg.TEST.NUM_PICTURES, void_class=void
                )
            )
        return evaluate_panoptic(
            model,
            loader,
            dataset.metadata,
            settings,
            device=device,
            pad_to=pad_to,
            pad_value=tuple(cfg.MODEL.PIXEL_MEAN),
            sinks=sinks,
            print_table=verbose,
            mixed_precision=cfg.TEST.AMP,
        )

    return evaluate


def build_config_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` over ``model``'s parameter groups (``SOLVER.WEIGHT_DECAY`` rule)."""
    solver = cfg.SOLVER
    return build_optimizer(
        param_groups(model, solver.WEIGHT_DECAY),
        name=solver.OPTIMIZER,
        lr=solver.BASE_LR,
        betas=tuple(solver.BETAS),
    )


def build_trainer(cfg, device: torch.device, catalog: DatasetCatalog | None = None) -> Trainer:
    """Model, loss, optimizer, schedule, data and evaluation from ``cfg``; checkpoints also carry
    ``cfg`` and the first training data set's class metadata (for ``tools/infer.py``)."""
    catalog = catalog or build_catalog(cfg)
    cfg = resolve_config_seed(cfg)
    if not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: name at least one training data set")
    _, metadata = catalog.get(cfg.DATASETS.TRAIN[0])
    check_num_classes(cfg, metadata, cfg.DATASETS.TRAIN[0], training=True)
    for name in cfg.DATASETS.TEST:  # evaluated during training: class i must mean the same
        difference = category_difference(metadata, catalog.get(name)[1])
        if difference:
            raise ConfigError(
                f"DATASETS.TRAIN and DATASETS.TEST: {difference}; the periodic evaluation would "
                "score every class against another one"
            )
    torch.manual_seed(cfg.SEED)
    model = prepare_model(cfg, device)
    targets = build_target_generator(cfg, metadata.thing_train_ids)
    dataset = build_train_dataset(cfg, catalog, targets)
    solver = cfg.SOLVER
    optimizer = build_config_optimizer(cfg, model)
    scheduler = build_lr_scheduler(
        optimizer,
        max_iter=solver.MAX_ITER,
        power=solver.POLY_LR_POWER,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_factor=solver.WARMUP_FACTOR,
    )
    options = TrainerOptions(
        max_iter=solver.MAX_ITER,
        output_dir=cfg.OUTPUT_DIR,
        checkpoint_period=solver.CHECKPOINT_PERIOD,
        eval_period=cfg.TEST.EVAL_PERIOD,
        log_period=cfg.LOG_PERIOD,
        clip_grad_norm=solver.CLIP_GRADIENTS,
        amp=solver.AMP,
        vis_period=cfg.VIS_PERIOD,
    )
    evaluate = build_evaluate_fn(cfg, catalog, device) if cfg.DATASETS.TEST else None
    batches = build_train_batches(cfg, dataset, rank=get_rank(), world_size=get_world_size())
    return Trainer(
        model,
        build_criterion(cfg),
        optimizer,
        scheduler,
        batches,
        device=device,
        options=options,
        evaluate=evaluate,
        visualize=BatchPictures(metadata, PostProcessing.from_config(cfg)),
        checkpoint_info=checkpoint_entries(config=cfg, metadata=metadata_dict(metadata)),
    )


def resolve_config_seed(cfg, resume_from: str | None = None):
    """``cfg`` with ``SEED < 0`` replaced by a random seed (``trainer.resolve_seed``); unchanged
    (the same object) when ``SEED >= 0``. Call it before ``save_config``, so that the file holds
    the seed. ``resume_from``: the checkpoint a run resumes; ``SEED < 0`` then takes the seed
    saved in it (a new draw would change the data order of the rest of the run)."""
    seed = cfg.SEED
    if seed < 0 and resume_from:
        saved = (yaml.safe_load(stored_config(resume_from) or "") or {}).get("SEED")
        if isinstance(saved, int) and saved >= 0:
            seed = saved
            if is_main_process():
                print(f"SEED is {cfg.SEED} (< 0): resuming with the run's seed, {seed}")
    seed = resolve_seed(seed)
    if seed == cfg.SEED:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = seed
    cfg.freeze()
    return cfg


def save_config(cfg) -> str:
    """Write the full config to ``OUTPUT_DIR/config.yaml`` (what a run used, for reproduction)."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    write_text(path, cfg.dump())
    return path
