"""Writing predictions in the official formats: COCO panoptic (PNGs + one JSON) and Cityscapes
(semantic label-id PNGs; instance masks listed in a text file). Every file is written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping

import cv2
import numpy as np

from axial_deeplab.data.panoptic_io import write_panoptic_png
from axial_deeplab.evaluation.panoptic_files import write_json_atomic


class CocoPanopticWriter:
    """Collects predictions as COCO panoptic results: ``folder/<file_name>`` PNGs while adding,
    then ``json_path`` (``annotations`` and ``categories``) on :meth:`close`."""

    def __init__(self, folder: str, json_path: str, categories: list[dict]):
        self.folder, self.json_path, self.categories = folder, json_path, categories
        self.annotations: list[dict] = []
        os.makedirs(folder, exist_ok=True)

    def add(self, image_id, file_name: str, ids: np.ndarray, segments_info: list[dict]) -> None:
        """One image: ``[H, W]`` segment ids (< 2^24, 0 = VOID) and its ``segments_info``."""
        write_panoptic_png(os.path.join(self.folder, file_name), ids)
        self.annotations.append(
            {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}
        )

    def close(self) -> None:
        write_json_atomic(
            self.json_path, {"annotations": self.annotations, "categories": self.categories}
        )


def _write_png(path: str, image: np.ndarray) -> None:
    tmp = f"{path}.tmp.png"
    if not cv2.imwrite(tmp, image):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)


def write_cityscapes_semantic(
    path: str, train_ids: np.ndarray, train_to_label_id: Mapping[int, int]
) -> None:
    """A ``[H, W]`` train-id map as the uint8 label-id PNG that Cityscapes' pixel-level
    evaluation reads (``trainId -> id`` from ``cityscapesscripts.helpers.labels``)."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label_id in train_to_label_id.items():
        lut[train_id] = label_id
    if train_ids.min() < 0 or train_ids.max() > 255:
        raise ValueError(f"{path}: train ids must lie in [0, 255]")
    _write_png(path, lut[train_ids.astype(np.int64)])


def write_cityscapes_instances(
    folder: str, stem: str, masks: np.ndarray, label_ids: np.ndarray, scores: np.ndarray
) -> str:
    """Instances in Cityscapes' instance-level format: one binary PNG per mask and
    ``<stem>.txt`` with lines ``<mask png relative to folder> <label id> <score>``.

    ``masks`` ``[N, H, W]`` bool, ``label_ids`` ``[N]`` Cityscapes label ids (e.g. 26 car),
    ``scores`` ``[N]``. Returns the text file's path.
    """
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    lines = []
    for i, (mask, label_id, score) in enumerate(zip(masks, label_ids, scores)):
        name = os.path.join("masks", f"{stem}_{i}.png")
        _write_png(os.path.join(folder, name), mask.astype(np.uint8) * 255)
        lines.append(f"{name} {int(label_id)} {float(score):.6f}\n")
    path = os.path.join(folder, f"{stem}.txt")
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(f"{path}.tmp", path)
    return path
