"""The detectron2 plugin (``axial_deeplab.d2``): registries, config, backbone, meta-architecture,
checkpoints and the model builders.

Runs where detectron2 is installed (README, "detectron2 plugin"); skipped elsewhere. Datasets,
the mapper and the evaluators are in ``test_d2_plugin_evaluation.py``; the end-to-end run of
``tools/d2_train_net.py`` is in ``test_d2_train_net.py``.
"""

import warnings

import pytest
import torch

pytest.importorskip(
    "detectron2",
    reason="detectron2 is not installed; it is not on PyPI: pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git@c69939aa' (README, 'detectron2 plugin')",
)

from d2_synthetic import SYNTHETIC_YAML, _mapped, _native  # noqa: E402
from d2_synthetic import cfg as cfg  # noqa: E402 (a fixture)
from d2_synthetic import synthetic_dir as synthetic_dir  # noqa: E402 (a fixture)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import Backbone, build_backbone, build_model  # noqa: E402

from axial_deeplab.checkpoint.io import load_state_dict_file  # noqa: E402
from axial_deeplab.config import ConfigError  # noqa: E402
from axial_deeplab.config import load_config as native_load_config  # noqa: E402
from axial_deeplab.d2 import AxialDeepLab, load_config  # noqa: E402
from axial_deeplab.d2.data import native_metadata  # noqa: E402
from axial_deeplab.engine.evaluate import PostProcessing, panoptic_prediction  # noqa: E402
from axial_deeplab.layers.precision import cpu_has_fast_bfloat16  # noqa: E402
from axial_deeplab.modeling.build import build_model as native_build_model  # noqa: E402

TRANSLATED = {"VERSION", "MODEL.META_ARCHITECTURE", "SOLVER.AMP", "SOLVER.CLIP_GRADIENTS"}
ALL_STAGES = ["MODEL.AXIAL_RESNET.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']"]


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
    # load_config refuses such a config (below); a config built by hand reaches the builder
    cfg = load_config(SYNTHETIC_YAML)
    cfg.defrost()
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0], [1.0]
    with pytest.raises(ValueError, match="3-channel"):
        build_backbone(cfg)


@pytest.mark.parametrize(
    "opts,named",
    [
        (
            ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0"],
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES must be an integer >= 1, got 0",
        ),
        (["MODEL.DEVICE", "tpu"], "MODEL.DEVICE must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (["MODEL.PIXEL_MEAN", "[0.0]"], r"MODEL.PIXEL_MEAN must be 3 values \(R, G, B\)"),
        (["INPUT.FORMAT", "YUV"], r"INPUT.FORMAT must be one of \['RGB', 'BGR'\], got 'YUV'"),
    ],
)
def test_config_values_are_checked_as_in_the_native_engine(opts, named):
    with pytest.raises(ConfigError, match=f"synthetic_axial.yaml with overrides: {named}"):
        load_config(SYNTHETIC_YAML, opts)


def test_config_accepts_bgr_input():  # the plugin's mapper feeds BGR; the native engine does not
    assert load_config(SYNTHETIC_YAML, ["INPUT.FORMAT", "BGR"]).INPUT.FORMAT == "BGR"
    with pytest.raises(ConfigError, match="INPUT.FORMAT"):
        native_load_config(SYNTHETIC_YAML, ["INPUT.FORMAT", "BGR"])


# ------------------------------------------------------------------------------- meta-arch
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
    """A padded image's loss equals its loss alone: images are padded with the pixel mean and
    targets with ignore / zero weights; the centre and offset losses are normalised by the
    weights (padding adds nothing), the semantic loss by all pixels (padding adds zeros).
    Checked with a per-pixel network (a 1x1 conv with a nonzero bias stands in for the model, so
    padding cannot reach the valid pixels through a receptive field, and padded pixels get
    nonzero outputs that would add to a loss that counted them); the real model then trains on
    two crops of different sizes."""
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TOP_K = 1.0  # the top-k pixel selection would see the batch
    torch.manual_seed(0)
    model = build_model(cfg).train()
    big, small = _mapped(cfg, "train", True)[:2]
    small = {
        k: (v[..., :40, :56] if torch.is_tensor(v) and v.dim() >= 2 else v)
        for k, v in small.items()
    }
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    pixelwise = torch.nn.Conv2d(3, num_classes + 3, 1)
    torch.nn.init.normal_(pixelwise.bias, 0.0, 1.0)
    sizes, pads = [], []

    def predict_raw(images):
        sizes.append(tuple(images.shape[-2:]))
        pads.append(images[0, :, 40:].flatten(1))  # [3, P]: below the small crop
        out = pixelwise((images - model.pixel_mean.view(1, -1, 1, 1)) / 50.0)
        return {"semantic": out[:, :num_classes], "center": out[:, num_classes:][:, :1],
                "offset": out[:, num_classes + 1:]}  # fmt: skip

    real_predict = model.predict_raw
    model.predict_raw = predict_raw
    model.size_divisibility = 0
    alone = model([small])
    model.size_divisibility = 48  # 40 x 56 -> 48 x 96: 60% of the pixels are padding
    padded = model([small])
    model.size_divisibility = 0
    with_big = model([small, small, big])  # the small ones padded to the big crop
    assert sizes == [(40, 56), (48, 96), (48, 64)]
    mean = model.pixel_mean.view(3, 1)
    assert torch.equal(pads[1], mean.expand_as(pads[1])) and pads[1].shape[1] == 8 * 96
    for key in alone:
        assert alone[key] > 0, key
        # The semantic loss is the mean over all pixels with ignored ones as zeros (losses.py,
        # as the authors' re-implementation), so padding scales it by the valid fraction.
        scale = 40 * 56 / (48 * 96) if key == "loss_sem_seg" else 1.0
        torch.testing.assert_close(padded[key], alone[key] * scale, rtol=1e-6, atol=0, msg=key)
        assert with_big[key] != alone[key], key  # the big crop's pixels count too
    model.predict_raw = real_predict
    model.apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else None)
    mixed = model([big, small])
    sum(mixed.values()).backward()
    assert all(torch.isfinite(v) for v in mixed.values())


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


def test_meta_arch_eval_in_mixed_precision(cfg):
    """TEST.AMP reaches detectron2's inference: the network in bfloat16, float32 outputs close to
    the float32 run's (an untrained model: to bfloat16's precision); training is unchanged."""
    if not cpu_has_fast_bfloat16():
        pytest.skip("this CPU emulates bfloat16")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cfg.defrost()
    cfg.TEST.AMP = True
    mixed = build_model(cfg).eval()
    mixed.load_state_dict(model.state_dict())
    assert mixed.mixed_precision and not model.mixed_precision
    seen = []
    mixed.backbone.register_forward_hook(lambda m, a, out: seen.append(out["res5"].dtype))
    inputs = _mapped(cfg, "val", False)[:1]
    with torch.no_grad():
        (expected,), (got,) = model(inputs), mixed(inputs)
    assert seen == [torch.bfloat16]
    assert got["sem_seg"].dtype == torch.float32
    scale = expected["sem_seg"].abs().max()
    assert (got["sem_seg"] - expected["sem_seg"]).abs().max() <= 0.05 * scale
    mixed.train()
    losses = mixed(_mapped(cfg, "train", True)[:1])
    assert seen == [torch.bfloat16, torch.float32]  # training: SOLVER.AMP decides, not TEST.AMP
    assert all(torch.isfinite(v) for v in losses.values())


def test_meta_arch_warns_where_the_cpu_emulates_bfloat16(cfg, monkeypatch):
    """As the native paths do: TEST.AMP on a CPU without bfloat16 instructions warns (once the
    model runs, when its device is known); float32 inference does not."""
    from axial_deeplab.layers import precision

    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: False)
    inputs = _mapped(cfg, "val", False)[:1]
    model = build_model(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        with torch.no_grad():
            model(inputs)
    cfg.defrost()
    cfg.TEST.AMP = True
    mixed = build_model(cfg).eval()
    with pytest.warns(UserWarning, match="no bfloat16 instructions"), torch.no_grad():
        mixed(inputs)


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


# --------------------------------------------------------------------------- model builders
def test_trainer_build_model_converts_batch_norm_for_processes(cfg, monkeypatch, capsys):
    """detectron2 converts no batch norm itself: our Trainer does, as the native engine."""
    from axial_deeplab.d2 import train as d2_train

    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.NORM = "SyncBN"

    def kinds(model):
        return {type(m).__name__ for m in model.modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}  # fmt: skip

    assert kinds(d2_train.Trainer.build_model(cfg)) == {"BatchNorm2d", "SyncBatchNorm"}
    monkeypatch.setattr(d2_train.comm, "get_world_size", lambda: 2)
    assert kinds(d2_train.Trainer.build_model(cfg)) == {"BatchNorm2d"}  # CPU: SyncBN falls back
    assert "SyncBN needs GPUs" in capsys.readouterr().out
    cfg.MODEL.DEVICE = "cuda"  # a GPU run: every batch norm syncs (built on the CPU here)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    assert kinds(d2_train.Trainer.build_model(cfg)) == {"SyncBatchNorm"}


def test_freeze_at_other_than_zero_is_refused(cfg):
    """detectron2's own default FREEZE_AT is 2; ours is 0 and the builder refuses any other value
    rather than ignoring it."""
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    cfg.defrost()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(ValueError, match="FREEZE_AT=2"):
        build_model(cfg)


def test_void_output_channel_is_refused(cfg):
    """Models with a void output channel (converted deeplab2 COCO) are evaluated natively
    (``tools/train_net.py --eval-only``); the plugin refuses them rather than scoring the void
    channel as a class."""
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.VOID_CLASS = 0
    with pytest.raises(ValueError, match="VOID_CLASS 0"):
        build_model(cfg)
