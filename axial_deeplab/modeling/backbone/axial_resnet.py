"""Axial-ResNet: ResNet-50-style stages of axial blocks (Wang et al., ECCV 2020).

Variants are data (``VARIANTS``: name -> keyword arguments of :class:`AxialResNet`):

- panoptic ``axial_resnet_s/m/l/xl``: layout [3, 4, 6, 3], width multipliers 0.5 / 0.75 / 1 / 2,
  the Inception (three 3x3 convs) stem, local span 65, output stride 16 or 32;
- the authors' ImageNet classifiers ``axial26s``, ``axial50s/m/l``: a 7x7 conv stem of
  ``64 * multiplier`` channels, global span equal to each block's input size at 224x224, average
  pooling for strides (use :func:`build_axial_classifier`);
- ``axial_resnet_tiny``: [1, 1, 1, 1] at multiplier 0.25, for tests and the CPU quick start.

Stage ``i`` (``res2..res5``) has attention width ``128 * 2^i * multiplier`` and outputs twice that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .axial_blocks import AxialBlock, AxialStage
from .base import Backbone, ShapeSpec
from .resnet import deeplab_stem

STAGES = ("res2", "res3", "res4", "res5")
STEMS = ("inception", "conv7", "axial")
AXIAL_STEM_SPAN = 15

_PANOPTIC = dict(layers=(3, 4, 6, 3), stem="inception", span=65, span_mode="local")
_IMAGENET = dict(stem="conv7", stride_mode="avgpool", span_mode="global", global_input_size=224)
VARIANTS: dict[str, dict] = {
    "axial_resnet_s": dict(_PANOPTIC, width_multiplier=0.5),
    "axial_resnet_m": dict(_PANOPTIC, width_multiplier=0.75),
    "axial_resnet_l": dict(_PANOPTIC, width_multiplier=1.0),
    "axial_resnet_xl": dict(_PANOPTIC, width_multiplier=2.0),
    "axial_resnet_tiny": dict(_PANOPTIC, layers=(1, 1, 1, 1), width_multiplier=0.25),
    "axial26s": dict(_IMAGENET, layers=(1, 2, 4, 1), width_multiplier=0.5),
    "axial50s": dict(_IMAGENET, layers=(3, 4, 6, 3), width_multiplier=0.5),
    "axial50m": dict(_IMAGENET, layers=(3, 4, 6, 3), width_multiplier=0.75),
    "axial50l": dict(_IMAGENET, layers=(3, 4, 6, 3), width_multiplier=1.0),
}
IMAGENET_VARIANTS = ("axial26s", "axial50s", "axial50m", "axial50l")


def _stem(kind: str, channels: int, num_heads: int) -> tuple[nn.Module, int]:
    """Stride-4 stem; returns it and its output channels."""
    if kind == "inception":
        return nn.Sequential(deeplab_stem(nn.BatchNorm2d), nn.MaxPool2d(3, 2, 1)), 128
    if kind == "conv7":
        stem = nn.Sequential(
            nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        nn.init.kaiming_normal_(stem[0].weight, mode="fan_out", nonlinearity="relu")
        return stem, channels
    if kind == "axial":
        # Full axial attention: no spatial convolution at all. A pointwise lift of RGB, then three
        # axial blocks of local span 15 (the first strided), then max pooling.
        attn = dict(span=AXIAL_STEM_SPAN, span_mode="local", num_heads=num_heads)
        blocks = [AxialBlock(channels, channels // 2, stride=2, **attn)]
        blocks += [AxialBlock(channels, channels // 2, **attn) for _ in range(2)]
        lift = [nn.Conv2d(3, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True)]
        return nn.Sequential(*lift, *blocks, nn.MaxPool2d(3, 2, 1)), channels
    raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")


class AxialResNet(Backbone):
    """Axial-ResNet backbone: ``[N, 3, H, W] -> {"res2": [N, 256m, H/4, W/4], ...}`` for any H, W.

    Args:
        layers: blocks per stage (``res2..res5``).
        width_multiplier: ``m``; stage attention widths ``128m, 256m, 512m, 1024m``.
        stem: ``"inception"`` (three 3x3 convs, 64-64-128, + max pool), ``"conv7"`` (the authors'
            ImageNet stem, ``64m`` channels) or ``"axial"`` (pointwise lift + three axial blocks
            of span 15).
        output_stride: 16 (``res5`` not strided, no atrous attention) or 32.
        span, span_mode: attention span of every block (see ``AxialAttention``).
        global_input_size: when set, ``span_mode`` must be ``"global"`` and each block's span is its
            input size for this square input (the authors' ImageNet models: 224 -> 56/28/14/7).
        stride_mode: ``"subsample"`` (the paper) or ``"avgpool"`` (the authors' ImageNet code).
        out_features: names returned by ``forward``.
        gradient_checkpointing: recompute block activations in the backward pass.
    """

    def __init__(
        self,
        *,
        layers: Sequence[int],
        width_multiplier: float,
        stem: str = "inception",
        output_stride: int = 16,
        span: int = 65,
        span_mode: str = "local",
        global_input_size: int | None = None,
        stride_mode: str = "subsample",
        num_heads: int = 8,
        out_features: Sequence[str] = STAGES,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        if len(layers) != 4:
            raise ValueError(f"layers needs 4 stage depths, got {list(layers)}")
        unknown = set(out_features) - set(STAGES)
        if unknown:
            raise ValueError(f"out_features {sorted(unknown)} unknown; choose from {STAGES}")
        if global_input_size is not None and span_mode != "global":
            raise ValueError("global_input_size needs span_mode='global'")
        self.stem, channels = _stem(stem, int(64 * width_multiplier), num_heads)
        size = global_input_size // 4 if global_input_size else None
        stride = 4
        self._feature_specs: dict[str, ShapeSpec] = {}
        for i, (name, depth) in enumerate(zip(STAGES, layers, strict=True)):
            width = int(128 * 2**i * width_multiplier)
            first_stride = 1 if i == 0 or (i == 3 and output_stride == 16) else 2
            blocks = []
            for j in range(depth):
                block_stride = first_stride if j == 0 else 1
                block = AxialBlock(
                    channels,
                    width,
                    stride=block_stride,
                    span=size if size else span,
                    span_mode=span_mode,
                    stride_mode=stride_mode,
                    num_heads=num_heads,
                )
                blocks.append(block)
                channels = width * AxialBlock.expansion
                if size:
                    size //= block_stride
            stride *= first_stride
            self.add_module(name, AxialStage(blocks, gradient_checkpointing=gradient_checkpointing))
            self._feature_specs[name] = ShapeSpec(channels=channels, stride=stride)
        self._out_features = list(out_features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {list(x.shape)}")
        x = self.stem(x)
        out = {}
        last = max(STAGES.index(n) for n in self._out_features)
        for name in STAGES[: last + 1]:
            x = getattr(self, name)(x)
            if name in self._out_features:
                out[name] = x
        return out


class AxialResNetClassifier(nn.Module):
    """An Axial-ResNet with global average pooling and a linear classifier on ``res5``."""

    def __init__(self, backbone: AxialResNet, num_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.output_shape()["res5"].channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, num_classes]`` logits."""
        feature = self.backbone(x)["res5"]  # [N, C, h, w]
        return self.fc(feature.mean(dim=(2, 3)))


def _variant(name: str) -> dict:
    if name not in VARIANTS:
        raise ValueError(f"unknown Axial-ResNet variant {name!r}; known: {sorted(VARIANTS)}")
    return dict(VARIANTS[name])


def build_axial_resnet(name: str, **overrides) -> AxialResNet:
    """The backbone of variant ``name`` (keyword ``overrides`` replace table entries)."""
    return AxialResNet(**{**_variant(name), **overrides})


def build_axial_classifier(
    name: str, *, num_classes: int = 1000, **overrides
) -> AxialResNetClassifier:
    """An ImageNet classifier (``axial26s``, ``axial50s/m/l``, or any variant) with ``num_classes``."""
    backbone = build_axial_resnet(name, out_features=("res5",), output_stride=32, **overrides)
    return AxialResNetClassifier(backbone, num_classes)


def build_axial_resnet_backbone(cfg) -> AxialResNet:
    """``MODEL.AXIAL_RESNET.*`` -> backbone; empty ``STEM``/``STRIDE_MODE`` keep the variant's."""
    c = cfg.MODEL.AXIAL_RESNET
    overrides = dict(
        output_stride=c.OUTPUT_STRIDE,
        span=c.SPAN,
        span_mode=c.SPAN_MODE,
        num_heads=c.NUM_HEADS,
        out_features=tuple(c.OUT_FEATURES),
        gradient_checkpointing=c.GRADIENT_CHECKPOINTING,
    )
    if c.STEM:
        overrides["stem"] = c.STEM
    if c.STRIDE_MODE:
        overrides["stride_mode"] = c.STRIDE_MODE
    variant = _variant(c.VARIANT)
    if variant.get("global_input_size") and c.SPAN_MODE != "global":
        overrides["global_input_size"] = None  # config asks for local attention on all blocks
    return AxialResNet(**{**variant, **overrides})
