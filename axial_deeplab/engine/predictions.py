"""Saving evaluation predictions in the official formats (``TEST.SAVE_PREDICTIONS``).

Under ``folder`` (``OUTPUT_DIR/inference`` for ``--eval-only``):

- ``panoptic/<image name>.png`` and ``panoptic.json``: COCO panoptic results whose
  ``category_id`` are the data set's own category ids (the ids of its annotation file, not train
  ids), so that panopticapi's ``pq_compute``, cityscapesscripts' ``evalPanopticSemanticLabeling``
  and ``python -m axial_deeplab.evaluation.panoptic`` read them against the ground-truth JSON;
- for Cityscapes-format data sets, also ``cityscapes_semantic/<image stem>.png`` (label ids, for
  ``evalPixelLevelSemanticLabeling``) and ``cityscapes_instances/<image stem>.txt`` with its masks
  in ``cityscapes_instances/masks/`` (for ``evalInstanceLevelSemanticLabeling``).

``<image name>`` is the image's path without extension relative to the data set's image folder
(``a/img.jpg`` -> ``a/img``), so that images of the same name in different folders keep apart.
Predictions are saved at the size of the image file (nearest-neighbour resizing when evaluation
ran at another size). Every file is written atomically; with several ranks each writes its images
and the main process writes the JSON.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..data.catalog import DatasetMetadata
from ..data.cityscapes_panoptic import CITYSCAPES_CLASSES
from ..evaluation.writers import (
    CocoPanopticWriter,
    write_cityscapes_instances,
    write_cityscapes_semantic,
)
from ..modeling.postprocessing import (
    class_probabilities,
    drop_void_channel,
    get_instances,
    semantic_prediction,
)
from .distributed import all_gather_objects, is_main_process
from .evaluate import labels_to_segments, resize_nearest

PANOPTIC_JSON = "panoptic.json"


class PredictionSaver:
    """Receives each evaluated image's prediction and writes it (see the module docstring)."""

    def __init__(self, folder: str, metadata: DatasetMetadata, *, void_class: int = -1) -> None:
        self.folder, self.metadata = folder, metadata
        self.void_class = void_class  # the model's void output channel (-1: none)
        categories = [
            {k: c[k] for k in ("id", "name", "isthing", "color")} for c in metadata.categories
        ]
        self.coco = CocoPanopticWriter(
            os.path.join(folder, "panoptic"), os.path.join(folder, PANOPTIC_JSON), categories
        )
        self.cityscapes = metadata.evaluator_type.startswith("cityscapes")
        self.train_to_label_id = {train: label for _, label, train, *_ in CITYSCAPES_CLASSES}

    def add(self, record: dict, labels: np.ndarray, outputs: dict[str, torch.Tensor]) -> None:
        """One image: ``record`` (``file_name``, ``image_id``, ``height``, ``width``), its panoptic
        ``labels`` ``[H, W]`` (``class * label_divisor + instance``, negative = void) and the raw
        ``outputs`` it came from (``semantic`` ``[K, H, W]``, ``center`` ``[1, H, W]``)."""
        meta = self.metadata
        stem = self.output_stem(str(record["file_name"]))
        size = (int(record["height"]), int(record["width"]))
        full = resize_nearest(labels, size)
        ids, segments = labels_to_segments(
            full, label_divisor=meta.label_divisor, thing_ids=meta.thing_train_ids
        )
        to_dataset = meta.train_id_to_dataset_id
        for segment in segments:
            segment["category_id"] = to_dataset[segment["category_id"]]
        os.makedirs(os.path.dirname(os.path.join(self.coco.folder, f"{stem}.png")), exist_ok=True)
        self.coco.add(record["image_id"], f"{stem}.png", ids, segments)
        if self.cityscapes:  # Cityscapes names are unique (city_sequence_frame) and flat
            self._add_cityscapes(os.path.basename(stem), size, labels, outputs)

    def output_stem(self, file_name: str) -> str:
        """``file_name`` without extension, relative to the data set's image folder (``/``
        separated), so that ``a/img.jpg`` and ``b/img.jpg`` keep apart; the base name when the
        file lies elsewhere."""
        root = self.metadata.image_dir
        rel = os.path.relpath(os.path.abspath(file_name), os.path.abspath(root)) if root else ""
        if not rel or rel.startswith(os.pardir):
            rel = os.path.basename(file_name)
        return os.path.splitext(rel)[0].replace(os.sep, "/")

    def _add_cityscapes(
        self, stem: str, size: tuple[int, int], labels: np.ndarray, outputs: dict
    ) -> None:
        void = self.void_class
        semantic = semantic_prediction(outputs["semantic"], void_class=void).cpu().numpy()
        semantic = np.where(semantic < 0, 255, semantic)  # [H, W] train ids, void -> unlabeled
        folder = os.path.join(self.folder, "cityscapes_semantic")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{stem}.png")
        write_cityscapes_semantic(path, resize_nearest(semantic, size), self.train_to_label_id)
        instances = get_instances(
            torch.from_numpy(labels),
            drop_void_channel(class_probabilities(outputs), void_class=void).cpu(),
            outputs["center"].float().cpu(),
            thing_ids=self.metadata.thing_train_ids,
            label_divisor=self.metadata.label_divisor,
        )
        label_ids = [self.train_to_label_id[int(c)] for c in instances["classes"]]
        write_cityscapes_instances(
            os.path.join(self.folder, "cityscapes_instances"),
            stem,
            resize_nearest(instances["masks"].numpy(), size),
            np.array(label_ids, np.int64),
            instances["scores"].numpy(),
        )

    def close(self) -> None:
        """Gather every rank's annotations (rank order = data set order) and write the JSON."""
        shards = all_gather_objects(self.coco.annotations)
        if is_main_process():
            self.coco.annotations = [ann for shard in shards for ann in shard]
            self.coco.close()
