"""Synthetic panoptic predictions written as COCO-format files, our evaluator's results on them,
and the agreement check: shared by the PQ tests (``test_panoptic_eval_*.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from axial_deeplab.data.panoptic_io import write_panoptic_png
from axial_deeplab.evaluation.panoptic import PanopticEvaluator
from axial_deeplab.evaluation.synthetic import (
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)


def _write(folder: Path, images: list) -> list:
    (folder / "gt").mkdir(exist_ok=True)
    (folder / "pred").mkdir(exist_ok=True)
    pairs = []
    for i, (gt, gt_segments, pred, pred_segments) in enumerate(images):
        write_panoptic_png(folder / "gt" / f"{i}.png", gt)
        write_panoptic_png(folder / "pred" / f"{i}.png", pred)
        pairs.append(
            ({"image_id": i, "file_name": f"{i}.png", "segments_info": gt_segments},
             {"image_id": i, "file_name": f"{i}.png", "segments_info": pred_segments})
        )  # fmt: skip
    return pairs


def _assert_same(ours: dict, official: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == official[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(ours[group][key] - official[group][key]) < 1e-9, (group, key)
    for cat_id, theirs in official["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat_id][key] - theirs[key]) < 1e-9, (cat_id, key)


def _ours(images, categories) -> dict:
    evaluator = PanopticEvaluator(categories)
    for image in images:
        evaluator.process(*image)
    return evaluator.evaluate()


def _files(tmp_path: Path, num_images: int = 3) -> tuple[list[str], list, list[dict]]:
    categories = synthetic_categories()
    rng = np.random.default_rng(11)
    images = []
    for _ in range(num_images):
        gt, gt_segments = synthetic_ground_truth(rng, categories, 48, 64)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    pairs = _write(tmp_path, images)
    gt_json = {"annotations": [g for g, _ in pairs], "categories": categories}
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [p for _, p in pairs]}))
    args = ["--gt-json", str(tmp_path / "gt.json"), "--gt-dir", str(tmp_path / "gt"),
            "--pred-json", str(tmp_path / "pred.json"), "--pred-dir", str(tmp_path / "pred")]  # fmt: skip
    return args, images, categories
