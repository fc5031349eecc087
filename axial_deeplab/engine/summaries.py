"""Pictures of a training batch for TensorBoard: input, predictions and their targets.

The trainer calls a ``visualize(batch, outputs)`` callable every ``VIS_PERIOD`` iterations on the
main process; :class:`BatchPictures` is the Panoptic-DeepLab one. It draws one image of the batch
with the helpers of :mod:`axial_deeplab.utils.visualize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.catalog import DatasetMetadata
from ..utils.visualize import heatmap, offset_field, panoptic_overlay, semantic_map
from .evaluate import VOID_LABEL, PostProcessing, panoptic_prediction


@dataclass(frozen=True)
class BatchPictures:
    """``(batch, outputs) -> {tag: [H, W, 3] uint8 RGB}`` for image ``index`` of the batch.

    ``batch``: the training batch (``image`` ``[N, 3, H, W]`` 0-255, ``sem_seg`` ``[N, H, W]``,
    ``center`` ``[N, 1, H, W]``); ``outputs``: the model's raw outputs on it (``semantic``
    ``[N, K, H, W]`` logits, ``center`` ``[N, 1, H, W]``, ``offset`` ``[N, 2, H, W]``).
    Tags: ``input``, ``panoptic`` (post-processed prediction), ``semantic`` (prediction) and
    ``semantic_gt``, ``center`` (prediction, detected centres marked) and ``center_gt``,
    ``offset`` (prediction).
    """

    metadata: DatasetMetadata
    settings: PostProcessing
    index: int = 0
    prefix: str = "train_vis/"

    def __call__(self, batch: dict, outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        i, meta = self.index, self.metadata
        one = {k: v[i].detach().float() for k, v in outputs.items()}  # [C, H, W] each
        labels, centers = panoptic_prediction(
            one, self.settings, thing_ids=meta.thing_train_ids, label_divisor=meta.label_divisor
        )
        image = batch["image"][i].permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy()  # [H, W, 3]
        colors = np.array([c["color"] for c in meta.categories], np.uint8)
        pictures = {
            "input": image,
            "panoptic": panoptic_overlay(
                image,
                labels.cpu().numpy(),
                label_divisor=meta.label_divisor,
                class_names=meta.class_names,
                class_colors=colors,
                void_label=VOID_LABEL,
            ),
            "semantic": semantic_map(one["semantic"].argmax(0).cpu().numpy(), len(colors), colors),
            "center": heatmap(one["center"][0].cpu().numpy(), centers.cpu().numpy()),
            "offset": offset_field(one["offset"].cpu().numpy()),
        }
        if "sem_seg" in batch:
            gt = batch["sem_seg"][i].cpu().numpy()
            pictures["semantic_gt"] = semantic_map(gt, len(colors), colors)
        if "center" in batch:
            pictures["center_gt"] = heatmap(batch["center"][i][0].float().cpu().numpy())
        return {self.prefix + tag: picture for tag, picture in pictures.items()}
