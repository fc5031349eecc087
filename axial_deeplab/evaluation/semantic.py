"""Semantic segmentation: confusion matrix, per-class IoU and mIoU, streaming and mergeable.

IoU of class c = TP / (TP + FP + FN) from the confusion matrix (pixels labelled ``ignore_label``
in the ground truth are skipped). mIoU averages the classes with a non-empty union (present in the
ground truth or the prediction); the others have IoU NaN and are left out, as in the Cityscapes
scripts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int | None = 255
) -> np.ndarray:
    """``[K, K]`` int64 pixel counts, rows ground truth, columns prediction.

    ``gt`` and ``pred`` are integer label maps of one shape; ``gt`` holds ``0..K-1`` or
    ``ignore_label``, ``pred`` holds ``0..K-1`` where ``gt`` is not ignored.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction {pred.shape}")
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} labels must be integers, got {labels.dtype}")
    valid = gt != ignore_label if ignore_label is not None else np.ones(gt.shape, dtype=bool)
    gt, pred = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes - 1}] (or be the ignore label "
                f"{ignore_label} in the ground truth), got range [{labels.min()}, {labels.max()}]"
            )
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: np.ndarray, missed: np.ndarray | None = None) -> np.ndarray:
    """``[K]`` per-class IoU from a ``[K, K]`` confusion matrix (and ``missed`` ``[K]``, the
    ground-truth pixels of each class predicted as no class); NaN where the union is empty."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    if missed is not None:
        union = union + missed
    iou = np.full(tp.shape, np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


class SemanticEvaluator:
    """Streaming mIoU: ``reset()``, ``process(gt, pred)`` per image, ``evaluate()``, ``merge()``.

    Args:
        num_classes: K, the number of classes (labels ``0..K-1``).
        ignore_label: ground-truth label to skip (None: none).
        class_names: K names for the per-class results (default ``"0".."K-1"``).
        void_prediction: a predicted label meaning "no class" (a model's void output, e.g. -1),
            or None (then every prediction must be a class). A pixel predicted void is a miss of
            its ground-truth class: it joins that class's union (and lowers pixel accuracy) but no
            class's prediction.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_label: int | None = 255,
        class_names: Sequence[str] | None = None,
        void_prediction: int | None = None,
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = list(class_names or (str(i) for i in range(num_classes)))
        self.void_prediction = void_prediction
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)  # [K] gt pixels predicted void

    def process(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (or a batch) of ``[..., H, W]`` label maps."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if self.void_prediction is not None and gt.shape == pred.shape:
            void = pred == self.void_prediction  # [..., H, W]
            missed = gt[void]  # [V] ground truth under void predictions
            if self.ignore_label is not None:
                missed = missed[missed != self.ignore_label]
            # as a confusion column (checks the labels): [K, K] -> [K]
            self.missed += confusion_matrix(missed, 0 * missed, self.num_classes, None)[:, 0]
            gt, pred = gt[~void], pred[~void]  # [P] each
        self.confusion += confusion_matrix(gt, pred, self.num_classes, self.ignore_label)

    def merge(self, other: SemanticEvaluator) -> None:
        """Add another evaluator's counts (same classes)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError("cannot merge SemanticEvaluators with different numbers of classes")
        self.confusion += other.confusion
        self.missed += other.missed

    def evaluate(self) -> dict:
        """``{"mIoU", "pixel_accuracy", "per_class": {name: IoU or NaN}}``, fractions in [0, 1]."""
        iou = iou_from_confusion(self.confusion, missed=self.missed)
        total = self.confusion.sum() + self.missed.sum()
        return {
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_accuracy": float(np.trace(self.confusion) / total) if total else float("nan"),
            "per_class": {name: float(v) for name, v in zip(self.class_names, iou)},
        }
