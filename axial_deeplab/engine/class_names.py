"""Class names and thing ids for inference: from ``--class-names`` (a JSON of categories or a
text file of names), the metadata stored in a checkpoint, the config's data set, or generic
names (``choose_metadata`` decides, in that order)."""

from __future__ import annotations

import argparse
import json
import os

from .inference import InferenceMetadata, as_metadata


def load_class_names(path: str, thing_ids: list[int] | None) -> InferenceMetadata:
    """Metadata from a JSON file (a list of COCO-style categories ``id, name, isthing[, color]``,
    a COCO panoptic JSON with ``categories``, or ``{"class_names": [...], "thing_ids": [...]}``)
    or from a text file with one class name per line (things given by ``thing_ids``)."""
    from ..data.coco_panoptic import coco_metadata

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--class-names file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.lower().endswith(".json"):
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return InferenceMetadata(tuple(names), tuple(thing_ids or ()))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--class-names {path}: not valid JSON: {exc}") from None
    if isinstance(data, dict) and "class_names" in data:
        return as_metadata(data)
    categories = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(categories, list):
        raise ValueError(
            f"--class-names {path}: expected a categories list, a JSON with 'categories' or "
            f"'class_names', got {type(data).__name__}"
        )
    return InferenceMetadata.from_dataset(coco_metadata(categories, name=path, source=path))


def named_classes(cfg) -> int:
    """The classes the model's outputs name: ``NUM_CLASSES``, less a void output channel
    (``MODEL.SEM_SEG_HEAD.VOID_CLASS``), which is no class."""
    sem = cfg.MODEL.SEM_SEG_HEAD
    return sem.NUM_CLASSES - int(sem.VOID_CLASS >= 0)


def metadata_from_config(cfg) -> tuple[InferenceMetadata, str]:
    """Metadata of the config's first data set (``DATASETS.TEST``, else ``TRAIN``) and where it
    came from: the built-in table for the built-in Cityscapes and COCO splits, else the data set's
    files; generic names when there is none or it cannot be loaded."""
    from ..data.build import build_catalog
    from ..data.catalog import builtin_catalog
    from ..data.metadata import metadata_for_dataset

    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    if names and names[0] in builtin_catalog():
        return as_metadata(metadata_for_dataset(names[0])), f"data set {names[0]}"
    if names:
        try:
            _, meta = build_catalog(cfg).get(names[0])
            return InferenceMetadata.from_dataset(meta), f"data set {names[0]}"
        except (KeyError, ValueError, OSError) as exc:
            print(f"notice: cannot load data set {names[0]} for class names ({exc})")
    num_classes = named_classes(cfg)
    print(f"notice: generic class names class_0..class_{num_classes - 1}, no thing classes "
          "(pass --class-names for names and instances)")  # fmt: skip
    return InferenceMetadata.generic(num_classes), "generic names"


def choose_metadata(
    args: argparse.Namespace, cfg, stored: dict | None
) -> tuple[InferenceMetadata, str]:
    """Class metadata and its origin: ``--class-names``, else the metadata stored in the
    checkpoint, else the config's data set, else generic names."""
    if args.class_names:
        metadata = load_class_names(args.class_names, args.thing_ids)
        if args.thing_ids is None and not args.class_names.lower().endswith(".json"):
            metadata = _things_for_names(metadata, args.class_names, stored, args.weights)
        return metadata, args.class_names
    if stored is not None:
        return as_metadata(stored), f"metadata stored in {args.weights}"
    return metadata_from_config(cfg)


def _things_for_names(
    metadata: InferenceMetadata, path: str, stored: dict | None, weights: str
) -> InferenceMetadata:
    """Thing ids for a text file of names given without ``--thing-ids``: the checkpoint's, when
    it stores as many classes (renaming classes should not turn its things into stuff); else
    none, said aloud (every class is then stuff: instances are not separated)."""
    from dataclasses import replace

    if stored is not None and len(stored.get("class_names", ())) == len(metadata.class_names):
        things = tuple(int(t) for t in stored.get("thing_ids", ()))
        shown = ", ".join(f"{t} ({metadata.class_names[t]})" for t in things[:8])
        more = ", ..." if len(things) > 8 else ""
        print(f"thing classes: {shown or 'none'}{more}, as stored in {weights} (--thing-ids to "
              "choose others)")  # fmt: skip
        return replace(metadata, thing_ids=things)
    print(f"notice: {path} names the classes but not which are things: every class is stuff and "
          "instances are not separated; pass --thing-ids with the thing train ids")  # fmt: skip
    return metadata
