"""Reusing what the quick start trained, from the checkpoint alone: the README's two commands.

A one-iteration run of the quick-start config on a few synthetic scenes stands in for the quick
start (its model is untrained; what is checked is that the later commands find the config, the
class names and the data set without being told).
"""

import json
from pathlib import Path

import cv2
import pytest
import torch

from axial_deeplab.config import load_config
from axial_deeplab.data.build import build_catalog
from axial_deeplab.data.synthetic import SYNTHETIC_CLASSES
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
from axial_deeplab.engine import infer_net, train_net
from axial_deeplab.engine.build import build_trainer
from axial_deeplab.engine.launch import default_argument_parser
from axial_deeplab.utils.visualize import enlarge_factor

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart" / "synthetic_axial.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(checkpoint, data folder)`` of a 1-iteration quick-start run on 4 + 2 scenes."""
    tmp = tmp_path_factory.mktemp("reuse")
    data = tmp / "data"
    write_synthetic_dataset(str(data), splits={"train": 4, "val": 2}, seed=1, formats=("coco",))
    cfg = load_config(CONFIG, [
        "OUTPUT_DIR", str(tmp / "run"), "DATASETS.SYNTHETIC_DIR", str(data),
        "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_PERIOD", "0", "VIS_PERIOD", "0",
        "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "1", "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.0",
    ])  # fmt: skip
    build_trainer(cfg, torch.device("cpu")).train()
    return tmp / "run" / "model_0000001.pth", data


def test_synthetic_dir_registers_the_quickstart_data_sets(tmp_path):
    cfg = load_config(CONFIG, ["DATASETS.SYNTHETIC_DIR", str(tmp_path)])
    catalog = build_catalog(cfg)
    assert {"synthetic_coco_train", "synthetic_coco_val"} <= set(catalog.names())
    # Registration is lazy: a folder without the scenes fails on use, naming the missing file.
    with pytest.raises(FileNotFoundError, match="panoptic_val.json"):
        catalog.get("synthetic_coco_val")
    assert "synthetic_coco_val" not in build_catalog(load_config(None, []))


def test_eval_only_from_the_checkpoint_alone(trained, capsys):
    weights, _ = trained
    args = default_argument_parser("eval").parse_args(
        ["--eval-only", "MODEL.WEIGHTS", str(weights)]
    )
    metrics = train_net.run(args)
    out = capsys.readouterr().out
    assert f"config: stored in {weights}" in out
    assert {"PQ", "SQ", "RQ", "mIoU"} <= set(metrics)  # evaluated on synthetic_coco_val
    # Pictures of the evaluated scenes: input | prediction | ground truth in the first row.
    folder = weights.parent / "eval_pictures"
    assert "pictures of 2 images (input, prediction beside ground truth" in out
    pictures = sorted(folder.glob("*_vis.png"))
    records = json.loads((trained[1] / "coco" / "panoptic_val.json").read_text())["images"]
    assert [p.name for p in pictures] == sorted(
        f"{Path(r['file_name']).stem}_vis.png" for r in records
    )
    height, width = records[0]["height"], records[0]["width"]
    picture = cv2.imread(str(folder / f"{Path(records[0]['file_name']).stem}_vis.png"))
    assert picture.shape[1] == 3 * width * enlarge_factor((height, width))  # 2 without the truth


def test_eval_only_with_the_readme_config_file(trained):
    weights, data = trained
    args = default_argument_parser("eval").parse_args(
        ["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", str(weights),
         "DATASETS.SYNTHETIC_DIR", str(data)]
    )  # fmt: skip
    assert {"PQ", "mIoU"} <= set(train_net.run(args))


def test_resume_of_a_finished_run_says_so(trained, capsys):
    weights, data = trained
    args = default_argument_parser("train").parse_args(
        ["--config-file", CONFIG, "--resume", "OUTPUT_DIR", str(weights.parent),
         "DATASETS.SYNTHETIC_DIR", str(data), "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0"]
    )  # fmt: skip
    assert train_net.run(args) == {}  # nothing trained, nothing evaluated
    out = capsys.readouterr().out
    assert "this run already finished (SOLVER.MAX_ITER 1): nothing to train" in out
    assert f"MODEL.WEIGHTS {weights}" in out


def test_infer_from_the_checkpoint_alone(trained, tmp_path, capsys):
    weights, data = trained
    images = data / "coco" / "images" / "val"
    summary = infer_net.main(
        ["--weights", str(weights), "--input", str(images), "--output", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert summary["images"] == 2 and "generic class names" not in out
    assert f"class names: metadata stored in {weights}" in out
    names = {name for name, *_ in SYNTHETIC_CLASSES}
    record = json.loads((tmp_path / "synth_000000.json").read_text())
    assert record["segments_info"], "centre threshold 0 and stuff area 1: segments expected"
    assert {s["category_name"] for s in record["segments_info"]} <= names
