"""Models with a void output channel (``MODEL.SEM_SEG_HEAD.VOID_CLASS``): deeplab2's COCO models
predict 134 classes, their ignore label 0 ("void") and COCO's 133 classes as 1..133.

deeplab2 takes the argmax over all 134 outputs; a pixel won by channel 0 gets panoptic label
``0 * divisor``, its void label, which is neither a segment nor counted by its PQ (ignored label
0). Here such pixels are void (-1) and channels 1..133 are COCO's train ids 0..132.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sample_data import DATA, require
from torch import nn

from axial_deeplab.checkpoint.convert_deeplab2 import main as convert_main
from axial_deeplab.checkpoint.deeplab2_parity import config_opts, reference_outputs
from axial_deeplab.checkpoint.io import load_checkpoint_file
from axial_deeplab.checkpoint.parity import panoptic_agreement
from axial_deeplab.config import ConfigError, load_config
from axial_deeplab.data.build import build_catalog, build_test_dataset
from axial_deeplab.data.metadata import metadata_for_dataset
from axial_deeplab.engine.build import build_evaluate_fn, check_num_classes
from axial_deeplab.engine.evaluate import (
    VOID_LABEL,
    PanopticMetrics,
    PostProcessing,
    panoptic_prediction,
    semantic_labels,
)
from axial_deeplab.engine.inference import Predictor, build_predictor
from axial_deeplab.evaluation.semantic import SemanticEvaluator
from axial_deeplab.modeling.postprocessing import drop_void_channel, semantic_prediction

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "coco" / "deeplab2" / "resnet50_os16.yaml")
FIXTURES = REPO / "tests" / "fixtures" / "deeplab2" / "tiny"
COCO = DATA / "coco_panoptic_sample"
COCO_KEYS = ["resnet50_os16_coco", "resnet50_os32_coco", "resnet50_beta_os16_coco"]


def test_semantic_prediction_keeps_the_void_channel_in_the_argmax():
    # 4 outputs, channel 1 void; pixel (0, 0) is won by channel 0 -> class 0; (0, 1) by the void
    # channel -> -1 (dropping its logit first would give channel 2, class 1); (0, 2) by channel 3
    # -> class 2 (shifted down past the void channel).
    logits = torch.tensor([[[5.0, 0.0, 0.0]], [[1.0, 9.0, 0.0]], [[0.0, 8.0, 0.0]],
                           [[0.0, 0.0, 7.0]]])  # fmt: skip  # [4, 1, 3]
    assert semantic_prediction(logits, void_class=1).tolist() == [[0, -1, 2]]
    assert semantic_prediction(logits).tolist() == [[0, 1, 3]]  # no void channel: plain argmax
    assert drop_void_channel(logits, void_class=1)[:, 0, 1].tolist() == [0.0, 8.0, 0.0]
    assert drop_void_channel(logits) is logits


def _toy_outputs(void_region: np.ndarray) -> dict[str, torch.Tensor]:
    """A 20 x 20 image, 4 outputs (channel 0 void; classes: 0 stuff, 1 thing, 2 stuff). Left half
    class 0, right half class 2, one thing square (class 1) with its centre; ``void_region``
    pixels are won by the void channel."""
    sem = np.zeros((20, 20), np.int64)
    sem[:, 10:] = 2
    sem[4:8, 4:8] = 1
    logits = 10.0 * torch.nn.functional.one_hot(torch.from_numpy(sem) + 1, 4).permute(2, 0, 1)
    logits[0] = torch.where(torch.from_numpy(void_region), 20.0, -10.0)
    center = torch.zeros(1, 20, 20)
    center[0, 5, 5] = 1.0
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    return {"semantic": logits.float(), "center": center,
            "offset": torch.stack([5 - ys, 5 - xs])}  # fmt: skip


def test_pixels_won_by_the_void_channel_are_void_and_the_rest_shift_to_dataset_ids():
    void = np.zeros((20, 20), bool)
    void[10:, :10] = True  # 100 pixels of the left stuff region: enough for a stuff segment
    void[4:6, 4:8] = True  # the top half of the thing
    settings = PostProcessing(stuff_area=50, threshold=0.1, nms_kernel=3, top_k=10, void_class=0)
    labels, _ = panoptic_prediction(
        _toy_outputs(void), settings, thing_ids=[1], label_divisor=100
    )  # fmt: skip
    labels = labels.numpy()
    assert (labels[void] == VOID_LABEL).all()
    assert (labels[6:8, 4:8] == 1 * 100 + 1).all()  # thing class 1, instance 1
    assert (labels[:, 10:] == 2 * 100).all()  # stuff class 2
    left = np.zeros((20, 20), bool)
    left[:10, :10] = True
    left[4:8, 4:8] = False
    assert (labels[left] == 0).all()  # stuff class 0
    # The same outputs read as four classes: the void channel would be a class of its own.
    plain, _ = panoptic_prediction(
        _toy_outputs(void), PostProcessing(50, 0.1, 3, 10), thing_ids=[2], label_divisor=100
    )  # fmt: skip
    assert (plain.numpy()[10:, :10] == 0).all()


@pytest.mark.parametrize("key", COCO_KEYS)
def test_deeplab2_coco_outputs_give_deeplab2_panoptic_map_in_coco_train_ids(key):
    """deeplab2's own raw outputs (tiny fixture) with VOID_CLASS 0 and COCO's thing train ids
    0..79: deeplab2's panoptic prediction, with its label 0 void and classes shifted down by one
    (segments matched up to instance numbering, as ``check_reference`` compares them)."""
    folder = FIXTURES / key
    info = json.loads((folder / "info.json").read_text())
    ref = dict(np.load(folder / "reference.npz"))
    outputs = reference_outputs(ref, tuple(ref["input"].shape[1:3]))
    post = info["post_processing"]
    settings = PostProcessing(post["stuff_area_limit"], post["center_score_threshold"],
                              post["nms_kernel"], post["keep_k_centers"], void_class=0)  # fmt: skip
    coco = metadata_for_dataset("coco")
    assert coco["thing_ids"] == [t - 1 for t in info["thing_class_ids"]]
    ours, _ = panoptic_prediction(
        {k: v[0] for k, v in outputs.items()}, settings, thing_ids=coco["thing_ids"],
        label_divisor=info["label_divisor"],
    )  # fmt: skip
    theirs = ref["panoptic_pred"][0].astype(np.int64)
    divisor = info["label_divisor"]
    expected = np.where(theirs // divisor == info["ignore_label"], -1, theirs - divisor)
    agreement = panoptic_agreement(
        ours.numpy(), expected, label_divisor=divisor, void_ours=-1, void_reference=-1
    )
    assert agreement["identical"], agreement
    assert agreement["segments"] > 5


def test_semantic_evaluator_counts_void_predictions_as_misses():
    # class 0: 1 hit, 1 pixel predicted void -> IoU 1/2; class 1: 2 hits, 1 void -> 2/3;
    # class 2: 1 hit, 1 void -> 1/2; the void prediction on the ignored pixel counts nowhere.
    gt = np.array([[0, 0, 1, 255], [2, 2, 1, 1]])
    pred = np.array([[0, -1, 1, -1], [2, -1, -1, 1]])
    ev = SemanticEvaluator(3, ignore_label=255, void_prediction=-1)
    ev.process(gt, pred)
    result = ev.evaluate()
    assert list(result["per_class"].values()) == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert result["pixel_accuracy"] == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="prediction labels"):
        SemanticEvaluator(3, ignore_label=255).process(gt, pred)  # no void: a bad label


SAMPLES = [
    {
        "NAME": "coco_samples",
        "JSON_FILE": str(COCO / "panoptic_examples.json"),
        "PNG_DIR": str(COCO / "panoptic"),
        "IMAGE_DIR": str(COCO / "images"),
    }
]


def _cfg(*opts: str):
    """The deeplab2 COCO config evaluating on the 2 COCO samples at their files' size (the
    hand-computed metrics below use the ground truth as evaluation scores it)."""
    test = ["DATASETS.CUSTOM", str(SAMPLES), "DATASETS.TEST", "('coco_samples',)"]
    test += ["DATALOADER.NUM_WORKERS", "0", "TEST.PAD_TO_CROP", "False", "TEST.NUM_PICTURES", "0"]
    test += ["INPUT.MIN_SIZE_TEST", "0", "INPUT.MAX_SIZE_TEST", "0"]
    return load_config(CONFIG, [*test, *opts])


class FixedOutputs(nn.Module):
    """Returns, for each image, the outputs stored under its pixel sum."""

    def __init__(self, outputs: dict[float, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        per_image = [self.outputs[float(image.double().sum())] for image in images]
        return {k: torch.stack([o[k] for o in per_image]) for k in per_image[0]}


def _perfect(record: dict, num_stuff_fill: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Ground-truth train ids (void -> the stuff class ``num_stuff_fill``), centre heatmap with a
    peak at each thing's centroid, offsets pointing to it."""
    ids, segments = record["panoptic"].numpy(), record["segments_info"]
    sem = semantic_labels(ids, segments, -1)
    sem = np.where(sem < 0, num_stuff_fill, sem)
    height, width = ids.shape
    center = torch.zeros(1, height, width)
    offset = torch.zeros(2, height, width)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )  # [H, W] each
    for seg in segments:
        if seg["isthing"]:
            mask = torch.from_numpy(ids == seg["id"])
            cy, cx = int(ys[mask].mean()), int(xs[mask].mean())
            center[0, cy, cx] = 1.0
            offset[0][mask], offset[1][mask] = cy - ys[mask], cx - xs[mask]
    return sem, {"center": center, "offset": offset}


def _logits(sem: np.ndarray, num_classes: int) -> torch.Tensor:
    return 10.0 * torch.nn.functional.one_hot(torch.from_numpy(sem), num_classes).permute(2, 0, 1)


def test_evaluation_with_a_void_channel_equals_the_equivalent_133_class_model():
    """The COCO samples (133 classes) evaluated by ``build_evaluate_fn`` with
    ``configs/coco/deeplab2/resnet50_os16.yaml`` (134 outputs, VOID_CLASS 0) against the same
    prediction made by a 133-class model (the base COCO config's class count).

    1. Void never wins (its logit -1e4): PQ, SQ, RQ, mIoU and AP equal the 133-class model's.
    2. Void wins on one thing segment: the 133-class model gives the same panoptic map when it
       predicts there a stuff class absent from the image on fewer than STUFF_AREA pixels (void
       after the stuff-area rule), so PQ/SQ/RQ are equal; mIoU counts those pixels as misses of
       the thing's class only (hand-computed below)."""
    require(COCO)
    cfg = _cfg()
    catalog = build_catalog(cfg)
    dataset = build_test_dataset(cfg, catalog, "coco_samples")
    records, meta = list(dataset), dataset.metadata
    fill = 80  # first stuff train id ("banner")
    perfect = [_perfect(r, fill) for r in records]
    keys = [float(r["image"].double().sum()) for r in records]
    # The thing segment the void channel takes in case 2: a small one of the first image.
    ids, segs = records[0]["panoptic"].numpy(), records[0]["segments_info"]
    small = min((s for s in segs if s["isthing"] and not s["iscrowd"]), key=lambda s: s["area"])
    region = ids == small["id"]
    present = set(np.unique(perfect[0][0]).tolist())
    absent_stuff = next(c for c in range(81, 133) if c not in present)
    assert region.sum() < cfg.MODEL.PANOPTIC_DEEPLAB.STUFF_AREA

    def void_model(void_region: np.ndarray | None) -> FixedOutputs:
        outputs = {}
        for i, (key, (sem, rest)) in enumerate(zip(keys, perfect, strict=True)):
            void = torch.full((1, *sem.shape), -1e4)
            if i == 0 and void_region is not None:
                void[0][torch.from_numpy(void_region)] = 20.0
            outputs[key] = {"semantic": torch.cat([void, _logits(sem, 133)]), **rest}
        return FixedOutputs(outputs)

    def plain_model(region_class: int | None) -> FixedOutputs:
        outputs = {}
        for i, (key, (sem, rest)) in enumerate(zip(keys, perfect, strict=True)):
            if i == 0 and region_class is not None:
                sem = np.where(region, region_class, sem)
            outputs[key] = {"semantic": _logits(sem, 133), **rest}
        return FixedOutputs(outputs)

    device = torch.device("cpu")
    evaluate_void = build_evaluate_fn(cfg, catalog, device)
    plain_cfg = _cfg("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "133", "MODEL.SEM_SEG_HEAD.VOID_CLASS", "-1")
    evaluate_plain = build_evaluate_fn(plain_cfg, catalog, device)

    ours, reference = evaluate_void(void_model(None)), evaluate_plain(plain_model(None))
    assert reference["PQ"] > 50 and reference["PQ_th"] > 0 and reference["AP"] > 0, reference
    assert ours == pytest.approx(reference, abs=1e-9)
    # Instance scores (for AP) read the probabilities of the data-set classes.
    scores = []
    for model, settings in ((void_model(None), PostProcessing.from_config(cfg)),
                            (plain_model(None), PostProcessing.from_config(plain_cfg))):  # fmt: skip
        metrics = PanopticMetrics(meta, void_class=settings.void_class)
        one = {k: v[0] for k, v in model(records[0]["image"][None].float()).items()}
        labels, _ = panoptic_prediction(
            one, settings, thing_ids=meta.thing_train_ids, label_divisor=meta.label_divisor
        )
        metrics.process(records[0], labels, one)
        scores.append([d["score"] for d in metrics.ap.detections])
    assert len(scores[0]) > 3 and scores[0] == pytest.approx(scores[1], rel=1e-5)

    ours = evaluate_void(void_model(region))
    reference = evaluate_plain(plain_model(absent_stuff))
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-9), key
    perfect_run = evaluate_void(void_model(None))
    assert ours["PQ_th"] < perfect_run["PQ_th"]  # the segment is lost: a false negative
    # mIoU: only the thing's class c changes: its hits drop by the region's pixels and its
    # union keeps them (misses); the other classes keep their IoU of the perfect prediction.
    ev = SemanticEvaluator(133, ignore_label=-1)
    for (sem, _), record in zip(perfect, records, strict=True):
        ev.process(semantic_labels(record["panoptic"].numpy(), record["segments_info"], -1), sem)
    iou = np.array(list(ev.evaluate()["per_class"].values()))  # [133], NaN for absent classes
    c, conf = small["category_id"], ev.confusion
    iou[c] = (conf[c, c] - region.sum()) / (conf[c].sum() + conf[:, c].sum() - conf[c, c])
    expected = 100 * float(np.nanmean(iou))
    assert ours["mIoU"] == pytest.approx(expected, abs=1e-9)
    assert ours["mIoU"] < perfect_run["mIoU"]


def test_class_count_check_knows_the_void_channel():
    coco = type("Meta", (), {"num_classes": 133, "panoptic_json": "panoptic_val2017.json"})()
    check_num_classes(load_config(CONFIG), coco, "coco_2017_val_panoptic")  # 134 = 133 + void
    plain = load_config(CONFIG, ["MODEL.SEM_SEG_HEAD.VOID_CLASS", "-1"])
    with pytest.raises(ConfigError, match=r"NUM_CLASSES is 134 .* 133 classes.*VOID_CLASS"):
        check_num_classes(plain, coco, "coco_2017_val_panoptic")
    wrong = load_config(CONFIG, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "135"])
    with pytest.raises(ConfigError, match=r"NUM_CLASSES is 135 with a void channel.*must be 134"):
        check_num_classes(wrong, coco, "coco_2017_val_panoptic")
    with pytest.raises(ConfigError, match="training with one is not supported"):
        check_num_classes(load_config(CONFIG), coco, "coco_2017_train_panoptic", training=True)
    with pytest.raises(ConfigError, match="VOID_CLASS must be -1"):
        load_config(CONFIG, ["MODEL.SEM_SEG_HEAD.VOID_CLASS", "134"])
    # Evaluating weights: their class count is fixed, so no NUM_CLASSES advice (it would not load)
    weighted = load_config(
        CONFIG, ["MODEL.SEM_SEG_HEAD.VOID_CLASS", "-1", "MODEL.WEIGHTS", "m.pth"]
    )
    with pytest.raises(ConfigError, match=r"the weights m.pth predict 134 classes: evaluate them"):
        check_num_classes(weighted, coco, "coco_2017_val_panoptic")
    cityscapes = type("Meta", (), {"num_classes": 19, "panoptic_json": "cityscapes.json"})()
    void_weights = load_config(CONFIG, ["MODEL.WEIGHTS", "m.pth"])  # 134 outputs, void 0
    with pytest.raises(ConfigError) as failed:  # (an audit was told NUM_CLASSES 20, or 19)
        check_num_classes(void_weights, cityscapes, "cityscapes_fine_panoptic_val")
    assert "the weights m.pth predict 133 classes and void: evaluate them on" in str(failed.value)
    assert "NUM_CLASSES must be" not in str(failed.value)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, list[str]]:
    """The tiny deeplab2 COCO fixture converted by the CLI (``VOID_CLASS 0`` from its config)."""
    key = "resnet50_os16_coco"
    out = tmp_path_factory.mktemp("void") / "converted.pth"
    opts = config_opts(json.loads((FIXTURES / key / "info.json").read_text())["overrides"])
    convert_main([str(FIXTURES / key), str(out), "--config-file", CONFIG, *opts])
    return out, opts


def test_converted_coco_checkpoint_names_the_133_coco_classes_and_never_a_void_segment(converted):
    path, opts = converted
    saved = load_checkpoint_file(path)
    assert len(saved.metadata["class_names"]) == 133 and "void" not in saved.metadata["class_names"]
    assert saved.metadata["thing_ids"] == list(range(80))
    assert "VOID_CLASS: 0" in saved.config_yaml
    cfg = load_config(CONFIG, [*opts, "MODEL.WEIGHTS", str(path)])
    predictor = build_predictor(cfg, saved.metadata, torch.device("cpu"))
    ref = dict(np.load(FIXTURES / "resnet50_os16_coco" / "reference.npz"))
    image = np.clip(np.round(ref["input"][0]), 0, 255).astype(np.uint8)  # [49, 49, 3]
    with torch.no_grad():
        raw = predictor.model(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    won_by_void = (raw["semantic"][0].argmax(0) == 0).numpy()  # [49, 49]
    assert won_by_void.any(), "the fixture's model predicts void somewhere: the check needs it"
    prediction = predictor.predict(image)
    assert (prediction["semantic"][won_by_void] == -1).all()
    assert (prediction["panoptic"][won_by_void] == VOID_LABEL).all()
    names = {s["category_name"] for s in prediction["segments_info"]}
    assert names and "void" not in names


def test_eval_only_on_coco_samples_with_a_converted_deeplab2_model(converted, tmp_path):
    """``tools/train_net.py --eval-only MODEL.WEIGHTS converted.pth`` (the README's command) of
    the converted tiny model on the COCO samples (long side 97 pixels): passes the class-count
    check, runs, and the predictions name COCO category ids."""
    require(COCO)
    from axial_deeplab.engine.launch import default_argument_parser
    from axial_deeplab.engine.train_net import run

    path, _ = converted
    args = ["--eval-only", "MODEL.WEIGHTS", str(path)]  # the config stored in the file
    args += ["DATASETS.CUSTOM", str(SAMPLES), "DATASETS.TEST", "('coco_samples',)"]
    args += ["DATALOADER.NUM_WORKERS", "0", "TEST.PAD_TO_CROP", "False", "TEST.NUM_PICTURES", "1"]
    args += ["INPUT.MIN_SIZE_TEST", "1000", "INPUT.MAX_SIZE_TEST", "97"]
    args += ["TEST.SAVE_PREDICTIONS", "True", "OUTPUT_DIR", str(tmp_path)]
    metrics = run(default_argument_parser("test").parse_args(args))
    assert set(metrics) >= {"PQ", "mIoU"}
    pred = json.loads((tmp_path / "inference" / "panoptic.json").read_text())
    coco_ids = {c["id"] for c in json.loads((COCO / "panoptic_examples.json").read_text())[
        "categories"]}  # fmt: skip
    used = {s["category_id"] for a in pred["annotations"] for s in a["segments_info"]}
    assert used and used <= coco_ids
    shutil.rmtree(tmp_path / "inference")


class ToyModel(nn.Module):
    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[None].expand(len(images), *v.shape) for k, v in self.outputs.items()}


def test_predictor_of_a_void_channel_model_equals_the_133_class_model_where_void_never_wins():
    """``Predictor`` (``tools/infer.py``): with the void channel never winning, the same
    segments, names, scores and semantic map as the model without that channel; where it
    wins, no segment and semantic -1."""
    meta = {"class_names": ["sky", "car", "road"], "thing_ids": [1], "label_divisor": 100}
    image = np.zeros((20, 20, 3), np.uint8)
    settings = PostProcessing(stuff_area=50, threshold=0.1, nms_kernel=3, top_k=10)
    with_void = _toy_outputs(np.zeros((20, 20), bool))
    without = {**with_void, "semantic": with_void["semantic"][1:]}
    void_settings = PostProcessing(50, 0.1, 3, 10, void_class=0)
    ours = Predictor(ToyModel(with_void), metadata=meta, postprocessing=void_settings)
    reference = Predictor(ToyModel(without), metadata=meta, postprocessing=settings)
    a, b = ours.predict(image), reference.predict(image)
    assert (a["semantic"] == b["semantic"]).all() and (a["panoptic"] == b["panoptic"]).all()
    assert [s["category_name"] for s in a["segments_info"]] == ["sky", "car", "road"]
    for sa, sb in zip(a["segments_info"], b["segments_info"], strict=True):
        assert sa == {**sb, "score": pytest.approx(sb["score"], rel=1e-5)}
    void = np.zeros((20, 20), bool)
    void[:, :10] = True  # sky and car
    c = Predictor(ToyModel(_toy_outputs(void)), metadata=meta, postprocessing=void_settings)
    c = c.predict(image)
    assert [s["category_name"] for s in c["segments_info"]] == ["road"]
    assert (c["semantic"][void] == -1).all() and (c["panoptic"][void] == VOID_LABEL).all()
    with pytest.raises(ValueError, match=r"predicts 4 classes \(channel 0 void\) but metadata"):
        Predictor(ToyModel(with_void), metadata={"class_names": ["a", "b", "c", "d"]},
                  postprocessing=void_settings).predict(image)  # fmt: skip


def test_infer_cli_runs_a_converted_coco_checkpoint(converted, tmp_path):
    """``tools/infer.py --weights converted.pth``: config and classes from the file; the JSON
    names COCO classes only (the void pixels themselves: the test above)."""
    from axial_deeplab.engine.infer_net import main as infer_main
    from axial_deeplab.utils.atomic import write_rgb_png

    path, _ = converted
    ref = dict(np.load(FIXTURES / "resnet50_os16_coco" / "reference.npz"))
    photo = tmp_path / "photo.png"
    write_rgb_png(str(photo), np.clip(np.round(ref["input"][0]), 0, 255).astype(np.uint8))
    out = tmp_path / "out"
    infer_main(["--weights", str(path), "--input", str(photo), "--output", str(out)])
    record = json.loads((out / "photo.json").read_text())
    coco = set(metadata_for_dataset("coco")["class_names"])
    names = [s["category_name"] for s in record["segments_info"]]
    assert names and set(names) <= coco


def test_export_refuses_a_void_channel_model(converted, tmp_path):
    from axial_deeplab.export.cli import main as export_main

    path, _ = converted
    args = ["--weights", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]
    with pytest.raises(SystemExit, match="void output channel .*VOID_CLASS 0"):
        export_main(args)
