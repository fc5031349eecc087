"""Stems of the Axial-ResNets: ``[N, 3, H, W]`` images -> ``[N, C, H/4, W/4]`` features.

- ``"conv7"``: 7x7 conv (stride 2) + BN + ReLU, 3x3 max-pool (stride 2): the authors' ImageNet models.
- ``"inception"``: three 3x3 convs (stride 2, 1, 1; 64, 64, 128 channels) with BN + ReLU, then the
  3x3 max-pool: the stem of DeepLab's ResNet-beta used by Panoptic-DeepLab and Axial-DeepLab (deeplab2
  ``InceptionSTEM``). The builder passes the widths times the variant's ``stem_width_multiplier``
  (``variants.py``): Axial-DeepLab-S/M/L/XL scale them with the width multiplier (inferred from the
  paper's multiply-add counts), deeplab2 keeps them at 1x.
- ``"axial"``: the "full axial-attention" model: no convolution but the blocks' 1x1 projections.
  Three axial blocks (width 32, output 64 channels, local span 15, the first with stride 2) read the
  RGB image directly, then the 3x3 max-pool. This follows deeplab2's fully axial layout (a first
  stage of three axial blocks at stride 1 -> 2); the span and the width are our choice.
"""

from __future__ import annotations

from torch import nn

from .axial_blocks import AxialBlock, AxialStage

STEMS = ("inception", "conv7", "axial")


class Stem(nn.Sequential):
    """A stem module with ``out_channels`` and ``stride`` (always 4) recorded."""

    def __init__(self, *layers: nn.Module, out_channels: int) -> None:
        super().__init__(*layers)
        self.out_channels = out_channels
        self.stride = 4


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def conv7_stem(channels: int) -> Stem:
    """7x7 conv stride 2 -> BN -> ReLU -> 3x3 max-pool stride 2; ``channels`` outputs."""
    return Stem(*_conv_bn_relu(3, channels, 7, 2), _max_pool(), out_channels=channels)


def inception_stem(widths: tuple[int, int, int] = (64, 64, 128)) -> Stem:
    """Three 3x3 conv-BN-ReLU (stride 2, 1, 1) -> 3x3 max-pool stride 2."""
    layers: list[nn.Module] = []
    cin = 3
    for i, cout in enumerate(widths):
        layers += _conv_bn_relu(cin, cout, 3, 2 if i == 0 else 1)
        cin = cout
    return Stem(*layers, _max_pool(), out_channels=widths[-1])


def axial_stem(
    *,
    width: int = 32,
    span: int = 15,
    num_heads: int = 8,
    stride_mode: str = "subsample",
    gradient_checkpointing: bool = False,
) -> Stem:
    """Three axial blocks on the RGB image (first one stride 2; local ``span``) -> max-pool."""
    blocks = [
        AxialBlock(
            3 if i == 0 else 2 * width,
            width,
            stride=2 if i == 0 else 1,
            span=span,
            span_mode="local",
            stride_mode=stride_mode,
            num_heads=num_heads,
        )
        for i in range(3)
    ]
    stage = AxialStage(blocks, gradient_checkpointing=gradient_checkpointing)
    return Stem(stage, _max_pool(), out_channels=2 * width)
