"""Pictures of an evaluation (``--eval-only``, ``TEST.NUM_PICTURES``): for the first images of the
main process's shard, the input, the prediction beside the ground truth, the semantic map, the
centre heatmap and the offsets, with a legend, as ``tools/infer.py`` draws them.

Written to ``folder/<image stem>_vis.png`` (atomically), at the size the model saw the image."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..data.catalog import DatasetMetadata
from ..modeling.postprocessing import class_probabilities
from ..utils.atomic import write_rgb_png
from ..utils.visualize import compose
from .distributed import is_main_process
from .evaluate import ground_truth_labels
from .inference import InferenceMetadata, prediction_dict


class EvalPictureWriter:
    """A prediction sink of :func:`~.evaluate.evaluate_panoptic` that draws ``count`` images."""

    def __init__(
        self, folder: str, metadata: DatasetMetadata, count: int, *, void_class: int = -1
    ) -> None:
        self.folder, self.count = folder, count if is_main_process() else 0
        self.void_class = void_class  # the model's void output channel (-1: none)
        self.metadata = InferenceMetadata.from_dataset(metadata)
        self.written: list[str] = []

    def add(self, record: dict, labels: np.ndarray, outputs: dict[str, torch.Tensor]) -> None:
        """One image: ``record`` (``image`` ``[3, H, W]`` RGB, ``panoptic`` segment ids and
        ``segments_info``), its ``labels`` ``[H, W]`` and raw ``outputs`` (``semantic`` logits)
        with ``centers``."""
        from .infer_net import render

        if len(self.written) >= self.count:
            return
        image = record["image"].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).cpu().numpy()
        meta = self.metadata
        # Scores are means of class probabilities: the evaluation's outputs hold logits.
        raw = {**outputs, "semantic": class_probabilities(outputs)}
        prediction = prediction_dict(
            torch.from_numpy(labels), outputs["centers"], raw, meta, void_class=self.void_class
        )
        ids = np.asarray(record["panoptic"])
        truth = ground_truth_labels(ids, record["segments_info"], meta.label_divisor)
        pictures = render(image, prediction, meta, ground_truth=truth)
        panels = {k: v for k, v in pictures.items() if k != "legend"}
        stem = os.path.splitext(os.path.basename(str(record["file_name"])))[0]
        path = os.path.join(self.folder, f"{stem}_vis.png")
        os.makedirs(self.folder, exist_ok=True)
        write_rgb_png(path, compose(panels, pictures["legend"]))
        self.written.append(path)

    def close(self) -> None:
        if self.written:
            print(
                f"pictures of {len(self.written)} images (input, prediction beside ground truth, "
                f"semantic, centres, offsets) in {self.folder}"
            )
