"""Evaluation at another size than the files': predictions are scored against the ground truth
at the files' size (resized back, nearest), as the saved predictions are and as the official
tools score them; the ground truth itself is never resized."""

from pathlib import Path

import numpy as np
from sample_data import require

from axial_deeplab.engine import train_net
from axial_deeplab.engine.launch import default_argument_parser
from axial_deeplab.evaluation.panoptic import PanopticEvaluator

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart" / "overfit_coco_samples.yaml")


def test_small_test_size_scores_at_the_files_size(tmp_path, monkeypatch):
    require()
    shapes = []
    process = PanopticEvaluator.process

    def spy(self, gt_ids, gt_segments, pred_ids, pred_segments, **kwargs):
        shapes.append((np.shape(gt_ids), np.shape(pred_ids)))
        return process(self, gt_ids, gt_segments, pred_ids, pred_segments, **kwargs)

    monkeypatch.setattr(PanopticEvaluator, "process", spy)
    # At 36 x 64 a 96-pixel segment of 000000439180 vanishes from a resized ground truth: the
    # evaluation used to stop, blaming the data ("in segments_info but absent from the PNG").
    metrics = train_net.run(default_argument_parser("test").parse_args([
        "--eval-only", "--allow-random-weights", "--config-file", CONFIG,
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "TEST.PAD_TO_CROP", "False",
        "TEST.NUM_PICTURES", "0", "OUTPUT_DIR", str(tmp_path),
    ]))  # fmt: skip
    assert {"PQ", "mIoU"} <= set(metrics)
    assert sorted(shapes) == [((360, 640), (360, 640)), ((427, 640), (427, 640))]
