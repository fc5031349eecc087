"""Mask AP through pycocotools on hand-built instances with known IoUs."""

from __future__ import annotations

import numpy as np
import pytest

from axial_deeplab.evaluation.instance_ap import InstanceAPEvaluator

pytest.importorskip("pycocotools")

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 27, "name": "sky", "isthing": 0},
]


def _scene() -> tuple[np.ndarray, list[dict]]:
    # 20x20: person id 5 = rows/cols 0..9 (100 px), car id 8 = rows/cols 12..17 (36 px), sky id 9.
    ids = np.full((20, 20), 9)
    ids[:10, :10] = 5
    ids[12:18, 12:18] = 8
    segments = [
        {"id": 5, "category_id": 1},
        {"id": 8, "category_id": 3},
        {"id": 9, "category_id": 27},
    ]
    return ids, segments


def test_perfect_masks_give_ap_one():
    ids, segments = _scene()
    evaluator = InstanceAPEvaluator(CATEGORIES)
    evaluator.process(
        0, ids, segments, np.stack([ids == 5, ids == 8]), np.ones(2), np.array([1, 3])
    )
    result = evaluator.evaluate()
    assert result["AP"] == pytest.approx(1.0) and result["AP50"] == pytest.approx(1.0)


def test_iou_078_counts_at_six_of_ten_thresholds_and_merging():
    # Person predicted on rows 0..7 of its square minus 2 px: 78 px, IoU 78 / 100 = 0.78 -> a TP
    # at IoU thresholds 0.50, 0.55, ..., 0.75 (6 of 10): person AP 0.6. Car exact: AP 1.
    # AP = mean over the two classes = 0.8; AP50 = AP75 = 1.
    ids, segments = _scene()
    person = np.zeros_like(ids, dtype=bool)
    person[:8, :10] = True
    person[7, 8:] = False
    masks, scores, cats = np.stack([person, ids == 8]), np.array([0.9, 0.8]), np.array([1, 3])
    first, second = InstanceAPEvaluator(CATEGORIES), InstanceAPEvaluator(CATEGORIES)
    first.process(0, ids, segments, masks, scores, cats)
    second.process(1, ids, segments, masks, scores, cats)
    first.merge(second)  # two identical images: the same AP
    result = first.evaluate()
    assert result["AP"] == pytest.approx(0.8)
    assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(1.0)


def test_mismatched_inputs_are_rejected():
    ids, segments = _scene()
    with pytest.raises(ValueError, match="do not match a 20x20 image"):
        InstanceAPEvaluator(CATEGORIES).process(
            0, ids, segments, np.zeros((1, 20, 20), bool), np.ones(2), np.array([1])
        )
