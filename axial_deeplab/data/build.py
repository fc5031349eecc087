"""Builders: the only data code that reads the config (``DATASETS.*``, ``INPUT.*``, ``DATALOADER.*``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from .catalog import DatasetCatalog, DatasetMetadata, builtin_catalog, register_custom
from .check import validate_dataset
from .dataset import PanopticDataset, TargetGenerator
from .loader import train_batches
from .transforms import EvalResize, TrainAugmentation


def build_catalog(cfg, *, synthetic_dir: str | None = None) -> DatasetCatalog:
    """Built-in data sets under ``DATASETS.ROOT``, the ``DATASETS.CUSTOM`` entries and the
    synthetic scenes in ``synthetic_dir`` or ``DATASETS.SYNTHETIC_DIR`` (the quick start's
    ``synthetic_{coco,cityscapes}_{train,val}``), when one is set."""
    from .synthetic_writer import register_synthetic

    catalog = builtin_catalog(cfg.DATASETS.ROOT or None)
    register_custom(catalog, list(cfg.DATASETS.CUSTOM))
    folder = synthetic_dir or cfg.DATASETS.SYNTHETIC_DIR
    if folder:
        register_synthetic(catalog, folder)
    return catalog


def load_datasets(
    catalog: DatasetCatalog, names: Sequence[str], *, full_validation: bool = False
) -> tuple[list[dict], DatasetMetadata]:
    """Records of the named data sets, concatenated; they must share their categories.

    ``full_validation``: scan every PNG and image header first and raise one error listing every
    problem (:func:`.check.validate_dataset`).
    """
    if not names:
        raise ValueError("no data set named (DATASETS.TRAIN / DATASETS.TEST is empty)")
    records: list[dict] = []
    metadata: DatasetMetadata | None = None
    for name in names:
        recs, meta = catalog.get(name)
        if not recs:  # a score of nothing would read as a result (PQ 0, mIoU NaN)
            source = (
                f" ({meta.panoptic_json} lists no annotated image)" if meta.panoptic_json else ""
            )
            raise ValueError(f"data set '{name}' is empty{source}: nothing to train or evaluate on")
        difference = None if metadata is None else category_difference(metadata, meta)
        if difference:
            raise ValueError(f"{difference}; they cannot be trained or evaluated together")
        if full_validation:
            validate_dataset(recs, meta).raise_if_problems()
        records.extend(recs)
        metadata = metadata or meta
    return records, metadata


def category_difference(a: DatasetMetadata, b: DatasetMetadata) -> str | None:
    """None if data sets ``a`` and ``b`` number the same classes the same way (class ``i`` is
    the ``i``-th category of each: same id, name and ``isthing``; colours may differ), else
    what differs first, naming both data sets."""
    fields = ("id", "name", "isthing")
    ours = [tuple(c.get(k) for k in fields) for c in a.categories]
    theirs = [tuple(c.get(k) for k in fields) for c in b.categories]
    if ours == theirs:
        return None
    head = f"data sets '{a.name}' and '{b.name}' number their classes differently"
    if len(ours) != len(theirs):
        return f"{head}: {len(ours)} against {len(theirs)} categories"
    i, reordered = first_difference(ours, theirs)
    shown = ", ".join(f"{k} {v!r}" for k, v in zip(fields, ours[i]))
    other = ", ".join(f"{k} {v!r}" for k, v in zip(fields, theirs[i]))
    order = " (the same categories in another order: classes follow the JSON's list)"
    return f"{head}: class {i} is ({shown}) in the first and ({other}) in the second" + (
        order if reordered else ""
    )


def class_name_difference(
    saved: Sequence[str], current: Sequence[str], saved_in: str, current_in: str
) -> tuple[str, bool] | None:
    """Where a checkpoint's class names ``saved`` (from ``saved_in``) and the data's ``current``
    (from ``current_in``) first differ, ``"class i is A in SAVED_IN but B in CURRENT_IN"``, and
    whether they are one list in another order (every class taken for another one); None when
    they agree, or differ in length (refused elsewhere, on the head's shape)."""
    saved, current = list(saved), list(current)
    if saved == current or len(saved) != len(current):
        return None
    i, reordered = first_difference(saved, current)
    return f"class {i} is {saved[i]!r} in {saved_in} but {current[i]!r} in {current_in}", reordered


def first_difference(ours: Sequence, theirs: Sequence) -> tuple[int, bool]:
    """Of two different class lists of one length: the first position where they differ, and
    whether they hold the same entries in another order (every class scored as another one)."""
    i = next(i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y)
    return i, sorted(ours) == sorted(theirs)


def build_train_augmentation(cfg) -> TrainAugmentation:
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("horizontal", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP={flip!r}: expected 'horizontal' or 'none'")
    return TrainAugmentation(
        crop_size=tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None,
        min_scale=cfg.INPUT.MIN_SCALE,
        max_scale=cfg.INPUT.MAX_SCALE,
        scale_step=cfg.INPUT.SCALE_STEP,
        flip_prob=0.5 if flip == "horizontal" else 0.0,
        random_pad=cfg.INPUT.CROP.RANDOM_PAD,
        pad_value=tuple(cfg.MODEL.PIXEL_MEAN),
    )


def build_test_transform(cfg) -> EvalResize:
    return EvalResize(
        short_edge=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        pad_value=tuple(cfg.MODEL.PIXEL_MEAN),
    )


def build_train_dataset(
    cfg, catalog: DatasetCatalog, target_generator: TargetGenerator | None = None
) -> PanopticDataset:
    """The ``DATASETS.TRAIN`` data sets with training augmentation, then ``target_generator``."""
    records, metadata = load_datasets(
        catalog, cfg.DATASETS.TRAIN, full_validation=cfg.DATASETS.FULL_VALIDATION
    )
    return PanopticDataset(
        records,
        metadata=metadata,
        transform=build_train_augmentation(cfg),
        target_generator=target_generator,
        seed=cfg.SEED,
        validate=cfg.DATALOADER.VALIDATE_SAMPLES,
    )


def build_test_dataset(cfg, catalog: DatasetCatalog, name: str) -> PanopticDataset:
    """One ``DATASETS.TEST`` data set with the evaluation resize and no targets."""
    records, metadata = load_datasets(catalog, [name], full_validation=cfg.DATASETS.FULL_VALIDATION)
    return PanopticDataset(
        records,
        metadata=metadata,
        transform=build_test_transform(cfg),
        validate=cfg.DATALOADER.VALIDATE_SAMPLES,
    )


def build_train_batches(
    cfg, dataset: PanopticDataset, *, rank: int = 0, world_size: int = 1
) -> Callable[[int], Iterator[dict]]:
    """``start_iter -> batches`` for the trainer; ``SOLVER.IMS_PER_BATCH`` is split over ranks."""
    total = cfg.SOLVER.IMS_PER_BATCH
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by {world_size} ranks")
    if cfg.SEED < 0:
        raise ValueError("SEED must be resolved to a non-negative value before building the data")
    return train_batches(
        dataset,
        batch_size=total // world_size,
        seed=cfg.SEED,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        rank=rank,
        world_size=world_size,
    )
