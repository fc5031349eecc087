"""Our evaluators as detectron2 ``DatasetEvaluator`` s (PQ, mIoU, mask AP).

They read the model outputs of :class:`~axial_deeplab.d2.meta_arch.AxialDeepLab` (``panoptic_seg``
as ``(labels, None)`` with ``class * label_divisor + instance`` labels, or ``(ids, segments_info)``
with train-id categories; ``sem_seg`` logits; ``instances``) and the ground truth of the input
dicts (``panoptic`` from our mapper when it has the prediction's size, else the PNG
``pan_seg_file_name``; ``segments_info`` with train-id categories). The numbers are those of the
native evaluation (``axial_deeplab.engine.evaluate.evaluate_panoptic``), in percent; states are
merged across processes, results returned on the main process (``{}`` elsewhere), as detectron2's
evaluators do.
"""

from __future__ import annotations

import numpy as np
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from axial_deeplab.data.catalog import DatasetMetadata
from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.engine.evaluate import labels_to_segments, pq_percent, semantic_labels
from axial_deeplab.evaluation.distributed import gather
from axial_deeplab.evaluation.instance_ap import InstanceAPEvaluator
from axial_deeplab.evaluation.panoptic import PanopticEvaluator
from axial_deeplab.evaluation.semantic import SemanticEvaluator

from .data import native_metadata


def ground_truth(inputs: dict, shape: tuple[int, ...]) -> tuple[np.ndarray, list[dict]]:
    """``[H, W]`` gt segment ids of one input dict at ``shape``, and its ``segments_info``."""
    panoptic = inputs.get("panoptic")
    if panoptic is None or tuple(panoptic.shape) != tuple(shape):
        panoptic = read_panoptic_png(inputs["pan_seg_file_name"])
        if panoptic.shape != tuple(shape):
            raise ValueError(
                f"{inputs['pan_seg_file_name']}: ground truth {panoptic.shape} and prediction "
                f"{tuple(shape)} differ in size (set the input dict's height/width to the file's)"
            )
        return panoptic, inputs["segments_info"]
    return panoptic.cpu().numpy(), inputs["segments_info"]


class _Streaming(DatasetEvaluator):
    """Shared ``reset`` / ``evaluate``: one native evaluator, gathered over processes."""

    def __init__(self, metadata: DatasetMetadata) -> None:
        self.metadata = metadata
        self.reset()

    def _new(self):  # pragma: no cover - interface
        raise NotImplementedError

    def _summary(self, result: dict) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        self._evaluator = self._new()

    def evaluate(self) -> dict:
        merged = gather(self._evaluator)
        return self._summary(merged.evaluate()) if comm.is_main_process() else {}


class PanopticQualityEvaluator(_Streaming):
    """PQ / SQ / RQ for All, Things (``_th``) and Stuff (``_st``), under ``"panoptic_seg"``."""

    def _new(self) -> PanopticEvaluator:
        return PanopticEvaluator(
            self.metadata.train_id_categories, source=f"metadata of {self.metadata.name}"
        )

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, out in zip(inputs, outputs, strict=True):
            labels, segments = out["panoptic_seg"]
            labels = labels.cpu().numpy()
            if segments is None:
                labels, segments = labels_to_segments(
                    labels,
                    label_divisor=self.metadata.label_divisor,
                    thing_ids=self.metadata.thing_train_ids,
                )
            gt_ids, gt_segments = ground_truth(x, labels.shape)
            name = str(x.get("file_name", x.get("image_id", "image")))
            self._evaluator.process(gt_ids, gt_segments, labels, segments, name=name)

    def _summary(self, result: dict) -> dict:
        return {"panoptic_seg": pq_percent(result)}


class SemanticIoUEvaluator(_Streaming):
    """mIoU, pixel accuracy and per-class IoU (``IoU-<name>``) of ``sem_seg``, under
    ``"sem_seg"``."""

    def _new(self) -> SemanticEvaluator:
        meta = self.metadata
        return SemanticEvaluator(
            meta.num_classes, ignore_label=meta.ignore_label, class_names=meta.class_names
        )

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, out in zip(inputs, outputs, strict=True):
            pred = out["sem_seg"].argmax(0).cpu().numpy()
            gt_ids, gt_segments = ground_truth(x, pred.shape)
            self._evaluator.process(
                semantic_labels(gt_ids, gt_segments, self.metadata.ignore_label), pred
            )

    def _summary(self, result: dict) -> dict:
        metrics = {"mIoU": 100.0 * result["mIoU"], "pACC": 100.0 * result["pixel_accuracy"]}
        metrics.update({f"IoU-{k}": 100.0 * v for k, v in result["per_class"].items()})
        return {"sem_seg": metrics}


class MaskAPEvaluator(_Streaming):
    """COCO mask AP of the thing ``instances`` (pycocotools), under ``"segm"``."""

    def _new(self) -> InstanceAPEvaluator:
        return InstanceAPEvaluator(self.metadata.train_id_categories)

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for x, out in zip(inputs, outputs, strict=True):
            found = out["instances"].to("cpu")
            gt_ids, gt_segments = ground_truth(x, tuple(found.image_size))
            self._evaluator.process(
                x["image_id"],
                gt_ids,
                gt_segments,
                found.pred_masks.numpy(),
                found.scores.numpy(),
                found.pred_classes.numpy(),
            )

    def _summary(self, result: dict) -> dict:
        # COCOeval's -1 (nothing to average, e.g. no small objects) -> NaN, as detectron2 reports
        return {"segm": {k: 100.0 * v if v >= 0 else float("nan") for k, v in result.items()}}


def build_evaluator(dataset_name: str, *, mask_ap: bool | None = None) -> DatasetEvaluators:
    """PQ and mIoU, and mask AP (``mask_ap``; default: when the data set has thing classes, as the
    native evaluation) on the detectron2 data set ``dataset_name``."""
    metadata = native_metadata(dataset_name)
    evaluators: list[DatasetEvaluator] = [
        PanopticQualityEvaluator(metadata),
        SemanticIoUEvaluator(metadata),
    ]
    if mask_ap is None:
        mask_ap = bool(metadata.thing_train_ids)
    if mask_ap:
        evaluators.append(MaskAPEvaluator(metadata))
    return DatasetEvaluators(evaluators)
