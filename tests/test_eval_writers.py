"""Prediction writers: COCO panoptic files that the evaluator reads back, Cityscapes formats."""

from __future__ import annotations

import json

import cv2
import numpy as np

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
