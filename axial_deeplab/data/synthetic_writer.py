"""Write synthetic scenes (:mod:`.synthetic`) as COCO panoptic and Cityscapes panoptic data sets.

Layout under ``out_dir`` (PNG images, lossless, so that a seed always gives the same bytes)::

    coco/images/{split}/synth_{i:06d}.png          coco/panoptic/{split}/synth_{i:06d}.png
    coco/panoptic_{split}.json                      (categories: the 6 synthetic classes)
    cityscapes/leftImg8bit/{split}/synth/synth_{i:06d}_000019_leftImg8bit.png
    cityscapes/gtFine/cityscapes_panoptic_{split}/synth_{i:06d}_000019_gtFine_panoptic.png
    cityscapes/gtFine/cityscapes_panoptic_{split}.json   (label-id categories)

The Cityscapes part follows detectron2's layout, so ``builtin_catalog(out_dir)`` reads it as
``cityscapes_fine_panoptic_{split}``; there the synthetic classes stand in for Cityscapes classes
(``SYNTHETIC_CLASSES``). Segment ids (both formats, as ``createPanopticImgs`` makes them):
``category_id * 1000 + k`` for thing instances (``k = 0, 1, ...`` per class), ``category_id`` for
stuff and crowd regions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..utils.atomic import write_json, write_rgb_png
from .catalog import DatasetCatalog
from .panoptic_io import write_panoptic_png
from .synthetic import SYNTHETIC_CLASSES, Scene, synthetic_scene

FORMATS = ("coco", "cityscapes")
MIN_SCENE_SIZE = 16  # pixels, height and width: the smallest scene synthetic_scene draws


def coco_categories() -> list[dict]:
    return [
        {"id": coco_id, "name": name, "isthing": isthing, "color": list(color)}
        for name, isthing, coco_id, _, color in SYNTHETIC_CLASSES
    ]


def panoptic_ids(scene: Scene, category_ids: list[int]) -> tuple[np.ndarray, list[dict]]:
    """``[H, W]`` int64 segment ids and ``segments_info`` (area, bbox ``[x, y, w, h]``) of a scene
    whose class ``c`` has category id ``category_ids[c]``."""
    ids = np.zeros(len(scene.classes) + 1, dtype=np.int64)  # segment index -> segment id
    next_k: dict[int, int] = {}
    segments = []
    for s, (cls, crowd) in enumerate(zip(scene.classes, scene.crowd), start=1):
        cat = category_ids[cls]
        if SYNTHETIC_CLASSES[cls][1] and not crowd:
            ids[s] = cat * 1000 + next_k.get(cat, 0)
            next_k[cat] = next_k.get(cat, 0) + 1
        else:
            ids[s] = cat
        ys, xs = np.nonzero(scene.segments == s)
        bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        segments.append(
            {"id": int(ids[s]), "category_id": cat, "iscrowd": int(crowd), "area": len(ys),
             "bbox": bbox}
        )  # fmt: skip
    return ids[scene.segments], segments


def scene_seed(seed: int, split_index: int, index: int) -> np.random.SeedSequence:
    """The seed of scene ``index`` of the ``split_index``-th split: a pure function of the three."""
    return np.random.SeedSequence([seed, split_index, index])


def write_synthetic_dataset(
    out_dir: str,
    *,
    splits: Mapping[str, int] | None = None,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    formats: tuple[str, ...] = FORMATS,
    **scene_kwargs,
) -> dict[str, dict]:
    """Generate ``splits`` (name -> image count; default train 64, val 16) in ``formats``.

    Returns ``{format: {split: paths}}`` with the ``json_file``, ``png_dir`` and ``image_dir`` of
    each part. ``scene_kwargs`` go to :func:`.synthetic.synthetic_scene`.
    """
    splits = dict(splits or {"train": 64, "val": 16})
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; expected some of {FORMATS}")
    negative = {split: count for split, count in splits.items() if count < 0}
    if negative:
        raise ValueError(f"splits: image counts must be >= 0, got {negative}")
    paths: dict[str, dict] = {fmt: {} for fmt in formats}
    for split_index, (split, count) in enumerate(splits.items()):
        scenes = (
            synthetic_scene(np.random.default_rng(scene_seed(seed, split_index, i)), height, width,
                            **scene_kwargs)
            for i in range(count)
        )  # fmt: skip
        writers = {fmt: _WRITERS[fmt](out_dir, split) for fmt in formats}
        for i, scene in enumerate(scenes):
            for writer in writers.values():
                writer.add(i, scene)
        for fmt, writer in writers.items():
            paths[fmt][split] = writer.finish()
    return paths


class _CocoWriter:
    def __init__(self, out_dir: str, split: str) -> None:
        root = os.path.join(out_dir, "coco")
        self.json_file = os.path.join(root, f"panoptic_{split}.json")
        self.png_dir = os.path.join(root, "panoptic", split)
        self.image_dir = os.path.join(root, "images", split)
        for d in (self.png_dir, self.image_dir):
            os.makedirs(d, exist_ok=True)
        self.cat_ids = [c[2] for c in SYNTHETIC_CLASSES]
        self.images, self.annotations = [], []

    def add(self, index: int, scene: Scene) -> None:
        name = f"synth_{index:06d}.png"
        ids, segments = panoptic_ids(scene, self.cat_ids)
        write_rgb_png(os.path.join(self.image_dir, name), scene.image)
        write_panoptic_png(os.path.join(self.png_dir, name), ids)
        height, width = ids.shape
        self.images.append({"id": index, "file_name": name, "height": height, "width": width})
        self.annotations.append({"image_id": index, "file_name": name, "segments_info": segments})

    def finish(self) -> dict:
        data = {
            "info": {"description": "axial-deeplab synthetic panoptic scenes"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": coco_categories(),
        }
        write_json(self.json_file, data)
        return {"json_file": self.json_file, "png_dir": self.png_dir, "image_dir": self.image_dir}


class _CityscapesWriter:
    def __init__(self, out_dir: str, split: str) -> None:
        root = os.path.join(out_dir, "cityscapes")
        self.image_dir = os.path.join(root, "leftImg8bit", split)
        self.png_dir = os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}")
        self.json_file = f"{self.png_dir}.json"
        os.makedirs(os.path.join(self.image_dir, "synth"), exist_ok=True)
        os.makedirs(self.png_dir, exist_ok=True)
        self.cat_ids = [c[3] for c in SYNTHETIC_CLASSES]
        self.images, self.annotations = [], []

    def add(self, index: int, scene: Scene) -> None:
        stem = f"synth_{index:06d}_000019"
        ids, segments = panoptic_ids(scene, self.cat_ids)
        write_rgb_png(os.path.join(self.image_dir, "synth", f"{stem}_leftImg8bit.png"), scene.image)
        png_name = f"{stem}_gtFine_panoptic.png"
        write_panoptic_png(os.path.join(self.png_dir, png_name), ids)
        height, width = ids.shape
        self.images.append({"id": stem, "file_name": f"{stem}_leftImg8bit.png",
                            "height": height, "width": width})  # fmt: skip
        self.annotations.append(
            {"image_id": stem, "file_name": png_name, "segments_info": segments}
        )

    def finish(self) -> dict:
        from .cityscapes_panoptic import CITYSCAPES_CLASSES

        categories = [
            {"id": label_id, "name": name, "isthing": isthing, "color": list(color)}
            for name, label_id, _, isthing, color in CITYSCAPES_CLASSES
        ]
        data = {"images": self.images, "annotations": self.annotations, "categories": categories}
        write_json(self.json_file, data)
        return {"json_file": self.json_file, "png_dir": self.png_dir, "image_dir": self.image_dir}


_WRITERS = {"coco": _CocoWriter, "cityscapes": _CityscapesWriter}


def register_synthetic(catalog: DatasetCatalog, out_dir: str, splits=("train", "val")) -> None:
    """Register ``synthetic_coco_{split}`` and ``synthetic_cityscapes_{split}`` found in ``out_dir``."""
    for split in splits:
        coco = os.path.join(out_dir, "coco")
        catalog.register_coco_panoptic(
            f"synthetic_coco_{split}",
            json_file=os.path.join(coco, f"panoptic_{split}.json"),
            png_dir=os.path.join(coco, "panoptic", split),
            image_dir=os.path.join(coco, "images", split),
        )
        gt = os.path.join(out_dir, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}")
        catalog.register_cityscapes_panoptic(
            f"synthetic_cityscapes_{split}",
            image_dir=os.path.join(out_dir, "cityscapes", "leftImg8bit", split),
            gt_dir=gt,
            gt_json=f"{gt}.json",
            use_train_id=False,
        )
