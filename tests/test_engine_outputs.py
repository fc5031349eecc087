"""What the engine writes besides checkpoints: TensorBoard pictures during training, and
``--eval-only`` predictions in the official formats (read back by the file-based evaluator)."""

import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from axial_deeplab.data.cityscapes_panoptic import CITYSCAPES_CLASSES
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
from axial_deeplab.engine.evaluate import pad_images
from axial_deeplab.engine.launch import default_argument_parser
from axial_deeplab.engine.train_net import run
from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "quickstart", "synthetic_axial.yaml"
)
PICTURE_TAGS = ("input", "panoptic", "semantic", "semantic_gt", "center", "center_gt", "offset")


def _custom(data: str, split: str, fmt: str) -> dict:
    if fmt == "coco_panoptic":
        root = os.path.join(data, "coco")
        return {"NAME": f"synth_{split}", "JSON_FILE": f"{root}/panoptic_{split}.json",
                "PNG_DIR": f"{root}/panoptic/{split}", "IMAGE_DIR": f"{root}/images/{split}"}  # fmt: skip
    gt = os.path.join(data, "cityscapes", "gtFine", f"cityscapes_panoptic_{split}")
    return {"NAME": f"synth_cs_{split}", "JSON_FILE": f"{gt}.json", "PNG_DIR": gt,
            "IMAGE_DIR": os.path.join(data, "cityscapes", "leftImg8bit", split),
            "FORMAT": "cityscapes_panoptic"}  # fmt: skip


def _run(*opts: str, eval_only: bool = False, random_weights: bool = False) -> dict[str, float]:
    flags = ["--config-file", CONFIG] + (["--eval-only"] if eval_only else [])
    flags += ["--allow-random-weights"] if random_weights else []
    return run(default_argument_parser("test").parse_args([*flags, *opts]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """20 iterations of the quick-start model on 8 synthetic scenes, pictures every 10."""
    root = tmp_path_factory.mktemp("engine")
    data = str(root / "data")
    write_synthetic_dataset(data, splits={"train": 8, "val": 4}, seed=3)
    custom = [_custom(data, s, f) for s in ("train", "val") for f in ("coco_panoptic", "cs")]
    common = ["DATASETS.CUSTOM", str(custom), "DATALOADER.NUM_WORKERS", "0"]
    out = str(root / "train")
    _run(*common, "OUTPUT_DIR", out, "DATASETS.TRAIN", "('synth_train',)",
         "DATASETS.TEST", "('synth_val',)", "SOLVER.MAX_ITER", "20", "SOLVER.IMS_PER_BATCH", "4",
         "SOLVER.WARMUP_ITERS", "5", "SOLVER.BASE_LR", "0.005", "VIS_PERIOD", "10")  # fmt: skip
    return {"root": root, "data": data, "common": common, "out": out}


def test_training_writes_tensorboard_pictures(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        os.path.join(trained["out"], "tensorboard"), size_guidance={"images": 0}
    )
    events.Reload()
    tags = set(events.Tags()["images"])
    assert {f"train_vis/{t}" for t in PICTURE_TAGS} <= tags, tags
    for tag in tags:
        pictures = events.Images(tag)
        assert [p.step for p in pictures] == [10, 20], tag  # VIS_PERIOD 10, 20 iterations
        # The training crop of the quick-start config is 96 x 128 (INPUT.CROP.SIZE).
        assert (pictures[0].height, pictures[0].width) == (96, 128), tag
    decoded = cv2.imdecode(
        np.frombuffer(events.Images("train_vis/input")[0].encoded_image_string, np.uint8),
        cv2.IMREAD_COLOR,
    )
    assert decoded.std() > 10, "the input picture is blank"


def _no_temp_files(folder: str) -> None:
    leftovers = [f for f in glob.glob(f"{folder}/**/*", recursive=True) if ".tmp" in f]
    assert not leftovers, leftovers


def test_eval_only_coco_predictions_score_as_in_memory(trained, monkeypatch):
    out = str(trained["root"] / "eval_coco")
    weights = os.path.join(trained["out"], "model_0000020.pth")
    reads = []  # read whole once; its stored config (the --config-file notice) and classes mapped
    load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda f, *a, **k: reads.append(k.get("mmap")) or load(f, *a, **k)
    )
    metrics = _run(*trained["common"], "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights,
                   "DATASETS.TEST", "('synth_val',)", "TEST.SAVE_PREDICTIONS", "True", eval_only=True)  # fmt: skip
    assert reads.count(False) == 1 and len(reads) <= 3, reads  # whole once, the rest mapped
    folder = os.path.join(out, "inference")
    with open(os.path.join(folder, "panoptic.json"), encoding="utf-8") as f:
        pred = json.load(f)
    assert len(pred["annotations"]) == 4
    # Category ids are the annotation file's (synthetic COCO ids 1..6), not train ids (0..5).
    assert {c["id"] for c in pred["categories"]} == set(range(1, 7))
    used = {s["category_id"] for a in pred["annotations"] for s in a["segments_info"]}
    assert used and used <= set(range(1, 7))
    gt = os.path.join(trained["data"], "coco")
    files = evaluate_panoptic_files(
        f"{gt}/panoptic_val.json", f"{gt}/panoptic/val", os.path.join(folder, "panoptic.json"),
        os.path.join(folder, "panoptic"), workers=1, progress=False,
    )  # fmt: skip
    assert metrics["PQ"] > 0, "no matched segment: the comparison below would be vacuous"
    for key, group in (("PQ", "All"), ("PQ_th", "Things"), ("PQ_st", "Stuff")):
        assert 100 * files[group]["pq"] == pytest.approx(metrics[key], abs=1e-9), key
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["PQ"] == pytest.approx(metrics["PQ"])
    _no_temp_files(folder)


def test_eval_only_evaluates_every_test_set(trained):
    """As detectron2: each DATASETS.TEST set is evaluated; the first one's metrics keep their
    names (the same numbers as alone), another's are prefixed with its name; files per set."""
    out = str(trained["root"] / "eval_two_sets")
    weights = os.path.join(trained["out"], "model_0000020.pth")
    common = [*trained["common"], "MODEL.WEIGHTS", weights, "TEST.NUM_PICTURES", "0"]
    alone = _run(*common, "OUTPUT_DIR", out + "_alone", "DATASETS.TEST", "('synth_train',)",
                 eval_only=True)  # fmt: skip
    both = _run(*common, "OUTPUT_DIR", out, "DATASETS.TEST", "('synth_val', 'synth_train')",
                "TEST.SAVE_PREDICTIONS", "True", eval_only=True)  # fmt: skip
    assert {k: both[f"synth_train/{k}"] for k in alone} == alone
    assert "PQ" in both and both["PQ"] != alone["PQ"]  # synth_val's, not synth_train's
    for name, count in (("synth_val", 4), ("synth_train", 8)):
        with open(f"{out}/inference/{name}/panoptic.json", encoding="utf-8") as f:
            assert len(json.load(f)["annotations"]) == count


def _as_cityscapes_19_classes(weights: str, path: str) -> str:
    """The trained 6-class weights as a 19-class Cityscapes model: each synthetic class's semantic
    logit goes to the Cityscapes train id it stands in for (SYNTHETIC_CLASSES: disc = person 11,
    square = car 13, triangle = truck 14, sky 10, ground = road 0, wall = building 2); the other 13
    classes get a logit bias of -30, so they are never predicted."""
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    train_ids = (11, 13, 14, 10, 0, 2)  # in SYNTHETIC_CLASSES order
    w, b = state["semantic_head.predictor.weight"], state["semantic_head.predictor.bias"]
    new_w, new_b = w.new_zeros((19, *w.shape[1:])), b.new_full((19,), -30.0)
    new_w[list(train_ids)], new_b[list(train_ids)] = w, b
    state["semantic_head.predictor.weight"], state["semantic_head.predictor.bias"] = new_w, new_b
    torch.save({"model": state}, path)
    return path


def test_eval_only_cityscapes_formats(trained):
    """The trained model, as a 19-class model, on the Cityscapes-format copy: label-id PNGs,
    instance txt files and masks, and COCO panoptic files in the file's label ids that score as in
    memory (PQ > 0, so that the equality is not 0 == 0)."""
    out = str(trained["root"] / "eval_cs")
    weights = _as_cityscapes_19_classes(
        os.path.join(trained["out"], "model_0000020.pth"), str(trained["root"] / "cs19.pth")
    )
    metrics = _run(*trained["common"], "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights,
                   "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19", "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "0",
                   "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.0",
                   "DATASETS.TEST", "('synth_cs_val',)", "TEST.SAVE_PREDICTIONS", "True",
                   eval_only=True)  # fmt: skip
    assert metrics["PQ"] > 0, "no matched segment: the comparison below would be vacuous"
    folder = os.path.join(out, "inference")
    label_ids = {label for _, label, *_ in CITYSCAPES_CLASSES}
    semantic = sorted(glob.glob(f"{folder}/cityscapes_semantic/*.png"))
    assert len(semantic) == 4 and all("_leftImg8bit.png" in p for p in semantic)
    for path in semantic:
        png = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert png.shape == (96, 128) and set(np.unique(png)) <= label_ids
    texts = sorted(glob.glob(f"{folder}/cityscapes_instances/*.txt"))
    assert len(texts) == 4
    lines = [line.split() for t in texts for line in open(t, encoding="utf-8").read().splitlines()]
    assert lines, "no thing instance at all (centre threshold 0 should give some)"
    for mask, label, score in lines:
        # score = mean class probability x the regressed centre heatmap at the mask's mean pixel
        # (as detectron2's): slightly negative where the heatmap is
        assert int(label) in {24, 25, 26, 27, 28, 31, 32, 33} and abs(float(score)) <= 1
        png = cv2.imread(os.path.join(folder, "cityscapes_instances", mask), cv2.IMREAD_UNCHANGED)
        assert png.shape == (96, 128) and set(np.unique(png)) <= {0, 255}
    gt = os.path.join(trained["data"], "cityscapes", "gtFine", "cityscapes_panoptic_val")
    files = evaluate_panoptic_files(
        f"{gt}.json", gt, os.path.join(folder, "panoptic.json"), os.path.join(folder, "panoptic"),
        workers=1, progress=False,
    )  # fmt: skip
    assert 100 * files["All"]["pq"] == pytest.approx(metrics["PQ"], abs=1e-9)
    _no_temp_files(folder)


def test_pad_images_fills_bottom_right_with_pixel_mean():
    images = torch.zeros(2, 3, 4, 5)
    padded = pad_images(images, (6, 5), (1.0, 2.0, 3.0))
    assert padded.shape == (2, 3, 6, 5)
    assert torch.equal(padded[:, :, :4], images)  # the image stays top-left
    assert torch.equal(padded[0, :, 4:, 0], torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert pad_images(images, (3, 3), (0, 0, 0)) is images  # larger than the size: unchanged
    assert pad_images(images, None, (0, 0, 0)) is images


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(trained):
    """``--num-gpus 2`` on the CPU (gloo): training runs, and its final evaluation, the 2-process
    ``--eval-only`` and the 1-process ``--eval-only`` of the same weights agree, files included."""
    from axial_deeplab.engine.events import read_metrics
    from axial_deeplab.engine.train_net import main

    root, common = trained["root"], trained["common"]
    two = str(root / "two_train")
    start = os.path.join(trained["out"], "model_0000020.pth")  # so that PQ is not 0 == 0 below
    main(["--config-file", CONFIG, "--num-gpus", "2", *common, "OUTPUT_DIR", two,
          "DATASETS.TRAIN", "('synth_train',)", "DATASETS.TEST", "('synth_val',)",
          "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4", "MODEL.WEIGHTS", start])  # fmt: skip
    final = [r for r in read_metrics(os.path.join(two, "metrics.json")) if "eval/PQ" in r][-1]
    weights = os.path.join(two, "model_0000004.pth")
    outputs = {}
    for n in ("1", "2"):
        out = str(root / f"eval_{n}")
        main(["--config-file", CONFIG, "--eval-only", "--num-gpus", n, *common, "OUTPUT_DIR", out,
              "MODEL.WEIGHTS", weights, "DATASETS.TEST", "('synth_val',)",
              "TEST.SAVE_PREDICTIONS", "True"])  # fmt: skip
        with open(os.path.join(out, "inference", "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        with open(os.path.join(out, "inference", "panoptic.json"), encoding="utf-8") as f:
            outputs[n] = (metrics, json.load(f))
    assert outputs["1"][0]["PQ"] > 0 and outputs["1"][0]["mIoU"] > 0  # not vacuous
    assert outputs["2"][0] == pytest.approx(outputs["1"][0], abs=1e-9)
    assert outputs["2"][1] == outputs["1"][1]  # same annotations, in data set order
    assert final["eval/PQ"] == pytest.approx(outputs["1"][0]["PQ"], abs=1e-9)
    assert final["eval/mIoU"] == pytest.approx(outputs["1"][0]["mIoU"], abs=1e-9)


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate_as_one(trained):
    """``torchrun --nproc_per_node 2`` on the CPU (gloo), the multi-node entry point: it trains, and
    its final 2-process evaluation equals a 1-process ``--eval-only`` of the weights it wrote."""
    from axial_deeplab.engine.events import read_metrics

    root, common = trained["root"], trained["common"]
    out = str(root / "torchrun_train")
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "train_net.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         tool, "--config-file", CONFIG, *common, "OUTPUT_DIR", out,
         "DATASETS.TRAIN", "('synth_train',)", "DATASETS.TEST", "('synth_val',)",
         "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.CHECKPOINT_PERIOD", "4",
         "MODEL.WEIGHTS", os.path.join(trained["out"], "model_0000020.pth")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_metrics(os.path.join(out, "metrics.json"))
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(np.isfinite(losses))
    final = [r for r in records if "eval/PQ" in r][-1]
    one = _run(*common, "OUTPUT_DIR", str(root / "torchrun_eval"), "DATASETS.TEST", "('synth_val',)",
               "MODEL.WEIGHTS", os.path.join(out, "model_0000004.pth"), eval_only=True)  # fmt: skip
    assert one["PQ"] > 0 and one["mIoU"] > 0  # the comparison below is not 0 == 0
    for key in ("PQ", "SQ", "RQ", "mIoU", "AP"):
        assert final[f"eval/{key}"] == pytest.approx(one[key], abs=1e-9), key
