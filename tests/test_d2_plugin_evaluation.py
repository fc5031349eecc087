"""The detectron2 plugin's data and evaluation: registered datasets, the dataset mapper, the
wrapped evaluators, and detectron2's inference loop against the native evaluation.

Runs where detectron2 is installed (README, "detectron2 plugin"); skipped elsewhere. The model
side of the plugin is in ``test_d2_plugin.py``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip(
    "detectron2",
    reason="detectron2 is not installed; it is not on PyPI: pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git@c69939aa' (README, 'detectron2 plugin')",
)

from d2_synthetic import SMALL, SYNTHETIC_YAML, _mapped, _native  # noqa: E402
from d2_synthetic import cfg as cfg  # noqa: E402 (a fixture)
from d2_synthetic import synthetic_dir as synthetic_dir  # noqa: E402 (a fixture)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from axial_deeplab.d2 import (  # noqa: E402
    AxialDeepLabDatasetMapper,
    MaskAPEvaluator,
    PanopticQualityEvaluator,
    build_evaluator,
    load_config,
    register_datasets,
)
from axial_deeplab.d2.data import d2_metadata, native_metadata  # noqa: E402
from axial_deeplab.d2.train import Trainer  # noqa: E402
from axial_deeplab.data.build import build_catalog, build_test_dataset  # noqa: E402
from axial_deeplab.data.catalog import DatasetMetadata  # noqa: E402
from axial_deeplab.data.loader import build_test_loader  # noqa: E402
from axial_deeplab.engine.evaluate import (  # noqa: E402
    PostProcessing,
    evaluate_panoptic,
    labels_to_segments,
)
from axial_deeplab.evaluation.panoptic import PanopticEvaluator  # noqa: E402
from axial_deeplab.evaluation.synthetic import (  # noqa: E402
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)
from axial_deeplab.modeling.build import build_model as native_build_model  # noqa: E402
from axial_deeplab.modeling.targets import PanopticTargetGenerator  # noqa: E402


# ------------------------------------------------------------------------------------- data
def test_datasets_registered_with_our_records_and_metadata(cfg, synthetic_dir):
    catalog = build_catalog(_native(), synthetic_dir=synthetic_dir)
    records, meta = catalog.get("synthetic_coco_train")
    assert DatasetCatalog.get("synthetic_coco_train") == records
    d2_meta = MetadataCatalog.get("synthetic_coco_train")
    assert (
        d2_meta.thing_dataset_id_to_contiguous_id
        == d2_metadata(meta)["thing_dataset_id_to_contiguous_id"]
    )
    assert d2_meta.label_divisor == meta.label_divisor
    assert native_metadata("synthetic_coco_train").categories == meta.categories
    names = DatasetCatalog.list()
    for name in ("coco_2017_val_panoptic", "cityscapes_fine_panoptic_train"):
        assert name in names  # ours replace detectron2's built-in entries
        assert DatasetCatalog[name].func.__module__ == "axial_deeplab.d2.data"


def test_custom_dataset_registration(synthetic_dir):
    coco = f"{synthetic_dir}/coco"
    entry = {
        "NAME": "my_panoptic",
        "JSON_FILE": f"{coco}/panoptic_val.json",
        "PNG_DIR": f"{coco}/panoptic/val",
        "IMAGE_DIR": f"{coco}/images/val",
    }
    custom = repr([entry])
    cfg = load_config(SYNTHETIC_YAML, SMALL + ["DATASETS.CUSTOM", custom])
    assert "my_panoptic" in register_datasets(cfg)
    assert len(DatasetCatalog.get("my_panoptic")) == 3
    assert MetadataCatalog.get("my_panoptic").evaluator_type == "coco_panoptic_seg"


def test_mapper_train_and_test_outputs(cfg):
    name = "synthetic_coco_train"
    record = DatasetCatalog.get(name)[0]
    train = AxialDeepLabDatasetMapper(cfg, is_train=True)(record)
    assert train["image"].shape == (3, 48, 64) and train["image"].dtype == torch.uint8
    # the targets are those of our generator on the mapped (augmented) panoptic map
    generator = PanopticTargetGenerator(
        thing_ids=native_metadata(name).thing_train_ids, sigma=3.0, small_instance_area=256
    )
    targets = generator(train["panoptic"].numpy(), train["segments_info"])
    for key in ("sem_seg", "sem_seg_weights", "center", "offset", "offset_weights"):
        assert torch.equal(train[key], targets[key]), key
    test = AxialDeepLabDatasetMapper(cfg, is_train=False, dataset_name=name)(record)
    assert "sem_seg" not in test and test["pan_seg_file_name"] == record["pan_seg_file_name"]
    assert (test["height"], test["width"]) == (48, 64)
    bgr = AxialDeepLabDatasetMapper(cfg, is_train=False, dataset_name=name, image_format="BGR")(
        record
    )
    assert torch.equal(bgr["image"], test["image"].flip(0))


# ------------------------------------------------------------------------------- evaluation
def test_evaluator_wrapper_equals_native_on_perturbed_predictions():
    """Non-trivial PQ (perturbed synthetic predictions): the wrapper's numbers are the native
    PanopticEvaluator's, for id maps with segments_info and for label maps."""
    rng = np.random.default_rng(0)
    cats = synthetic_categories()  # ids 1..13 -> train ids 0..12
    metadata = DatasetMetadata(
        name="perturbed",
        categories=tuple(
            {"id": c["id"], "train_id": c["id"] - 1, "name": c["name"], "isthing": c["isthing"],
             "color": (0, 0, 0)}
            for c in cats
        ),
    )  # fmt: skip
    train_cats = [{**c, "id": c["id"] - 1} for c in cats]
    things = metadata.thing_train_ids
    wrapper, native = PanopticQualityEvaluator(metadata), PanopticEvaluator(train_cats)
    as_labels, native_labels = PanopticQualityEvaluator(metadata), PanopticEvaluator(train_cats)
    for _ in range(5):
        gt, gt_seg = synthetic_ground_truth(rng, cats, 40, 56)
        pred, pred_seg = synthetic_prediction(rng, cats, gt, gt_seg)
        gt_seg = [{**s, "category_id": s["category_id"] - 1} for s in gt_seg]
        pred_seg = [{**s, "category_id": s["category_id"] - 1} for s in pred_seg]
        inputs = [{"panoptic": torch.from_numpy(gt), "segments_info": gt_seg}]
        wrapper.process(inputs, [{"panoptic_seg": (torch.from_numpy(pred), pred_seg)}])
        native.process(gt, gt_seg, pred, pred_seg)
        labels = np.full(pred.shape, -1, np.int64)  # class * 1000 + instance, -1 void
        for k, s in enumerate(pred_seg):
            instance = k + 1 if s["category_id"] in things else 0
            labels[pred == s["id"]] = s["category_id"] * 1000 + instance
        as_labels.process(inputs, [{"panoptic_seg": (torch.from_numpy(labels), None)}])
        ids, segs = labels_to_segments(labels, label_divisor=1000, thing_ids=things)
        native_labels.process(gt, gt_seg, ids, segs)
    for evaluator, reference in ((wrapper, native), (as_labels, native_labels)):
        expected = reference.evaluate()
        got = evaluator.evaluate()["panoptic_seg"]
        assert 5 < got["PQ"] < 95, got  # non-trivial numbers
        assert got["PQ"] == 100 * expected["All"]["pq"]
        assert got["SQ_th"] == 100 * expected["Things"]["sq"]
        assert got["RQ_st"] == 100 * expected["Stuff"]["rq"]


def _oracle_forward(cfg, split: str):
    """A ``PanopticDeepLab.forward`` that answers each image of ``split`` with its ground truth's
    targets (semantic one-hot logits, centre heatmap, offsets), so PQ, SQ, RQ and AP are high."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, cfg.INPUT.RANDOM_FLIP = 1.0, 1.0, "none"
    mapper = AxialDeepLabDatasetMapper(cfg, is_train=True)  # targets, no augmentation
    answers = [mapper(d) for d in DatasetCatalog.get(f"synthetic_coco_{split}")]
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES

    def forward(self, images):  # [N, 3, H, W], possibly padded
        out = {"semantic": images.new_zeros(len(images), num_classes, *images.shape[-2:]),
               "center": images.new_zeros(len(images), 1, *images.shape[-2:]),
               "offset": images.new_zeros(len(images), 2, *images.shape[-2:])}  # fmt: skip
        for n, image in enumerate(images):
            a = next(a for a in answers if torch.equal(image[:, :48, :64], a["image"].float()))
            sem = a["sem_seg"].clone()
            sem[sem == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE] = 0
            out["semantic"][n, :, :48, :64] = 20.0 * F.one_hot(sem, num_classes).permute(2, 0, 1)
            out["center"][n, :, :48, :64] = a["center"]
            out["offset"][n, :, :48, :64] = a["offset"]
        return out

    return forward


def test_detectron2_evaluation_equals_native_evaluation(cfg, synthetic_dir, monkeypatch):
    """The same model evaluated by the native loop and by detectron2's inference_on_dataset
    with our wrapped evaluators: the same PQ/SQ/RQ, mIoU and AP. The model answers with the
    ground truth's targets (``_oracle_forward``), so that none of them is 0 == 0."""
    torch.manual_seed(0)
    native_cfg = _native(["DATASETS.TEST", "('synthetic_coco_val',)"])
    native = native_build_model(native_cfg).eval()
    plugin = build_model(cfg).eval()
    monkeypatch.setattr(type(native), "forward", _oracle_forward(cfg, "val"))
    catalog = build_catalog(native_cfg, synthetic_dir=synthetic_dir)
    dataset = build_test_dataset(native_cfg, catalog, "synthetic_coco_val")
    expected = evaluate_panoptic(
        native,
        build_test_loader(dataset),
        dataset.metadata,
        PostProcessing.from_config(native_cfg),
        device=torch.device("cpu"),
    )
    name = "synthetic_coco_val"
    results = inference_on_dataset(
        plugin, Trainer.build_test_loader(cfg, name), build_evaluator(name)
    )
    got = {**results["panoptic_seg"], "mIoU": results["sem_seg"]["mIoU"]}
    got.update(AP=results["segm"]["AP"], AP50=results["segm"]["AP50"])
    assert got == pytest.approx(expected, abs=1e-9)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP", "AP50"):
        assert got[key] > 30, (key, got[key])


def test_resized_test_images_are_evaluated_at_the_file_size(cfg):
    """INPUT.MIN_SIZE_TEST 96 doubles the 48x64 scenes for the model; predictions come back at
    the file's 48x64 (detectron2's height/width) and are scored against the PNG itself."""
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST = 96
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    loader = Trainer.build_test_loader(cfg, "synthetic_coco_val")
    first = next(iter(loader))[0]
    assert first["image"].shape[-2:] == (96, 128) and first["panoptic"].shape == (96, 128)
    with torch.no_grad():
        assert model([first])[0]["panoptic_seg"][0].shape == (48, 64)
    results = inference_on_dataset(model, loader, build_evaluator("synthetic_coco_val"))
    assert 0 < results["sem_seg"]["mIoU"] <= 100


def test_mask_ap_of_ground_truth_instances_is_100(cfg):
    """Predicting every non-crowd thing segment of the ground truth with score 1 gives mask AP
    100 (each gt matched at IoU 1); dropping half the instances of every image lowers it."""
    from detectron2.structures import Instances

    name = "synthetic_coco_val"
    meta = native_metadata(name)
    inputs = _mapped(cfg, "val", False)

    def predictions(keep_every: int) -> list[dict]:
        outputs = []
        for x in inputs:
            segs = [
                s
                for s in x["segments_info"]
                if s["category_id"] in meta.thing_train_ids and not s.get("iscrowd", 0)
            ][::keep_every]
            found = Instances((x["height"], x["width"]))
            found.pred_masks = torch.stack([x["panoptic"] == s["id"] for s in segs])
            found.scores = torch.ones(len(segs))
            found.pred_classes = torch.tensor([s["category_id"] for s in segs])
            outputs.append({"instances": found})
        return outputs

    for keep_every, check in ((1, lambda ap: ap == pytest.approx(100.0)), (2, lambda ap: ap < 90)):
        evaluator = MaskAPEvaluator(meta)
        evaluator.process(inputs, predictions(keep_every))
        assert check(evaluator.evaluate()["segm"]["AP"])
