"""ResNet baseline backbone: torchvision's ResNet modules wrapped as a ``Backbone``.

Options: the DeepLab stem (three 3x3 convs, 64-64-128 channels, as ResNet-50-beta / detectron2's
"R-52" ``DeepLabStem``; the first bottleneck then reads 128 channels) instead of the 7x7 one, and
output stride 8/16/32 by replacing the stride of the last stages with dilation (torchvision's
``replace_stride_with_dilation``: the first block of a dilated stage keeps the previous
dilation). ``res5_dilations`` sets each res5 block's 3x3 dilation instead (detectron2's
``RES5_MULTI_GRID``: ``RES5_DILATION x (1, 2, 4)`` = 2, 4, 8 in its DC5 models). A block's stride
is in its 3x3 conv (torchvision; detectron2's ``STRIDE_IN_1X1 False``, as its R-52). Weights are
random; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from axial_deeplab.modeling.backbone.base import Backbone, ShapeSpec

# depth -> torchvision builder (variants are data)
RESNET_BUILDERS: dict[int, Callable[..., tv_resnet.ResNet]] = {
    50: tv_resnet.resnet50,
    101: tv_resnet.resnet101,
    152: tv_resnet.resnet152,
}
# output stride -> which of (res3, res4, res5) trade their stride for dilation
DILATE_FOR_STRIDE = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
STAGES = ("res2", "res3", "res4", "res5")


def deeplab_stem(norm_layer: Callable[[int], nn.Module], channels: int = 128) -> nn.Sequential:
    """Three 3x3 convs (stride 2, 1, 1; ``channels / 2, channels / 2, channels``: 64, 64, 128),
    each with norm and ReLU."""
    half = channels // 2
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(((3, half), (half, half), (half, channels))):
        stride = 2 if i == 0 else 1
        layers += [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            norm_layer(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def set_dilations(stage: nn.Sequential, dilations: Sequence[int]) -> None:
    """Give block ``i`` of ``stage`` a 3x3 conv of dilation (and 'same' padding) ``dilations[i]``."""
    if len(dilations) != len(stage):
        raise ValueError(f"res5 dilations: need {len(stage)} values, got {list(dilations)}")
    for block, d in zip(stage, dilations, strict=True):
        block.conv2.dilation = block.conv2.padding = (d, d)


def scaled_stages(
    net: tv_resnet.ResNet, in_channels: int, res2_channels: int, dilate: Sequence[bool]
) -> list[nn.Sequential]:
    """``net``'s four stages rebuilt narrower: res2 outputs ``res2_channels`` (bottleneck width a
    quarter of it), doubling per stage, the first block reading ``in_channels``; initialised as
    torchvision initialises ResNets."""
    net.inplanes, net.dilation = in_channels, 1
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    stages = [
        net._make_layer(
            tv_resnet.Bottleneck,
            res2_channels // 4 * 2**i,
            len(layer),
            stride=1 if i == 0 else 2,
            dilate=bool(i) and dilate[i - 1],
        )
        for i, layer in enumerate(layers)
    ]
    for m in nn.Sequential(*stages).modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return stages


class ResNet(Backbone):
    """torchvision ResNet-{50,101,152} returning ``{"res2": [N, 256, H/4, W/4], ...}``.

    ``res2_channels`` (256; a multiple of 8) narrows the network as detectron2's
    ``RES2_OUT_CHANNELS`` does (with ``WIDTH_PER_GROUP`` a quarter of it and the deeplab stem's
    ``STEM_OUT_CHANNELS`` half of it, as in R-52): for small test models.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        stem: str = "basic",
        output_stride: int = 16,
        out_features: Sequence[str] = ("res2", "res3", "res5"),
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        res5_dilations: Sequence[int] = (),
        res2_channels: int = 256,
    ) -> None:
        super().__init__()
        if depth not in RESNET_BUILDERS:
            raise ValueError(
                f"ResNet depth: expected one of {sorted(RESNET_BUILDERS)}, got {depth}"
            )
        if output_stride not in DILATE_FOR_STRIDE:
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride}")
        if stem not in ("basic", "deeplab"):
            raise ValueError(f"stem: expected 'basic' or 'deeplab', got {stem!r}")
        unknown = [f for f in out_features if f not in STAGES]
        if unknown:
            raise ValueError(f"out_features {unknown} not among {list(STAGES)}")
        net = RESNET_BUILDERS[depth](
            weights=None,
            replace_stride_with_dilation=DILATE_FOR_STRIDE[output_stride],
            norm_layer=norm_layer,
        )
        if res2_channels % 8 or (stem == "basic" and res2_channels != 256):
            raise ValueError(
                f"res2_channels: a multiple of 8 (256 with the basic stem), got {res2_channels}"
            )
        stem_channels = res2_channels // 2
        if stem == "basic":
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
            stem_channels = 64
        else:
            self.stem = deeplab_stem(norm_layer, stem_channels)
        stages = [net.layer1, net.layer2, net.layer3, net.layer4]
        if res2_channels != 256:
            stages = scaled_stages(
                net, stem_channels, res2_channels, DILATE_FOR_STRIDE[output_stride]
            )
        elif stem == "deeplab":
            first = net.layer1[0]  # its 1x1 conv and shortcut now read the deeplab stem
            first.conv1 = nn.Conv2d(stem_channels, first.conv1.out_channels, 1, bias=False)
            first.downsample[0] = nn.Conv2d(
                stem_channels, first.downsample[0].out_channels, 1, bias=False
            )
        self.maxpool = net.maxpool
        self.stages = nn.ModuleList(stages)
        if res5_dilations:
            set_dilations(self.stages[3], res5_dilations)
        self._out_features = list(out_features)
        strides = [min(4 * 2**i, output_stride) for i in range(4)]
        channels = [stage[-1].conv3.out_channels for stage in self.stages]
        self._feature_specs = {
            name: ShapeSpec(channels=c, stride=s)
            for name, c, s in zip(STAGES, channels, strides, strict=True)
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` normalised images -> the requested ``res*`` features."""
        x = self.maxpool(self.stem(x))  # [N, 64 or 128, H/4, W/4]
        out = {}
        for name, stage in zip(STAGES, self.stages, strict=True):
            x = stage(x)
            if name in self._out_features:
                out[name] = x
        return out


def build_resnet_backbone(cfg) -> ResNet:
    """ResNet backbone from ``cfg.MODEL.RESNETS`` (``DEPTH``, ``STEM_TYPE``, ``RES5_DILATION``,
    ``RES5_MULTI_GRID``, ``RES2_OUT_CHANNELS``, ``OUT_FEATURES``, ``NORM``)."""
    from axial_deeplab.modeling.decoder import NORMS

    c = cfg.MODEL.RESNETS
    if c.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION: expected 1 or 2, got {c.RES5_DILATION}")
    if c.NORM not in NORMS:
        raise ValueError(f"MODEL.RESNETS.NORM: expected one of {sorted(NORMS)}, got {c.NORM!r}")
    return ResNet(
        depth=c.DEPTH,
        stem=c.STEM_TYPE,
        output_stride=32 // c.RES5_DILATION,
        out_features=tuple(c.OUT_FEATURES),
        norm_layer=NORMS[c.NORM],
        res5_dilations=[c.RES5_DILATION * g for g in c.RES5_MULTI_GRID],
        res2_channels=c.RES2_OUT_CHANNELS,
    )
