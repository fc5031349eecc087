"""Our data sets in detectron2's ``DatasetCatalog`` / ``MetadataCatalog``, and our mapper.

Our records already are detectron2's panoptic dicts (``file_name``, ``pan_seg_file_name``,
``image_id``, ``height``, ``width``, ``segments_info`` with contiguous ``category_id``,
``isthing``, ``iscrowd``), so registration only hands our loaders to detectron2 and writes the
metadata in detectron2's panoptic convention (that of its ``coco_2017_*_panoptic``):
``thing_classes`` and ``stuff_classes`` both list every class by contiguous id, and
``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id`` split the file ids
by kind. The metadata is written when a data set is loaded, as detectron2's COCO loaders do.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog

from axial_deeplab.data.build import build_catalog, build_test_transform, build_train_augmentation
from axial_deeplab.data.catalog import DatasetCatalog as NativeCatalog
from axial_deeplab.data.catalog import DatasetMetadata, fallback_color
from axial_deeplab.data.dataset import PanopticDataset, TargetGenerator, Transform
from axial_deeplab.engine.build import build_target_generator


def d2_metadata(meta: DatasetMetadata) -> dict:
    """detectron2 metadata fields of one of our data sets."""
    cats = sorted(meta.categories, key=lambda c: c["train_id"])
    return {
        "thing_classes": [c["name"] for c in cats],
        "stuff_classes": [c["name"] for c in cats],
        "thing_colors": [list(c["color"]) for c in cats],
        "stuff_colors": [list(c["color"]) for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: c["train_id"] for c in cats if c["isthing"]},
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: c["train_id"] for c in cats if not c["isthing"]
        },
        "ignore_label": meta.ignore_label,
        "label_divisor": meta.label_divisor,
        "evaluator_type": meta.evaluator_type,
        "image_root": meta.image_dir,
        "panoptic_root": meta.panoptic_dir,
        "panoptic_json": meta.panoptic_json,
    }


def native_metadata(name: str) -> DatasetMetadata:
    """Our metadata of any detectron2 panoptic data set ``name`` (loaded first if its metadata
    lacks the category maps, which our loaders and detectron2's write when loading)."""
    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        DatasetCatalog.get(name)
    if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        raise ValueError(
            f"detectron2 metadata of {name!r} has no thing/stuff_dataset_id_to_contiguous_id: "
            "not a panoptic data set"
        )
    things = dict(meta.thing_dataset_id_to_contiguous_id)
    ids = {**dict(getattr(meta, "stuff_dataset_id_to_contiguous_id", {})), **things}
    count = len(ids)
    names = next(
        (
            n
            for n in (meta.get("stuff_classes"), meta.get("thing_classes"))
            if n and len(n) == count
        ),
        [str(i) for i in range(count)],
    )
    colors = next(
        (c for c in (meta.get("stuff_colors"), meta.get("thing_colors")) if c and len(c) == count),
        [fallback_color(i) for i in range(count)],
    )
    categories = tuple(
        {
            "id": int(dataset_id),
            "train_id": int(train_id),
            "name": str(names[train_id]),
            "isthing": int(dataset_id in things),
            "color": tuple(colors[train_id]),
        }
        for dataset_id, train_id in sorted(ids.items(), key=lambda item: item[1])
    )
    return DatasetMetadata(
        name=name,
        categories=categories,
        ignore_label=int(meta.get("ignore_label", 255)),
        label_divisor=int(meta.get("label_divisor", 1000)),
        evaluator_type=str(meta.get("evaluator_type", "coco_panoptic_seg")),
        image_dir=str(meta.get("image_root", "")),
        panoptic_dir=str(meta.get("panoptic_root", "")),
        panoptic_json=str(meta.get("panoptic_json", "")),
    )


def _load(catalog: NativeCatalog, name: str) -> list[dict]:
    records, meta = catalog.get(name)
    MetadataCatalog.get(name).set(**d2_metadata(meta))
    return records


def register_catalog(catalog: NativeCatalog, names: Iterable[str] | None = None) -> list[str]:
    """Register the data sets ``names`` (default: all) of ``catalog`` with detectron2.

    A name detectron2 already knows (its built-in ``coco_2017_*_panoptic`` and
    ``cityscapes_fine_panoptic_*``, or an earlier registration) is replaced by ours: same files,
    our readers and checks. Returns the names registered.
    """
    names = list(catalog.names() if names is None else names)
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(_load, catalog, name))
    return names


def register_datasets(cfg, *, synthetic_dir: str | None = None) -> list[str]:
    """Register with detectron2 our built-in data sets (COCO panoptic, Cityscapes panoptic under
    ``DATASETS.ROOT``), the ``DATASETS.CUSTOM`` ones and the synthetic
    ``synthetic_{coco,cityscapes}_{train,val}`` written in ``synthetic_dir`` (default
    ``DATASETS.SYNTHETIC_DIR``). Returns the names."""
    return register_catalog(build_catalog(cfg, synthetic_dir=synthetic_dir))


class AxialDeepLabDatasetMapper:
    """detectron2 dataset dict -> model input, through our reader, checks, transform and targets.

    Returns the sample of :class:`axial_deeplab.data.dataset.PanopticDataset` (``image`` uint8
    ``[3, H, W]`` in ``image_format``, ``panoptic`` ``[H, W]``, ``segments_info``, the target
    maps such as ``sem_seg`` ``[H, W]`` when a target generator is given, and ``height`` /
    ``width`` of the file) plus ``pan_seg_file_name``.

    Randomness: each sample draws from a generator seeded by ``torch.initial_seed()`` of the
    process that maps it, which detectron2 sets per data-loader worker from ``SEED``.
    """

    @configurable
    def __init__(
        self,
        *,
        metadata: DatasetMetadata,
        transform: Transform,
        target_generator: TargetGenerator | None = None,
        image_format: str = "RGB",
        validate: bool = True,
    ) -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT: expected 'RGB' or 'BGR', got {image_format!r}")
        self.metadata = metadata
        self.transform = transform
        self.target_generator = target_generator
        self.image_format = image_format
        self.validate = validate
        self._rng: np.random.Generator | None = None
        self._rng_pid = -1

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: str | None = None) -> dict:
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        name = dataset_name or (names[0] if names else "")
        if not name:
            raise ValueError(f"DATASETS.{'TRAIN' if is_train else 'TEST'} is empty")
        metadata = native_metadata(name)
        return {
            "metadata": metadata,
            "transform": build_train_augmentation(cfg) if is_train else build_test_transform(cfg),
            "target_generator": (
                build_target_generator(cfg, metadata.thing_train_ids) if is_train else None
            ),
            "image_format": cfg.INPUT.FORMAT,
            "validate": cfg.DATALOADER.VALIDATE_SAMPLES,
        }

    def _seed(self) -> int:
        if self._rng is None or self._rng_pid != os.getpid():  # new worker process
            self._rng = np.random.default_rng(torch.initial_seed())
            self._rng_pid = os.getpid()
        return int(self._rng.integers(2**62))

    def __call__(self, dataset_dict: dict) -> dict:
        one = PanopticDataset(
            [dataset_dict],
            metadata=self.metadata,
            transform=self.transform,
            target_generator=self.target_generator,
            seed=self._seed(),
            validate=self.validate,
        )
        sample = one[0]
        if self.image_format == "BGR":
            sample["image"] = sample["image"].flip(0)
        sample["pan_seg_file_name"] = dataset_dict["pan_seg_file_name"]
        return sample
