"""The detectron2 plugin (``axial_deeplab.d2``): registries, model, checkpoints, data, evaluators.

Runs where detectron2 is installed (README, "detectron2 plugin"); skipped elsewhere. The
end-to-end run of ``tools/d2_train_net.py`` is in ``test_d2_train_net.py``.
"""

import numpy as np
import pytest
import torch

pytest.importorskip(
    "detectron2",
    reason="detectron2 is not installed; it is not on PyPI: pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git@c69939aa' (README, 'detectron2 plugin')",
)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import Backbone, build_backbone, build_model  # noqa: E402

from axial_deeplab.checkpoint.io import load_state_dict_file  # noqa: E402
from axial_deeplab.config import load_config as native_load_config  # noqa: E402
from axial_deeplab.d2 import (  # noqa: E402
    AxialDeepLab,
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
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset  # noqa: E402
from axial_deeplab.engine.evaluate import (  # noqa: E402
    PostProcessing,
    evaluate_panoptic,
    labels_to_segments,
    panoptic_prediction,
)
from axial_deeplab.evaluation.panoptic import PanopticEvaluator  # noqa: E402
from axial_deeplab.evaluation.synthetic import (  # noqa: E402
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)
from axial_deeplab.modeling.build import build_model as native_build_model  # noqa: E402
from axial_deeplab.modeling.targets import PanopticTargetGenerator  # noqa: E402

SYNTHETIC_YAML = "configs/quickstart/synthetic_axial.yaml"
SMALL = ["INPUT.CROP.SIZE", "[48, 64]", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
TRANSLATED = {"VERSION", "MODEL.META_ARCHITECTURE", "SOLVER.AMP", "SOLVER.CLIP_GRADIENTS"}
ALL_STAGES = ["MODEL.AXIAL_RESNET.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("d2_synthetic")
    write_synthetic_dataset(
        str(out), splits={"train": 4, "val": 3}, height=48, width=64, seed=3, formats=("coco",)
    )
    return str(out)


@pytest.fixture
def cfg(synthetic_dir):
    cfg = load_config(SYNTHETIC_YAML, SMALL)
    register_datasets(cfg, synthetic_dir=synthetic_dir)
    return cfg


def _native(opts=()):
    return native_load_config(SYNTHETIC_YAML, SMALL + list(opts))


def leaves(node, prefix=""):
    """``(dotted key, value)`` of every leaf of a config."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# ----------------------------------------------------------------------------------- config
def test_config_adds_every_native_default():
    """Every key of our defaults is in detectron2's config with our value, except the three
    translated keys (their detectron2 form is checked) and detectron2's VERSION."""
    d2_cfg, native = load_config(), native_load_config()
    d2_leaves = dict(leaves(d2_cfg))
    for key, value in leaves(native):
        if key not in TRANSLATED:
            assert d2_leaves[key] == value, key
    assert d2_cfg.MODEL.META_ARCHITECTURE == "AxialDeepLab"
    assert d2_cfg.SOLVER.AMP.ENABLED is False and d2_cfg.SOLVER.CLIP_GRADIENTS.ENABLED is False


def test_config_translates_native_scalars():
    cfg = load_config(SYNTHETIC_YAML, ["SOLVER.AMP", "True", "SOLVER.CLIP_GRADIENTS", "2.5"])
    assert cfg.SOLVER.AMP.ENABLED is True
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (True, "norm", 2.5, 2)


@pytest.mark.parametrize(
    "path",
    [
        "configs/coco/axial_deeplab_s_641.yaml",
        "configs/coco/axial_deeplab_l_641.yaml",
        "configs/cityscapes/axial_deeplab_xl_1025x2049.yaml",
        "configs/cityscapes/panoptic_deeplab_r50_1025x2049.yaml",
        SYNTHETIC_YAML,
    ],
)
def test_same_yaml_gives_same_values_in_both_engines(path):
    d2_leaves = dict(leaves(load_config(path)))
    for key, value in leaves(native_load_config(path)):
        if key not in TRANSLATED:
            assert d2_leaves[key] == value, key


# --------------------------------------------------------------------------------- backbone
@pytest.mark.parametrize(
    "output_stride, stride_mode, span, divisibility",
    [(16, "subsample", 33, 0), (32, "subsample", 17, 0), (16, "avgpool", 9, 16)],
)
def test_backbone_registry_shapes(output_stride, stride_mode, span, divisibility):
    """axial_resnet_tiny: stage i has attention width int(128 * 2**i * 0.25) and twice that
    many output channels (64, 128, 256, 512); the stem has stride 4, then each stage halves,
    except res5 at output stride 16. size_divisibility: the output stride with avg-pool striding
    (the pooled sizes must divide evenly), else 0."""
    opts = ALL_STAGES + [
        "MODEL.AXIAL_RESNET.OUTPUT_STRIDE", str(output_stride),
        "MODEL.AXIAL_RESNET.STRIDE_MODE", stride_mode,
        "MODEL.AXIAL_RESNET.SPAN", str(span),
    ]  # fmt: skip
    backbone = build_backbone(load_config(SYNTHETIC_YAML, opts))
    assert isinstance(backbone, Backbone)
    strides = [4, 8, 16, output_stride]
    expected = {
        f"res{i + 2}": ShapeSpec(channels=c, stride=s)
        for i, (c, s) in enumerate(zip([64, 128, 256, 512], strides, strict=True))
    }
    assert backbone.output_shape() == expected
    assert all(isinstance(s, ShapeSpec) for s in backbone.output_shape().values())
    assert backbone.size_divisibility == divisibility
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, 64, 96))
    for name, spec in expected.items():
        assert features[name].shape == (1, spec.channels, 64 // spec.stride, 96 // spec.stride)


def test_backbone_rejects_other_channel_counts():
    cfg = load_config(SYNTHETIC_YAML, ["MODEL.PIXEL_MEAN", "[0.0]", "MODEL.PIXEL_STD", "[1.0]"])
    with pytest.raises(ValueError, match="3-channel"):
        build_backbone(cfg)


# ------------------------------------------------------------------------------- meta-arch
def _mapped(cfg, split: str, is_train: bool) -> list[dict]:
    name = f"synthetic_coco_{split}"
    mapper = AxialDeepLabDatasetMapper(cfg, is_train=is_train, dataset_name=name)
    return [mapper(d) for d in DatasetCatalog.get(name)]


def test_meta_arch_train_losses_finite(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, AxialDeepLab)
    batch = _mapped(cfg, "train", True)[:2]
    losses = model.train()(batch)
    assert set(losses) == {"loss_sem_seg", "loss_center", "loss_offset"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.semantic_head.predictor.weight.grad.abs().sum() > 0


def test_meta_arch_pads_images_of_different_sizes(cfg):
    """Two crops of different sizes train together: the smaller one is padded with the pixel
    mean (image) and ignore / zero weights (targets), so its loss equals its loss alone when the
    semantic loss keeps every pixel (top-k 1.0) and BN uses running statistics."""
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TOP_K = 1.0
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else None)
    big, small = _mapped(cfg, "train", True)[:2]
    small = {
        k: (v[..., :40, :56] if torch.is_tensor(v) and v.dim() >= 2 else v)
        for k, v in small.items()
    }
    alone = model([small])
    with torch.no_grad():
        together_small = model([small, small])
    mixed = model([big, small])
    for key in alone:
        assert torch.allclose(alone[key], together_small[key], atol=1e-5)
        assert torch.isfinite(mixed[key])


def test_meta_arch_eval_outputs(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = _mapped(cfg, "val", False)[:2]
    inputs[1] = {**inputs[1], "height": 60, "width": 80}  # output at another size
    with torch.no_grad():
        outputs = model(inputs)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for out, size in zip(outputs, [(48, 64), (60, 80)], strict=True):
        assert out["sem_seg"].shape == (num_classes, *size)
        labels, segments = out["panoptic_seg"]
        assert segments is None and labels.shape == size and labels.dtype == torch.int64
        instances = out["instances"]
        assert instances.image_size == size
        assert set(instances.get_fields()) == {"pred_masks", "pred_boxes", "scores", "pred_classes"}
        thing_ids = set(native_metadata("synthetic_coco_val").thing_train_ids)
        assert set(instances.pred_classes.tolist()) <= thing_ids


# ------------------------------------------------------------------ checkpoints, both ways
def test_state_dict_keys_identical_and_outputs_equal(cfg, tmp_path):
    torch.manual_seed(0)
    native = native_build_model(_native()).eval()
    torch.manual_seed(1)
    plugin = build_model(cfg).eval()
    assert list(native.state_dict()) == list(plugin.state_dict())
    assert {k: v.shape for k, v in native.state_dict().items()} == {
        k: v.shape for k, v in plugin.state_dict().items()
    }
    images = torch.stack([x["image"] for x in _mapped(cfg, "val", False)]).float()

    # native -> plugin: a native trainer checkpoint ({"model": ...}) through detectron2's loader
    torch.save({"model": native.state_dict(), "iteration": 7}, tmp_path / "native.pth")
    DetectionCheckpointer(plugin).load(str(tmp_path / "native.pth"))
    with torch.no_grad():
        expected, got = native(images), plugin.predict_raw(images)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

    # plugin eval output = native post-processing of the native outputs
    with torch.no_grad():
        outputs = plugin(_mapped(cfg, "val", False))
    meta = native_metadata("synthetic_coco_val")
    for i, out in enumerate(outputs):
        labels, _ = panoptic_prediction(
            {k: v[i] for k, v in expected.items()},
            PostProcessing.from_config(cfg),
            thing_ids=meta.thing_train_ids,
            label_divisor=meta.label_divisor,
        )
        assert torch.equal(out["panoptic_seg"][0], labels)

    # plugin -> native: detectron2's checkpoint read by the native loader
    torch.manual_seed(2)
    for p in plugin.parameters():
        p.data.normal_()
    DetectionCheckpointer(plugin, save_dir=str(tmp_path)).save("plugin")
    native.load_state_dict(load_state_dict_file(tmp_path / "plugin.pth"))
    with torch.no_grad():
        expected, got = plugin.predict_raw(images), native(images)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_detectron2_resnet_feeds_our_head(cfg):
    """detectron2's own ResNet-18 (res5 not dilated: output stride 32) under our decoders."""
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.merge_from_list(
        ["DEPTH", "18", "RES2_OUT_CHANNELS", "64", "RES5_DILATION", "1", "NORM", "BN"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    shapes = model.backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (64, 4),
        "res3": (128, 8),
        "res5": (512, 32),
    }
    losses = model.train()(_mapped(cfg, "train", True)[:2])
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(_mapped(cfg, "val", False)[:1])[0]
    assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 48, 64)


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


def test_detectron2_evaluation_equals_native_evaluation(cfg, synthetic_dir):
    """The same weights evaluated by the native loop and by detectron2's inference_on_dataset
    with our wrapped evaluators: the same PQ/SQ/RQ and mIoU."""
    torch.manual_seed(0)
    native_cfg = _native(["DATASETS.TEST", "('synthetic_coco_val',)"])
    native = native_build_model(native_cfg).eval()
    plugin = build_model(cfg).eval()
    plugin.load_state_dict(native.state_dict())
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
    assert got["mIoU"] > 0


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
