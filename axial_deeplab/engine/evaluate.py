"""Evaluate a Panoptic-DeepLab model on a data set: post-processing, PQ and mIoU, across ranks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.catalog import DatasetMetadata
from ..evaluation.distributed import gather
from ..evaluation.panoptic import PanopticEvaluator
from ..evaluation.semantic import SemanticEvaluator
from ..modeling.postprocessing import get_panoptic_segmentation
from .distributed import is_main_process

VOID_LABEL = -1


@dataclass(frozen=True)
class PostProcessing:
    """Settings of :func:`get_panoptic_segmentation` (``MODEL.PANOPTIC_DEEPLAB.*``)."""

    stuff_area: int = 2048
    threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200

    @classmethod
    def from_config(cls, cfg) -> PostProcessing:
        pd = cfg.MODEL.PANOPTIC_DEEPLAB
        return cls(pd.STUFF_AREA, pd.CENTER_THRESHOLD, pd.NMS_KERNEL, pd.TOP_K_INSTANCE)


def panoptic_prediction(
    outputs: dict[str, torch.Tensor],
    settings: PostProcessing,
    *,
    thing_ids: Iterable[int],
    label_divisor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's raw outputs (``[K, H, W]``, ``[1, H, W]``, ``[2, H, W]``) to ``[H, W]`` labels
    ``class * label_divisor + instance`` (``VOID_LABEL`` where void) and centers ``[M, 2] (y, x)``.
    """
    semantic = outputs["semantic"].argmax(0, keepdim=True)  # [1, H, W]
    panoptic, centers = get_panoptic_segmentation(
        semantic,
        outputs["center"],
        outputs["offset"],
        thing_ids=thing_ids,
        label_divisor=label_divisor,
        stuff_area=settings.stuff_area,
        void_label=VOID_LABEL,
        threshold=settings.threshold,
        nms_kernel=settings.nms_kernel,
        top_k=settings.top_k,
    )
    return panoptic[0], centers


def labels_to_segments(
    labels: np.ndarray, *, label_divisor: int, thing_ids: Iterable[int]
) -> tuple[np.ndarray, list[dict]]:
    """``[H, W]`` labels (``class * label_divisor + instance``, negative = void) to a segment-id
    map (``0`` = void, segments numbered from 1) and its ``segments_info`` (train-id categories)."""
    things = set(int(t) for t in thing_ids)
    values, inverse, areas = np.unique(labels, return_inverse=True, return_counts=True)
    keep = values >= 0
    new_ids = np.zeros(len(values), np.int64)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    segments = [
        {
            "id": int(new_ids[i]),
            "category_id": int(values[i]) // label_divisor,
            "isthing": int(int(values[i]) // label_divisor in things),
            "iscrowd": 0,
            "area": int(areas[i]),
        }
        for i in np.flatnonzero(keep)
    ]
    return new_ids[inverse.reshape(labels.shape)], segments


def semantic_labels(
    panoptic_ids: np.ndarray, segments_info: list[dict], ignore_label: int
) -> np.ndarray:
    """``[H, W]`` train-id semantic map of a ground-truth segment-id map (void -> ignore)."""
    lut_ids = np.array([0] + [s["id"] for s in segments_info], np.int64)
    lut_cls = np.array([ignore_label] + [s["category_id"] for s in segments_info], np.int64)
    order = np.argsort(lut_ids)
    pos = np.searchsorted(lut_ids[order], panoptic_ids)
    pos = np.clip(pos, 0, len(order) - 1)
    found = lut_ids[order][pos] == panoptic_ids
    return np.where(found, lut_cls[order][pos], ignore_label)


def evaluate_panoptic(
    model: nn.Module,
    loader: Iterable[dict],
    metadata: DatasetMetadata,
    settings: PostProcessing,
    *,
    device: torch.device,
) -> dict[str, float]:
    """PQ/SQ/RQ (All, Things, Stuff) and mIoU of ``model`` on ``loader`` (this rank's shard),
    gathered over ranks. Values in percent, as the official tools print them."""
    categories = [
        {"id": c["train_id"], "name": c["name"], "isthing": int(c["isthing"])}
        for c in metadata.categories
    ]
    pq = PanopticEvaluator(categories, source=f"metadata of {metadata.name}")
    miou = SemanticEvaluator(
        metadata.num_classes, ignore_label=metadata.ignore_label, class_names=metadata.class_names
    )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="eval", unit="img", disable=not is_main_process()):
            outputs = model(batch["image"].to(device).float())
            for i in range(batch["image"].shape[0]):
                one = {k: v[i] for k, v in outputs.items()}
                labels, _ = panoptic_prediction(
                    one, settings, thing_ids=metadata.thing_train_ids,
                    label_divisor=metadata.label_divisor,
                )  # fmt: skip
                labels = labels.cpu().numpy()
                pred_ids, pred_segments = labels_to_segments(
                    labels, label_divisor=metadata.label_divisor,
                    thing_ids=metadata.thing_train_ids,
                )  # fmt: skip
                gt_ids = batch["panoptic"][i].numpy()
                gt_segments = batch["segments_info"][i]
                name = str(batch["file_name"][i])
                pq.process(gt_ids, gt_segments, pred_ids, pred_segments, name=name)
                gt_sem = semantic_labels(gt_ids, gt_segments, metadata.ignore_label)
                miou.process(gt_sem, one["semantic"].argmax(0).cpu().numpy())
    model.train(was_training)
    pq_result, sem_result = gather(pq).evaluate(), gather(miou).evaluate()
    out = {}
    for group, prefix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            out[f"{metric.upper()}{prefix}"] = 100.0 * pq_result[group][metric]
    out["mIoU"] = 100.0 * sem_result["mIoU"]
    return out
