"""ResNet baseline backbone: torchvision's ResNet modules wrapped as a ``Backbone``.

Options: the DeepLab stem (three 3x3 convs, 64-64-128 channels, as ResNet-50-beta / detectron2's
"R-52"; the first bottleneck then reads 128 channels) instead of the 7x7 one, and output stride
8/16/32 by replacing the stride of the last stages with dilation (torchvision's
``replace_stride_with_dilation``). Weights are random; nothing is downloaded.
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


def deeplab_stem(norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    """Three 3x3 convs (stride 2, 1, 1; 64, 64, 128 channels), each with norm and ReLU."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(((3, 64), (64, 64), (64, 128))):
        stride = 2 if i == 0 else 1
        layers += [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            norm_layer(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class ResNet(Backbone):
    """torchvision ResNet-{50,101,152} returning ``{"res2": [N, 256, H/4, W/4], ...}``."""

    def __init__(
        self,
        *,
        depth: int = 50,
        stem: str = "basic",
        output_stride: int = 16,
        out_features: Sequence[str] = ("res2", "res3", "res5"),
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
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
        if stem == "basic":
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        else:
            self.stem = deeplab_stem(norm_layer)
            first = net.layer1[0]  # its 1x1 conv and shortcut now read the 128-channel stem
            first.conv1 = nn.Conv2d(128, first.conv1.out_channels, 1, bias=False)
            first.downsample[0] = nn.Conv2d(128, first.downsample[0].out_channels, 1, bias=False)
        self.maxpool = net.maxpool
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
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
    ``OUT_FEATURES``, ``NORM``)."""
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
    )
