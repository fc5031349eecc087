"""Prediction writers: COCO panoptic files that the evaluator reads back, Cityscapes formats."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from sample_data import DATA, require

from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files
from axial_deeplab.evaluation.synthetic import synthetic_categories, synthetic_ground_truth
from axial_deeplab.evaluation.writers import (
    CocoPanopticWriter,
    write_cityscapes_instances,
    write_cityscapes_semantic,
)


def test_coco_panoptic_writer_round_trip(tmp_path):
    # The same scenes written as gt and as prediction score PQ = SQ = RQ = 1 (100%).
    categories = synthetic_categories()
    rng = np.random.default_rng(0)
    writers = [CocoPanopticWriter(str(tmp_path / n), str(tmp_path / f"{n}.json"), categories)
               for n in ("gt", "pred")]  # fmt: skip
    for i in range(3):
        ids, segments = synthetic_ground_truth(rng, categories, 30, 40)
        for writer in writers:
            writer.add(i, f"{i}.png", ids, segments)
    for writer in writers:
        writer.close()
    assert len(json.loads((tmp_path / "pred.json").read_text())["annotations"]) == 3
    result = evaluate_panoptic_files(
        str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"),
        str(tmp_path / "pred"), workers=1, progress=False,
    )  # fmt: skip
    assert result["All"]["pq"] == 1.0 and result["All"]["n"] > 3


def _official_ids(path) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG read with PIL: R + 256 G + 256^2 B (panopticapi)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_coco_panoptic_writer_against_the_real_coco_ground_truth(tmp_path):
    # Ground truth independent of the writer: the official COCO panoptic sample files. The
    # prediction is that ground truth decoded with PIL, with new segment ids spread over all three
    # color channels (a channel-order or byte-order mistake in the writer changes them), minus one
    # non-crowd segment of the first image.
    coco = require(DATA / "coco_panoptic_sample")
    gt = json.loads((coco / "panoptic_examples.json").read_text())
    writer = CocoPanopticWriter(str(tmp_path / "pred"), str(tmp_path / "pred.json"),
                                gt["categories"])  # fmt: skip
    dropped = None
    for ann in gt["annotations"]:
        gt_ids = _official_ids(coco / "panoptic" / ann["file_name"])
        ids, segments = np.zeros_like(gt_ids), []
        for n, seg in enumerate(ann["segments_info"]):
            if dropped is None and not seg.get("iscrowd", 0):
                dropped = seg["category_id"]
                continue  # left as VOID: one false negative
            new_id = 1 + n * 65793 + 7  # 65793 = 1 + 256 + 256^2: every channel changes
            ids[gt_ids == seg["id"]] = new_id
            segments.append({"id": new_id, "category_id": seg["category_id"]})
        writer.add(ann["image_id"], ann["file_name"], ids, segments)
        # What the writer put on disk, read back with PIL, is the id map handed to it.
        np.testing.assert_array_equal(_official_ids(tmp_path / "pred" / ann["file_name"]), ids)
    writer.close()
    result = evaluate_panoptic_files(
        str(coco / "panoptic_examples.json"), str(coco / "panoptic"), str(tmp_path / "pred.json"),
        str(tmp_path / "pred"), workers=1, progress=False,
    )  # fmt: skip
    per_class = result["per_class"]
    # Every category but the dropped one is matched exactly (PQ = SQ = RQ = 1). The dropped
    # category keeps its other segments: with t true positives (IoU 1) and one false negative,
    # PQ = RQ = t / (t + 0.5) and SQ = 1.
    seen = {c: v for c, v in per_class.items() if v["tp"] + v["fp"] + v["fn"] and c != dropped}
    assert len(seen) >= 5 and all(v["pq"] == pytest.approx(1.0) for v in seen.values())
    t = sum(s["category_id"] == dropped and not s.get("iscrowd", 0)
            for a in gt["annotations"] for s in a["segments_info"]) - 1  # fmt: skip
    assert per_class[dropped]["fn"] == 1 and per_class[dropped]["fp"] == 0
    assert per_class[dropped]["sq"] == pytest.approx(1.0 if t else 0.0)
    assert per_class[dropped]["pq"] == pytest.approx(t / (t + 0.5))


def test_cityscapes_semantic_and_instances(tmp_path):
    # train ids 0 (road) and 13 (car) -> Cityscapes label ids 7 and 26.
    train_ids = np.array([[0, 13], [13, 0]])
    write_cityscapes_semantic(str(tmp_path / "a.png"), train_ids, {0: 7, 13: 26})
    assert cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED).tolist() == [[7, 26], [26, 7]]
    masks = np.stack([train_ids == 13, train_ids == 0])
    path = write_cityscapes_instances(
        str(tmp_path), "frame", masks, np.array([26, 24]), np.array([0.9, 0.25])
    )
    lines = open(path).read().split("\n")
    assert lines[:2] == ["masks/frame_0.png 26 0.900000", "masks/frame_1.png 24 0.250000"]
    mask = cv2.imread(str(tmp_path / "masks" / "frame_0.png"), cv2.IMREAD_UNCHANGED)
    assert mask.tolist() == [[0, 255], [255, 0]]
