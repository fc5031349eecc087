"""Axial-ResNet backbones: shapes and strides of every variant, any input size, output stride,
zero-initialised residual branches, the authors' exact parameter counts, the config builder and
gradient checkpointing."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from axial_deeplab.config import load_config
from axial_deeplab.modeling.backbone.axial_blocks import AxialBlock
from axial_deeplab.modeling.backbone.base import ShapeSpec
from axial_deeplab.modeling.backbone.build import build_backbone
from axial_deeplab.modeling.backbone.variants import VARIANTS, build_variant, input_size_spans

ALL_STAGES = ("res2", "res3", "res4", "res5")
IMAGENET = ("axial26s", "axial50s", "axial50m", "axial50l")


def _expected_size(size: int, stride: int) -> int:
    # every stride-2 step (3x3/7x7 convs with padding k//2, the 3x3 max-pool with padding 1,
    # row/column subsampling) maps n -> ceil(n / 2), so n -> ceil(n / stride) overall
    return math.ceil(size / stride)


AXIAL_LAYOUT = sorted(n for n, row in VARIANTS.items() if row.get("layout", "axial") == "axial")


@pytest.mark.parametrize("name", AXIAL_LAYOUT)
def test_every_variant_output_matches_output_shape(name):
    """Shapes only (meta device): names, channels and strides agree with ``output_shape()``."""
    imagenet = VARIANTS[name]["stride_mode"] == "avgpool"
    features = ALL_STAGES + (("linear",) if imagenet else ())
    with torch.device("meta"):
        model = build_variant(name, out_features=features)
        h, w = (96, 64) if imagenet else (65, 49)  # avg-pool striding needs multiples of 32
        out = model(torch.zeros(2, 3, h, w))
    specs = model.output_shape()
    assert list(out) == list(features) == list(specs)
    for feature in ALL_STAGES:
        spec = specs[feature]
        assert out[feature].shape == (
            2,
            spec.channels,
            _expected_size(h, spec.stride),
            _expected_size(w, spec.stride),
        )
    assert [specs[f].stride for f in ALL_STAGES] == [4, 8, 16, 32 if imagenet else 16]
    width = VARIANTS[name]["width_multiplier"]
    # stage widths 128m, 256m, 512m, 1024m; expansion 2
    assert [specs[f].channels for f in ALL_STAGES] == [int(256 * width * 2**i) for i in range(4)]
    if imagenet:
        assert out["linear"].shape == (2, 1000)


@pytest.mark.parametrize(
    "name, params",
    # counted by instantiating the authors' lib/models/axialnet.py (their flatten_index is a
    # buffer); the paper's ImageNet table lists 5.9M / 11.5M(S) / 25.2M / 44.0M
    [
        ("axial26s", 5_944_936),
        ("axial50s", 11_586_216),
        ("axial50m", 25_179_400),
        ("axial50l", 43_973_480),
    ],
)
def test_imagenet_parameter_counts_are_the_authors(name, params):
    with torch.device("meta"):
        model = build_variant(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_imagenet_spans_are_block_input_sizes():
    # the authors' kernel_size per block at 224: layer1 56; layer2 56, 28...; layer3 28, 14...;
    # layer4 14, 7 -> global tables of 2K - 1 entries
    assert input_size_spans((3, 4, 6, 3), (1, 2, 2, 2), 224) == [
        [56, 56, 56],
        [56, 28, 28, 28],
        [28, 14, 14, 14, 14, 14],
        [14, 7, 7],
    ]
    with torch.device("meta"):
        model = build_variant("axial26s")
    tables = [[b.width_attention.query_rel.shape[1] for b in s] for s in model.stages]
    assert tables == [[111], [111, 55], [55, 27, 27, 27], [27]]


@pytest.mark.parametrize("size", [(33, 23), (17, 40)])
def test_tiny_forward_any_size_and_output_strides(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)  # batch 2: res5 may be 1 x 1 and BN needs 2 values
    for output_stride in (16, 32):
        model = build_variant("axial_resnet_tiny", span=9, output_stride=output_stride)
        out = model(x)
        s5 = model.output_shape()["res5"].stride
        assert s5 == output_stride
        assert out["res5"].shape[-2:] == (_expected_size(size[0], s5), _expected_size(size[1], s5))
        assert torch.isfinite(out["res5"]).all()


def test_avgpool_variant_rejects_sizes_it_cannot_stride():
    model = build_variant("axial_resnet_tiny", stride_mode="avgpool", span=5)
    assert model.size_divisibility == 16
    model(torch.randn(1, 3, 32, 48))  # multiples of 16 work
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 3, 33, 48))


def test_residual_branches_start_at_zero():
    model = build_variant("axial_resnet_tiny", span=5)
    blocks = [m for m in model.modules() if isinstance(m, AxialBlock)]
    assert len(blocks) == 4
    assert all(torch.count_nonzero(b.expand_norm.weight) == 0 for b in blocks)
    # the last BN has gamma = 0 and beta = 0, so a fresh block's residual branch is exactly 0:
    # block(x) = relu(x) with an identity shortcut, relu(shortcut(x)) with a projection
    g = torch.Generator().manual_seed(0)
    block = AxialBlock(64, 32, span=5).eval()
    assert block.shortcut is None
    x = torch.randn(2, 64, 7, 9, generator=g)
    torch.testing.assert_close(block(x), torch.relu(x), rtol=0, atol=0)
    block = AxialBlock(48, 32, span=5, stride=2).eval()
    x = torch.randn(2, 48, 7, 9, generator=g)
    with torch.no_grad():
        expected = torch.relu(block.shortcut(x))  # [2, 64, 4, 5]
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    assert expected.shape == (2, 64, 4, 5) and expected.abs().sum() > 0


def test_axial_stem_has_no_spatial_convolution():
    model = build_variant("axial_resnet_tiny", stem="axial", span=5)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size == (1, 1) for c in convs)
    out = model(torch.randn(1, 3, 19, 25))
    assert out["res2"].shape == (1, 64, 5, 7)  # ceil(19 / 4), ceil(25 / 4)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_config_builder():
    # the COCO Axial-DeepLab-S recipe: Axial-ResNet-S, span 65, output stride 16
    cfg = load_config(str(CONFIGS / "coco" / "axial_deeplab_s_641.yaml"))
    model = build_backbone(cfg)
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (128, 4),
        "res3": (256, 8),
        "res5": (1024, 16),
    }
    assert model.stages[0][0].height_attention.span == 65
    opts = ["MODEL.AXIAL_RESNET.VARIANT", "axial_resnet_tiny", "MODEL.AXIAL_RESNET.OUTPUT_STRIDE"]
    opts += ["32", "MODEL.AXIAL_RESNET.STEM", "conv7", "MODEL.AXIAL_RESNET.SPAN", "9"]
    opts += ["MODEL.AXIAL_RESNET.GRADIENT_CHECKPOINTING", "True"]
    model = build_backbone(load_config(str(CONFIGS / "coco" / "axial_deeplab_s_641.yaml"), opts))
    assert model.output_shape()["res5"] == ShapeSpec(channels=512, stride=32)
    assert model.stem[0].kernel_size == (7, 7)
    assert model.stages[3][0].width_attention.span == 9
    assert all(stage.gradient_checkpointing for stage in model.stages)
    with pytest.raises(ValueError, match="MODEL.AXIAL_RESNET.*axial_resnet_q"):
        build_backbone(load_config(None, ["MODEL.AXIAL_RESNET.VARIANT", "axial_resnet_q"]))


def _randomize_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)


def test_gradient_checkpointing_gives_the_same_outputs_gradients_and_statistics():
    g = torch.Generator().manual_seed(0)
    plain = build_variant("axial_resnet_tiny", span=5, out_features=ALL_STAGES)
    _randomize_norms(plain, g)  # non-zero residual branches, so attention gets gradients
    ckpt = build_variant(
        "axial_resnet_tiny", span=5, out_features=ALL_STAGES, gradient_checkpointing=True
    )
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 21, 17, generator=g)
    outs = []
    for model in (plain, ckpt):
        out = model(x)
        sum((v * (i + 1)).square().mean() for i, v in enumerate(out.values())).backward()
        outs.append(out)
    for name in ALL_STAGES:
        torch.testing.assert_close(outs[0][name], outs[1][name], rtol=0, atol=0)
    grads = dict(plain.named_parameters())
    for name, p in ckpt.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-6, atol=1e-7, msg=name)
    assert grads["stages.0.0.height_attention.query_rel"].grad.abs().sum() > 0
    # the recomputation in backward must not update running statistics a second time
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "config, opts, said",
    [
        ("cityscapes/deeplab2/max_deeplab_s_backbone_os16.yaml",
         ["MODEL.AXIAL_RESNET.SPAN_MODE", "local", "MODEL.AXIAL_RESNET.SPAN", "9"],
         "SPAN 9, SPAN_MODE 'local': variant max_deeplab_s_backbone does not read them; only "
         "axial26s"),
        ("cityscapes/deeplab2/max_deeplab_s_backbone_os16.yaml", ["MODEL.AXIAL_RESNET.STEM", "conv7"],
         "STEM 'conv7': variant max_deeplab_s_backbone does not read it"),
        ("quickstart/synthetic_axial.yaml", ["MODEL.AXIAL_RESNET.DROP_PATH_KEEP_PROB", "0.5"],
         "DROP_PATH_KEEP_PROB 0.5: variant axial_resnet_tiny does not read it; only "
         "axial_swidernet_1_1_1"),
    ],
)  # fmt: skip
def test_a_key_the_variant_does_not_read_is_refused(config, opts, said):
    """The span keys were ignored by the deeplab2 variants, and drop path and the layer
    multiplier by ours, without a word (a span ablation on MaX-S trained the same model)."""
    cfg = load_config(str(CONFIGS / config), opts)
    with pytest.raises(ValueError, match=f"^MODEL.AXIAL_RESNET: {re.escape(said)}"):
        with torch.device("meta"):
            build_backbone(cfg)
