"""Named data sets: a :class:`DatasetCatalog` the caller owns, and the built-in detectron2 layout.

A data set is a list of *records*, one per image (detectron2's standard dicts)::

    {"file_name": image path, "pan_seg_file_name": panoptic PNG path, "image_id": id,
     "height": int | None, "width": int | None,
     "segments_info": [{"id": segment id in the PNG, "category_id": contiguous train id,
                        "iscrowd": 0 | 1, "isthing": 0 | 1, "dataset_category_id": id in the file}]}

plus a :class:`DatasetMetadata` that maps the file's category ids to contiguous train ids
``0..num_classes-1``. There is no module-level registry: :func:`builtin_catalog` returns a new
catalog holding the built-in names, and the caller adds its own data sets to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

Records = list[dict]
Loader = Callable[[], tuple[Records, "DatasetMetadata"]]

DATASET_ROOT_ENV = "DETECTRON2_DATASETS"  # same variable as detectron2, so one layout serves both


@dataclass(frozen=True)
class DatasetMetadata:
    """Categories and evaluation facts of one data set.

    ``categories``: one dict per class in train-id order, with ``id`` (the category id used in
    the annotation files), ``train_id`` (its position), ``name``, ``isthing`` and ``color``.
    """

    name: str
    categories: tuple[dict, ...]
    ignore_label: int = 255
    label_divisor: int = 1000
    evaluator_type: str = "coco_panoptic_seg"
    image_dir: str = ""
    panoptic_dir: str = ""
    panoptic_json: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def thing_train_ids(self) -> tuple[int, ...]:
        return tuple(c["train_id"] for c in self.categories if c["isthing"])

    @property
    def stuff_train_ids(self) -> tuple[int, ...]:
        return tuple(c["train_id"] for c in self.categories if not c["isthing"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.categories)

    @property
    def train_id_categories(self) -> list[dict]:
        """The categories as the evaluators take them: ``id`` (train id), ``name``, ``isthing``."""
        return [
            {"id": c["train_id"], "name": c["name"], "isthing": int(c["isthing"])}
            for c in self.categories
        ]

    @property
    def dataset_id_to_train_id(self) -> dict[int, int]:
        return {int(c["id"]): int(c["train_id"]) for c in self.categories}

    @property
    def train_id_to_dataset_id(self) -> dict[int, int]:
        return {int(c["train_id"]): int(c["id"]) for c in self.categories}


def fallback_color(train_id: int) -> tuple[int, int, int]:
    """The colour of a class its data set gives none: spread over RGB by train id, and not black
    (the pictures draw void black) below train id 255."""
    i = train_id + 1
    return ((37 * i) % 256, (91 * i) % 256, (173 * i) % 256)


class DatasetCatalog:
    """Name -> loader of ``(records, metadata)``. Loading happens on :meth:`get`, not on register."""

    def __init__(self) -> None:
        self._loaders: dict[str, Loader] = {}

    def register(self, name: str, loader: Loader) -> None:
        """Add a data set; ``loader()`` returns ``(records, metadata)``. Names are unique."""
        if not name or not isinstance(name, str):
            raise ValueError(f"data set name must be a non-empty string, got {name!r}")
        if name in self._loaders:
            raise ValueError(f"data set '{name}' is already registered")
        self._loaders[name] = loader

    def register_coco_panoptic(
        self, name: str, *, json_file: str, png_dir: str, image_dir: str, check_files: bool = True
    ) -> None:
        """Register any COCO-panoptic-format data set: JSON + folder of PNGs + folder of images."""
        from .coco_panoptic import load_coco_panoptic

        self.register(
            name,
            lambda: load_coco_panoptic(
                json_file, png_dir, image_dir, name=name, check_files=check_files
            ),
        )

    def register_cityscapes_panoptic(
        self,
        name: str,
        *,
        image_dir: str,
        gt_dir: str,
        gt_json: str,
        use_train_id: bool | None = None,
        check_files: bool = True,
    ) -> None:
        """Register a Cityscapes-format panoptic split (``createPanopticImgs`` output)."""
        from .cityscapes_panoptic import load_cityscapes_panoptic

        self.register(
            name,
            lambda: load_cityscapes_panoptic(
                image_dir,
                gt_dir,
                gt_json,
                name=name,
                use_train_id=use_train_id,
                check_files=check_files,
            ),
        )

    def get(self, name: str) -> tuple[Records, DatasetMetadata]:
        """Load the data set ``name``: its records and metadata."""
        if name not in self._loaders:
            raise KeyError(f"data set '{name}' is not registered; registered: {self.names()}")
        return self._loaders[name]()

    def names(self) -> list[str]:
        return sorted(self._loaders)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders


def dataset_root(root: str | None = None) -> str:
    """``root`` if given, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return root or os.environ.get(DATASET_ROOT_ENV) or "datasets"


def _first_existing(paths: list[str]) -> str:
    """The first path that exists, else the first one (whose absence the loader reports)."""
    return next((p for p in paths if os.path.exists(p)), paths[0])


def builtin_catalog(root: str | None = None) -> DatasetCatalog:
    """A new catalog with the detectron2-layout data sets under :func:`dataset_root`.

    - ``coco_2017_{train,val}_panoptic``: ``coco/annotations/panoptic_{split}2017.json``, PNGs in
      ``coco/panoptic_{split}2017/`` (detectron2) or ``coco/annotations/panoptic_{split}2017/``
      (where the official zip unpacks), images in ``coco/{split}2017/``.
    - ``cityscapes_fine_panoptic_{train,val}``: images ``cityscapes/leftImg8bit/{split}/{city}/``,
      ``cityscapes/gtFine/cityscapes_panoptic_{split}.json`` and PNG folder (label-id category
      ids), or the ``_trainId`` variant of both (``createPanopticImgs --use-train-id``).
    """
    base = dataset_root(root)
    catalog = DatasetCatalog()
    for split in ("train", "val"):
        coco = os.path.join(base, "coco")
        json_file = os.path.join(coco, "annotations", f"panoptic_{split}2017.json")
        png_dir = _first_existing(
            [
                os.path.join(coco, f"panoptic_{split}2017"),
                os.path.join(coco, "annotations", f"panoptic_{split}2017"),
            ]
        )
        catalog.register_coco_panoptic(
            f"coco_2017_{split}_panoptic",
            json_file=json_file,
            png_dir=png_dir,
            image_dir=os.path.join(coco, f"{split}2017"),
        )
        gt = os.path.join(base, "cityscapes", "gtFine")
        # by the JSON, which the conversion writes last: a run stopped half-way leaves a PNG
        # folder without it, and the other variant, if complete, is the one to read
        stem = _first_existing(
            [
                os.path.join(gt, f"cityscapes_panoptic_{split}.json"),
                os.path.join(gt, f"cityscapes_panoptic_{split}_trainId.json"),
            ]
        ).removesuffix(".json")
        catalog.register_cityscapes_panoptic(
            f"cityscapes_fine_panoptic_{split}",
            image_dir=os.path.join(base, "cityscapes", "leftImg8bit", split),
            gt_dir=stem,
            gt_json=f"{stem}.json",
        )
    return catalog


def register_custom(catalog: DatasetCatalog, entries: list[dict]) -> None:
    """Register ``DATASETS.CUSTOM`` entries: dicts with NAME, JSON_FILE, PNG_DIR, IMAGE_DIR.

    An optional ``FORMAT`` is ``"coco_panoptic"`` (default) or ``"cityscapes_panoptic"`` (then
    JSON_FILE / PNG_DIR are the Cityscapes ``gt_json`` / ``gt_dir``).
    """
    required = ("NAME", "JSON_FILE", "PNG_DIR", "IMAGE_DIR")
    for i, entry in enumerate(entries):
        entry = {str(k).upper(): v for k, v in dict(entry).items()}
        missing = [k for k in required if not entry.get(k)]
        if missing:
            raise ValueError(f"DATASETS.CUSTOM[{i}] ({entry}): missing {missing}")
        unknown = sorted(set(entry) - set(required) - {"FORMAT"})
        if unknown:
            raise ValueError(
                f"DATASETS.CUSTOM[{i}]: unknown keys {unknown}; allowed {[*required, 'FORMAT']}"
            )
        fmt = entry.get("FORMAT", "coco_panoptic")
        if fmt == "coco_panoptic":
            catalog.register_coco_panoptic(
                entry["NAME"],
                json_file=entry["JSON_FILE"],
                png_dir=entry["PNG_DIR"],
                image_dir=entry["IMAGE_DIR"],
            )
        elif fmt == "cityscapes_panoptic":
            catalog.register_cityscapes_panoptic(
                entry["NAME"],
                image_dir=entry["IMAGE_DIR"],
                gt_dir=entry["PNG_DIR"],
                gt_json=entry["JSON_FILE"],
            )
        else:
            raise ValueError(
                f"DATASETS.CUSTOM[{i}] FORMAT={fmt!r}: expected coco_panoptic or cityscapes_panoptic"
            )
