"""mIoU: a hand-worked case, agreement with a naive per-pixel loop, streaming and merging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from axial_deeplab.evaluation.semantic import SemanticEvaluator, confusion_matrix


def test_hand_worked_case():
    # gt   [[0 0 1]      pred [[0 1 1]
    #       [2 255 1]]         [0 0 1]]    (255 ignored: 5 pixels count)
    # class 0: TP 1 (0,0); FP 1 (1,0: gt 2); FN 1 (0,1: pred 1) -> IoU 1/3
    # class 1: TP 2; FP 1 (0,1); FN 0 -> IoU 2/3. class 2: TP 0, FN 1 -> IoU 0.
    # class 3: in neither -> NaN, left out. mIoU = (1/3 + 2/3 + 0) / 3 = 1/3; accuracy 3/5.
    gt = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [0, 0, 1]])
    evaluator = SemanticEvaluator(4, class_names=["a", "b", "c", "d"])
    evaluator.process(gt, pred)
    result = evaluator.evaluate()
    assert result["per_class"]["a"] == pytest.approx(1 / 3)
    assert result["per_class"]["b"] == pytest.approx(2 / 3)
    assert result["per_class"]["c"] == 0.0 and math.isnan(result["per_class"]["d"])
    assert result["mIoU"] == pytest.approx(1 / 3) and result["pixel_accuracy"] == 0.6


def _naive_iou(gts, preds, num_classes, ignore):
    tp, fp, fn = [0] * num_classes, [0] * num_classes, [0] * num_classes
    for gt, pred in zip(gts, preds):
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g == ignore:
                continue
            if g == p:
                tp[g] += 1
            else:
                fn[g] += 1
                fp[p] += 1
    return [t / (t + a + b) if t + a + b else math.nan for t, a, b in zip(tp, fp, fn)]


def test_equals_naive_loop_streaming_and_merged():
    rng = np.random.default_rng(0)
    k = 6
    gts = [rng.integers(0, k, size=(17, 23)) for _ in range(4)]
    preds = [np.where(rng.random(g.shape) < 0.6, g, rng.integers(0, k, g.shape)) for g in gts]
    for g in gts:
        g[rng.random(g.shape) < 0.1] = 255
    expected = _naive_iou(gts, preds, k, 255)
    whole, first, second = (SemanticEvaluator(k) for _ in range(3))
    for i, (g, p) in enumerate(zip(gts, preds)):
        whole.process(g, p)
        (first if i < 2 else second).process(g, p)
    first.merge(second)
    for evaluator in (whole, first):
        result = evaluator.evaluate()
        assert list(result["per_class"].values()) == pytest.approx(expected, abs=1e-12)
        assert result["mIoU"] == pytest.approx(np.nanmean(expected), abs=1e-12)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match=r"prediction labels must lie in \[0, 2\]"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 3), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    # A prediction label outside the range is fine where the ground truth is ignored.
    assert confusion_matrix(np.array([255, 0]), np.array([9, 0]), 3).sum() == 1


def test_per_class_table_shows_iou_next_to_pq():
    from axial_deeplab.evaluation.panoptic import PanopticEvaluator
    from axial_deeplab.evaluation.panoptic_files import format_results

    categories = [{"id": i, "name": n, "isthing": 0} for i, n in enumerate("abcd")]
    pq = PanopticEvaluator(categories)
    gt = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [0, 0, 1]])
    segments = [{"id": i + 1, "category_id": i} for i in range(3)]  # segment id = class + 1
    pq.process(np.where(gt == 255, 0, gt + 1), segments, pred + 1, segments[:2])
    semantic = SemanticEvaluator(4, class_names=list("abcd"))
    semantic.process(gt, pred)
    rows = {
        line.split("|")[0].strip(): line.split("|")[-1].strip()
        for line in format_results(pq.evaluate(), semantic=semantic.evaluate()).splitlines()
    }
    # IoUs of the hand-worked case above: a 1/3, b 2/3, c 0; d is in neither, so not listed
    assert (rows["a"], rows["b"], rows["c"]) == ("33.3", "66.7", "0.0") and "d" not in rows
    assert rows["mIoU"] == "33.3"
    assert "IoU" not in format_results(pq.evaluate())  # without semantic results: PQ only
