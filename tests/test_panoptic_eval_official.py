"""PQ: agreement with cityscapesscripts' evalPanopticSemanticLabeling (the COCO panoptic API's
algorithm) on real and synthetic data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from panoptic_cases import _assert_same, _ours, _write
from sample_data import DATA, require

from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files
from axial_deeplab.evaluation.synthetic import (
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)

COCO = DATA / "coco_panoptic_sample"
CITYSCAPES = DATA / "cityscapes_panoptic_sample" / "gtFine"


def _official(tmp_path: Path, images: list, categories: list[dict]) -> dict:
    """Results of cityscapesscripts' single-core PQ on ``images``, written as COCO-format files
    into ``tmp_path`` (``gt/``, ``pred/``, ``gt.json``, ``pred.json``)."""
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    pairs = _write(tmp_path, images)
    (tmp_path / "gt.json").write_text(
        json.dumps({"annotations": [g for g, _ in pairs], "categories": categories})
    )
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [p for _, p in pairs]}))
    cats = {c["id"]: c for c in categories}
    stats = cs.pq_compute_single_core(
        0, copy.deepcopy(pairs), tmp_path / "gt", tmp_path / "pred", cats
    )
    return cs.average_pq(stats, cats)


def _eroded(gt: np.ndarray, gt_segments: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Every segment eroded by a 7x7 square (lost pixels become VOID)."""
    pred = np.zeros_like(gt)
    for seg in gt_segments:
        mask = cv2.erode((gt == seg["id"]).astype(np.uint8), np.ones((7, 7), np.uint8))
        pred[mask > 0] = seg["id"]
    kept = set(np.unique(pred).tolist())
    return pred, [
        {"id": s["id"], "category_id": s["category_id"]} for s in gt_segments if s["id"] in kept
    ]


def _perturbed(gt, gt_segments, categories, seeds) -> list:
    images = [(gt, gt_segments, *_eroded(gt, gt_segments))]
    for seed in seeds:
        rng = np.random.default_rng(seed)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    return images


def test_matches_official_on_real_coco_samples(tmp_path):
    require(COCO)
    data = json.loads((COCO / "panoptic_examples.json").read_text())
    images = []
    for ann in data["annotations"]:
        gt = read_panoptic_png(COCO / "panoptic" / ann["file_name"])
        images += _perturbed(gt, ann["segments_info"], data["categories"], seeds=range(3))
    ours, official = (
        _ours(images, data["categories"]),
        _official(tmp_path, images, data["categories"]),
    )
    assert official["All"]["n"] > 10  # a real test: many classes, crowds present
    _assert_same(ours, official)
    # The file-based path (PNG reader, worker processes) gives the same numbers.
    files = evaluate_panoptic_files(
        str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"),
        str(tmp_path / "pred"), workers=2, progress=False,
    )  # fmt: skip
    _assert_same(files, official)


def _cityscapes_categories() -> list[dict]:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    return [
        {"id": lab.trainId, "name": lab.name, "isthing": int(lab.hasInstances)}
        for lab in labels.labels
        if 0 <= lab.trainId < 255
    ]


def test_matches_official_on_real_cityscapes_sample_with_crowd(tmp_path):
    require(CITYSCAPES)
    categories = _cityscapes_categories()
    ann = json.loads((CITYSCAPES / "cityscapes_panoptic_dummy_trainId.json").read_text())
    ann = ann["annotations"][0]
    gt = read_panoptic_png(CITYSCAPES / "cityscapes_panoptic_dummy_trainId" / ann["file_name"])
    images = _perturbed(gt, ann["segments_info"], categories, seeds=range(4))
    _assert_same(_ours(images, categories), _official(tmp_path, images, categories))


def test_matches_official_on_synthetic_scenes(tmp_path):
    categories = synthetic_categories()
    rng = np.random.default_rng(7)
    images = []
    for _ in range(12):
        gt, gt_segments = synthetic_ground_truth(rng, categories, 90, 120)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    official = _official(tmp_path, images, categories)
    assert official["Things"]["n"] > 0 and official["Stuff"]["n"] > 0
    _assert_same(_ours(images, categories), official)
