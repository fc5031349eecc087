"""PQ: hand-worked cases and validation errors.

Agreement with cityscapesscripts is in ``test_panoptic_eval_official.py``; merging, batches and
gathering across ranks in ``test_panoptic_eval_merge.py``; the file evaluation and its command
line in ``test_panoptic_eval_files.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from axial_deeplab.data.validation import DatasetFormatError
from axial_deeplab.evaluation.panoptic import PanopticEvaluator, PQStats, pq_image_stats

# person, car: things; sky: stuff (category index 0, 1, 2).
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 27, "name": "sky", "isthing": 0},
]


def _stats(inter, g_cat, g_crowd, p_cat) -> PQStats:
    return pq_image_stats(
        np.array(inter), np.array(g_cat, int), np.array(g_crowd, bool), np.array(p_cat, int), 3
    )


def _summary(stats: PQStats) -> dict:
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.add(stats)
    return evaluator.evaluate()


def test_iou_leaves_out_the_predictions_void_overlap():
    # gt person g1 (50 px: 40 on p1, 10 on VOID); pred person p1 (70 px: 40 on g1, 30 on VOID gt).
    # union = 50 + 70 - 40 - 30 = 50 -> IoU 0.8, a TP. Without the VOID term: 40 / 80 = 0.5, no TP.
    stats = _stats([[0, 30], [10, 40]], [0], [False], [0])
    assert stats.tp.tolist() == [1, 0, 0] and stats.fp.sum() == stats.fn.sum() == 0
    assert stats.iou[0] == pytest.approx(0.8, abs=1e-15)
    result = _summary(stats)
    assert result["All"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "n": 1})


def test_iou_of_exactly_one_half_is_not_a_match():
    # gt person g1 60 px (40 on p1, 20 on VOID); gt sky g2 20 px (on p1); pred person p1 60 px.
    # IoU(g1, p1) = 40 / (60 + 60 - 40) = 0.5, not > 0.5 -> person FN and FP (p1 is not on VOID).
    stats = _stats([[0, 0], [20, 40], [0, 20]], [0, 2], [0, 0], [0])
    assert (stats.tp[0], stats.fn[0], stats.fp[0]) == (0, 1, 1)


def test_crowd_and_void_rules():
    # gt: g1 person crowd (110 px), g2 sky (200 px). pred: p1 person (50 px), p2 car (40), p3 sky.
    #          VOID  p1  p2   p3
    # VOID       0    0  10    0
    # g1 crowd  50   30  30    0
    # g2 sky     0   20   0  180
    # g2-p3: IoU = 180 / (200 + 180 - 180) = 0.9 -> TP sky. The crowd g1 is never an FN.
    # p1: (VOID 0 + person crowd 30) / 50 = 0.6 > 0.5 -> ignored. p2: (10 + no car crowd) / 40
    # = 0.25 -> FP car (a person crowd does not excuse a car).
    stats = _stats([[0, 0, 10, 0], [50, 30, 30, 0], [0, 20, 0, 180]], [0, 2], [1, 0], [0, 1, 2])
    assert stats.tp.tolist() == [0, 0, 1] and stats.fp.tolist() == [0, 1, 0]
    assert stats.fn.tolist() == [0, 0, 0]
    result = _summary(stats)
    # person: no TP/FP/FN -> left out. car: PQ 0. sky: PQ = SQ = 0.9, RQ 1. All: means of the two.
    assert result["All"] == pytest.approx({"pq": 0.45, "sq": 0.45, "rq": 0.5, "n": 2})
    assert result["Things"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1})
    assert result["Stuff"] == pytest.approx({"pq": 0.9, "sq": 0.9, "rq": 1.0, "n": 1})
    assert result["per_class"][1] == {
        "name": "person", "pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0
    }  # fmt: skip


def test_only_the_last_crowd_region_of_a_class_counts_as_in_the_official_code():
    # Two person crowds g1, g2 (13 and 5 px); p1 person (10 px): 8 px on g1, 2 on VOID.
    # panopticapi keeps one crowd id per class, the last listed (g2): (2 + 0) / 10 = 0.2 of p1 is
    # on VOID + crowd -> an FP (with g1 it would be (2 + 8) / 10 -> ignored).
    stats = _stats([[0, 2], [5, 8], [5, 0]], [0, 0], [1, 1], [0])
    assert stats.fp[0] == 1


def test_empty_prediction_counts_every_gt_segment_as_fn():
    # gt person (100 px) and sky (300 px), prediction all VOID: 2 FN, PQ 0 over n = 2 classes.
    stats = _stats([[0], [100], [300]], [0, 2], [0, 0], [])
    assert stats.fn.tolist() == [1, 0, 1] and stats.tp.sum() == stats.fp.sum() == 0
    assert _summary(stats)["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_all_crowd_image_gives_no_statistics():
    # gt: one person crowd; p1 person entirely on it -> ignored; nothing counts: every group is
    # empty (n = 0, reported as 0.0 where the official code divides by zero).
    stats = _stats([[0, 0], [0, 25]], [0], [1], [0])
    assert stats.tp.sum() == stats.fp.sum() == stats.fn.sum() == 0
    assert _summary(stats)["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_class_absent_from_gt_and_prediction_is_left_out_of_the_mean():
    # A perfect person (IoU 1) alone: n = 1 and PQ 1; car and sky are in neither -> left out.
    assert _summary(_stats([[0, 0], [0, 9]], [0], [0], [0]))["All"]["pq"] == 1.0
    # gt persons g1 (9 px), g2 (3 px); pred p1 person = g1, p2 car = g2. Person: TP + FN, PQ =
    # 1 / (1 + 0.5); car, absent from gt but predicted: one FP, PQ 0, and it counts in the mean:
    # n = 2, PQ = (2/3 + 0) / 2. Sky, in neither, stays out.
    result = _summary(_stats([[0, 0, 0], [0, 9, 0], [0, 0, 3]], [0, 0], [0, 0], [0, 1]))
    assert result["All"]["n"] == 2 and result["All"]["pq"] == pytest.approx(1 / 3, abs=1e-15)


def test_in_memory_process_on_tiny_maps():
    # 4x4: gt person id 5 covers the left half (8 px), sky id 9 the right half (8 px).
    # pred person id 1 covers columns 0..2 (12 px: 8 on person, 4 on sky) -> IoU 8/12 -> TP.
    # pred sky id 2 covers column 3 (4 px) -> IoU 4/8 = 0.5 -> not a match: sky FN + sky FP.
    gt = np.array([[5, 5, 9, 9]] * 4)
    pred = np.array([[1, 1, 1, 2]] * 4)
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.process(
        gt, [{"id": 5, "category_id": 1}, {"id": 9, "category_id": 27}],
        pred, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 27}],
    )  # fmt: skip
    r = evaluator.evaluate()
    assert r["per_class"][1]["pq"] == pytest.approx(8 / 12, abs=1e-15)
    assert (r["per_class"][27]["fn"], r["per_class"][27]["fp"]) == (1, 1)
    assert r["All"]["pq"] == pytest.approx((8 / 12 + 0) / 2, abs=1e-15)
    evaluator.reset()
    assert evaluator.num_images == 0 and evaluator.stats.tp.sum() == 0


@pytest.mark.parametrize(
    "gt_ids, gt_segments, message",
    [
        (np.full((2, 2), 2**24), [{"id": 2**24, "category_id": 1}], r"\[0, 2\^24 - 1\]"),
        (np.full((2, 2), 7), [], "in the PNG but not in segments_info"),
        (np.zeros((2, 2), int), [{"id": 7, "category_id": 1}], "absent from the PNG"),
        (np.full((2, 2), 7), [{"id": 7, "category_id": 99}], "unknown category_id 99"),
        (np.full((2, 2), 7), [{"id": 7, "category_id": 1}] * 2, "duplicate segment id 7"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(gt_ids, gt_segments, message):
    with pytest.raises(DatasetFormatError, match=message):
        PanopticEvaluator(CATEGORIES).process(gt_ids, gt_segments, np.zeros((2, 2), int), [])


def test_categories_are_validated():
    with pytest.raises(DatasetFormatError, match="category id 3 .*no 'isthing'"):
        PanopticEvaluator([{"id": 3, "name": "car"}], source="cats.json")
    with pytest.raises(DatasetFormatError, match="cats.json: duplicate category id 1"):
        PanopticEvaluator(CATEGORIES + CATEGORIES[:1], source="cats.json")
