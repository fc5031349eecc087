"""Class metadata as the plain dict a checkpoint carries (``checkpoint.io.save_checkpoint_file``).

``{"class_names": [str, ...] (train-id order), "thing_ids": [int, ...] (thing train ids),
"label_divisor": int, "class_colors": [[R, G, B], ...] (optional)}``: what inference needs to
name classes and group things into instances. Built from any data set's :class:`DatasetMetadata`
(:func:`metadata_dict`) or, without data files, for the built-in Cityscapes and COCO panoptic
classes (:func:`metadata_for_dataset`).
"""

from __future__ import annotations

from collections.abc import Callable

from .catalog import DatasetMetadata


def metadata_dict(dataset: DatasetMetadata) -> dict:
    """The checkpoint metadata of ``dataset``; ``class_colors`` only when every class has one."""
    colors = [c.get("color") for c in dataset.categories]
    meta: dict = {
        "class_names": [str(n) for n in dataset.class_names],
        "thing_ids": [int(t) for t in dataset.thing_train_ids],
        "label_divisor": int(dataset.label_divisor),
    }
    if None not in colors:
        meta["class_colors"] = [[int(v) for v in c] for c in colors]
    return meta


def _cityscapes() -> DatasetMetadata:
    """The 19 evaluated Cityscapes classes (train ids 0..18, things 11..18), divisor 1000."""
    from .cityscapes_panoptic import cityscapes_metadata

    return cityscapes_metadata(name="cityscapes", use_train_id=True)


def _coco() -> DatasetMetadata:
    """The 133 COCO panoptic classes (train ids 0..132, things 0..79), divisor 1000."""
    from .coco_categories import COCO_PANOPTIC_CATEGORIES
    from .coco_panoptic import coco_metadata

    categories = [
        {"id": cid, "name": name, "isthing": isthing, "color": list(color)}
        for cid, name, isthing, color in COCO_PANOPTIC_CATEGORIES
    ]
    return coco_metadata(categories, name="coco", source="coco_categories.py")


BUILTIN_DATASETS: dict[str, Callable[[], DatasetMetadata]] = {
    "cityscapes": _cityscapes,
    "coco": _coco,
}


def metadata_for_dataset(name: str) -> dict:
    """Checkpoint metadata of a built-in data set family: ``"cityscapes"`` or ``"coco"``, or a
    built-in split name starting with one of them (``cityscapes_fine_panoptic_val``,
    ``coco_2017_val_panoptic``)."""
    for family, build in BUILTIN_DATASETS.items():
        if name == family or name.startswith(f"{family}_"):
            return metadata_dict(build())
    raise KeyError(
        f"no built-in class metadata for data set {name!r}; known: {sorted(BUILTIN_DATASETS)} "
        "(or a name starting with one of them and '_')"
    )


def config_class_metadata(cfg) -> dict | None:
    """Checkpoint metadata of the config's first built-in data set (``DATASETS.TEST``, then
    ``TRAIN``), or None when it names none (a converted checkpoint then carries no class names;
    inference falls back to the data set's files or generic names). deeplab2's COCO models have
    one more output than COCO has classes, their ignore label 0: the config names it as a void
    channel (``MODEL.SEM_SEG_HEAD.VOID_CLASS 0``), which is no class, so the metadata lists the
    133 COCO classes (things 0..79) as the data set numbers them, and inference and evaluation
    map the model's channels onto them (``modeling.postprocessing.semantic_prediction``)."""
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        try:
            return metadata_for_dataset(name)
        except (KeyError, ValueError):
            continue
    return None


def check_head_fits_metadata(cfg, config_file: str) -> None:
    """ValueError when the class metadata a converter would store (:func:`config_class_metadata`)
    names another number of classes than the model's head predicts (``NUM_CLASSES``, less a void
    channel): the file would contradict itself, and fail only when used."""
    metadata = config_class_metadata(cfg)
    if metadata is None:
        return
    from ..engine.class_names import named_classes

    sem = cfg.MODEL.SEM_SEG_HEAD
    predicted = named_classes(cfg)
    names = len(metadata["class_names"])
    if names != predicted:
        sets = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        raise ValueError(
            f"{config_file}: its data set {sets[0]} has {names} classes but the model predicts "
            f"{predicted} (MODEL.SEM_SEG_HEAD.NUM_CLASSES {sem.NUM_CLASSES}"
            f"{', VOID_CLASS ' + str(sem.VOID_CLASS) if sem.VOID_CLASS >= 0 else ''}): the "
            "converted file would name classes its head does not predict; use the config of the "
            "checkpoint's data set (configs/cityscapes/... or configs/coco/...)"
        )
