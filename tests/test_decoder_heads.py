"""Decoders, heads, the ResNet baseline backbone and the meta-architecture."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from axial_deeplab.modeling.backbone.base import Backbone, ShapeSpec
from axial_deeplab.modeling.backbone.resnet import ResNet
from axial_deeplab.modeling.decoder import ASPP, PanopticDeepLabDecoder
from axial_deeplab.modeling.heads import PredictionHead
from axial_deeplab.modeling.panoptic_deeplab import PanopticDeepLab, upsample_offsets

# Unusual channel counts so that nothing can silently assume ResNet's 256/512/2048.
SHAPES = {"res2": ShapeSpec(48, 4), "res3": ShapeSpec(96, 8), "res5": ShapeSpec(200, 16)}


class StubBackbone(Backbone):
    """Average pools + 1x1 convs giving features with the channels/strides of SHAPES."""

    def __init__(self) -> None:
        super().__init__()
        self._out_features = list(SHAPES)
        self._feature_specs = dict(SHAPES)
        self.convs = nn.ModuleDict({k: nn.Conv2d(3, s.channels, 1) for k, s in SHAPES.items()})
        self.seen: torch.Tensor | None = None

    def forward(self, x):
        self.seen = x
        return {
            k: self.convs[k](F.avg_pool2d(x, s.stride, ceil_mode=True)) for k, s in SHAPES.items()
        }


def _features(n=1, h=9, w=13):
    g = torch.Generator().manual_seed(0)
    # stride-16 map h x w; stride 8 and 4 are twice / four times as large, minus one (odd sizes)
    sizes = {"res5": (h, w), "res3": (2 * h - 1, 2 * w - 1), "res2": (4 * h - 3, 4 * w - 3)}
    return {k: torch.randn(n, SHAPES[k].channels, *sizes[k], generator=g) for k in SHAPES}


def _model(context="aspp"):
    sem = PanopticDeepLabDecoder(SHAPES, context=context, project_channels=(64, 32))
    ins = PanopticDeepLabDecoder(
        SHAPES, context=context, project_channels=(32, 16), decoder_channels=128
    )
    return PanopticDeepLab(
        backbone=StubBackbone(),
        semantic_decoder=sem,
        instance_decoder=ins,
        semantic_head=PredictionHead(256, 256, 5),
        center_head=PredictionHead(128, 32, 1),
        offset_head=PredictionHead(128, 32, 2),
    )


def test_aspp_pooling_branch_is_global_mean_at_odd_size_batch1_train():
    aspp = ASPP(200, 16, dilations=(3, 6, 9)).train()
    x = _features()["res5"]  # [1, 200, 9, 13]
    seen = {}
    aspp.project.register_forward_hook(lambda mod, args, out: seen.update(cat=args[0]))
    out = aspp(x)  # must not raise: no BN on the 1x1 pooled map
    assert out.shape == (1, 16, 9, 13)
    # The ASPP's own pooled branch: the last 16 of the 5 * 16 concatenated channels.
    pooled = seen["cat"][:, -16:]  # [1, 16, 9, 13]
    # Independent reference in float64: the mean of all 9 * 13 positions, the 1x1 conv written as
    # a matrix product with the conv's weights, ReLU, then the same value at every pixel.
    mean = x.double().sum(dim=(2, 3)) / (9 * 13)  # [1, 200]
    w = aspp.pool_conv.weight.double()[:, :, 0, 0]  # [16, 200]
    ref = (mean @ w.T + aspp.pool_conv.bias.double()).clamp(min=0)  # [1, 16]
    assert (ref > 0).any()  # not all clipped by the ReLU: the values below mean something
    torch.testing.assert_close(pooled.double(), ref[:, :, None, None].expand(1, 16, 9, 13))


def test_decoder_param_count_and_shape_conv1x1():
    dec = PanopticDeepLabDecoder(SHAPES, context="conv1x1", project_channels=(64, 32))
    # context 200->256 1x1: 51200 + BN 512                                = 51712
    # res3 projection 96->64: 6144 + 128                                   =  6272
    # fusion 1 (64+256=320 in): dw 320*25 + BN 640 + pw 320*256 + BN 512  = 91072
    # res2 projection 48->32: 1536 + 64                                    =  1600
    # fusion 2 (32+256=288 in): dw 288*25 + BN 576 + pw 288*256 + BN 512  = 82016
    assert sum(p.numel() for p in dec.parameters()) == 51712 + 6272 + 91072 + 1600 + 82016
    out = dec(_features(n=2))
    assert out.shape == (2, 256, 33, 49)  # the res2 size


def test_decoder_rejects_missing_feature():
    with pytest.raises(ValueError, match="res4"):
        PanopticDeepLabDecoder(SHAPES, in_features=("res4", "res3", "res2"))


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsampled_offsets_point_to_same_location(align_corners):
    # A low-res field pointing every pixel at (cy, cx) = (2, 3) of a 5 x 9 map.
    h, w, big_h, big_w = 5, 9, 17, 25
    ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    low = torch.stack([2 - ys, 3 - xs])[None]  # [1, 2, 5, 9]
    big = upsample_offsets(low, (big_h, big_w), align_corners=align_corners)
    bys, bxs = torch.meshgrid(torch.arange(float(big_h)), torch.arange(float(big_w)), indexing="ij")
    if align_corners:  # pixel centres at the corners: (2, 3) -> (2 * 16/4, 3 * 24/8) = (8, 9)
        target, inner = (8.0, 9.0), (slice(None), slice(None))
    else:  # pixel edges aligned: y -> (y + 0.5) * 17/5 - 0.5 = 8.0, x -> 3.5 * 25/9 - 0.5
        target = (2.5 * 17 / 5 - 0.5, 3.5 * 25 / 9 - 0.5)
        inner = (slice(2, -2), slice(2, -2))  # border pixels are clamped by interpolation
    torch.testing.assert_close((bys + big[0, 0])[inner], torch.full_like(bys, target[0])[inner])
    torch.testing.assert_close((bxs + big[0, 1])[inner], torch.full_like(bxs, target[1])[inner])


def test_model_outputs_same_in_train_and_eval_and_normalises_inside():
    model = _model()
    images = torch.rand(1, 3, 35, 51, generator=torch.Generator().manual_seed(1)) * 255
    outs = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        outs[mode] = model(images)
        assert {k: tuple(v.shape) for k, v in outs[mode].items()} == {
            "semantic": (1, 5, 35, 51),
            "center": (1, 1, 35, 51),
            "offset": (1, 2, 35, 51),
        }
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.backbone.seen, (images - mean) / std)
    sum(v.sum() for v in outs["train"].values()).backward()  # batch-1 training works


def test_heads_param_count():
    # 5x5 depthwise on 128 (3200) + BN 256 + pointwise 128->32 (4096) + BN 64 + 1x1 32->2 (66)
    assert sum(p.numel() for p in PredictionHead(128, 32, 2).parameters()) == 7682


@pytest.mark.parametrize(
    "stem,params",
    [
        # torchvision resnet50: 25,557,032 minus the fc layer (2048 * 1000 + 1000)
        ("basic", 25_557_032 - 2_049_000),
        # DeepLab stem: -7x7 stem (9408 + 128) + 3x3 convs (1728 + 36864 + 73728 + 128 + 128 + 256)
        # and the first bottleneck reads 128 channels: +64*64 (conv1) +128*256 (shortcut)
        ("deeplab", 25_557_032 - 2_049_000 - 9_536 + 112_832 + 4_096 + 16_384),
    ],
)
def test_resnet50_params_and_strides(stem, params):
    for output_stride in (16, 32):
        net = ResNet(stem=stem, output_stride=output_stride, out_features=("res2", "res3", "res5"))
        assert sum(p.numel() for p in net.parameters()) == params
        feats = net(torch.zeros(1, 3, 65, 97))
        for name, spec in net.output_shape().items():
            # stride-2 convs with padding give ceil sizes: 65 -> 33 -> 17 -> 9 -> 5
            size = 65
            for _ in range(spec.stride.bit_length() - 1):
                size = (size + 1) // 2
            assert feats[name].shape[1:3] == (spec.channels, size)
        assert net.output_shape()["res5"] == ShapeSpec(2048, output_stride)


def test_build_resnet_backbone_from_config():
    from axial_deeplab.config import get_cfg
    from axial_deeplab.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"
    cfg.MODEL.RESNETS.RES5_DILATION = 1
    net = build_resnet_backbone(cfg)
    assert net.output_shape() == {
        "res2": ShapeSpec(256, 4),
        "res3": ShapeSpec(512, 8),
        "res5": ShapeSpec(2048, 32),
    }
    assert net.stem[0].kernel_size == (3, 3)


@pytest.mark.parametrize(
    "backbone,variant",
    [("resnet", None)] + [("axial_resnet", f"axial_resnet_{v}") for v in ("s", "m", "l", "xl")],
)
def test_build_model_every_variant(backbone, variant):
    from axial_deeplab.config import get_cfg
    from axial_deeplab.modeling.build import build_model

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = backbone
    if variant:
        cfg.MODEL.AXIAL_RESNET.VARIANT = variant
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    with torch.device("meta"):
        model = build_model(cfg)
    out = model(torch.empty(2, 3, 65, 97, device="meta"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semantic": (2, 7, 65, 97),
        "center": (2, 1, 65, 97),
        "offset": (2, 2, 65, 97),
    }


def test_every_trainable_parameter_of_max_deeplab_l_gets_a_gradient():
    """The MaX-DeepLab-L config builds the backbone's stacked decoder (its converted weights
    load) but reads res2/res3/res5: its 56 tensors got no gradient, and DistributedDataParallel
    (find_unused_parameters False) stopped at the second iteration. They are frozen now."""
    from axial_deeplab.config import load_config
    from axial_deeplab.modeling.build import build_model

    cfg = load_config(
        os.path.join(
            os.path.dirname(__file__), "..", "configs/cityscapes/deeplab2/max_deeplab_l_backbone_os16.yaml"
        ),
        ["MODEL.AXIAL_RESNET.WIDTH_MULTIPLIER", "0.125", "MODEL.AXIAL_RESNET.LAYER_MULTIPLIER",
         "0.34"],
    )  # fmt: skip
    model = build_model(cfg).train()
    assert model.backbone.stacked_decoder is not None  # kept, for the converted weights
    outputs = model(torch.rand(2, 3, 33, 33) * 255)
    sum(v.float().mean() for v in outputs.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert not any(p.requires_grad for p in model.backbone.stacked_decoder.parameters())
