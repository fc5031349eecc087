"""Residual blocks of the deeplab2 ResNet family (ResNet-50, ResNet-50-beta, Wide-ResNet-41, SWideRNet).

Every block maps a pre-activation ``[N, C_in, H, W]`` to the pre-activation
``[N, C_out, H/s, W/s]`` = ``branch(a) + shortcut(a)`` with ``a = relu(x)`` (deeplab2's convention:
the group outputs before ReLU are features in their own right for MaX-DeepLab-L's stacked decoder;
chained, it is the usual post-activation ResNet). The shortcut is a strided 1x1 conv + BN when the
channels change, else the identity (subsampled when the block strides). Options shared by all block types (deeplab2
``model/layers/axial_blocks.py``):

- ``se``: simplified squeeze-and-excitation on the branch output: global mean, 1x1 conv with bias,
  hard sigmoid ``relu6(x + 3) * 0.16667`` (deeplab2's constant, not exactly 1/6), rescale.
- ``drop_path_keep``: stochastic depth in training: the branch of each sample is kept with this
  probability and divided by it (identity in eval mode).

Strides and dilations follow deeplab2: the 3x3 conv strides ("ResNet v1.5"), 'same' padding
``dilation * (k - 1) / 2`` on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HARD_SIGMOID_SCALE = 0.16667  # deeplab2 activations.hard_sigmoid: relu6(x + 3) * 0.16667


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """``kernel_size`` conv ('same' padding, no bias) then BN (no activation)."""
    pad = dilation * (kernel_size - 1) // 2
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=pad,
        dilation=dilation,
        bias=False,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


def drop_path(x: torch.Tensor, keep_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: keep each sample's ``x [N, ...]`` with ``keep_prob`` (scaled by
    ``1 / keep_prob``) in training; the identity otherwise."""
    if not training or keep_prob >= 1.0:
        return x
    mask = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return x * torch.floor(mask + keep_prob) / keep_prob


class SqueezeExcite(nn.Module):
    """``x * hard_sigmoid(conv1x1(mean_hw(x)))`` on ``[N, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv(x.mean(dim=(2, 3), keepdim=True))  # [N, C, 1, 1]
        return x * F.relu6(gate + 3.0) * HARD_SIGMOID_SCALE


class ResidualBlock(nn.Module):
    """Input ReLU, shortcut, squeeze-excitation and drop path around ``self.branch``.

    Subclasses build ``self.branch`` (``[N, C_in, H, W] -> [N, C_out, H/s, W/s]``, ending in a BN
    whose scale starts at zero) and call ``_finish_init``.
    """

    branch: nn.Module

    def _finish_init(
        self, in_channels: int, out_channels: int, stride: int, se: bool, drop_path_keep: float
    ) -> None:
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = (
            conv_bn(in_channels, out_channels, 1, stride=stride)
            if in_channels != out_channels
            else None
        )
        self.se = SqueezeExcite(out_channels) if se else None
        self.drop_path_keep = drop_path_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)  # not in place: the caller may keep the pre-activation input
        out = self.branch(x)  # [N, C_out, H/s, W/s]
        if self.se is not None:
            out = self.se(out)
        out = drop_path(out, self.drop_path_keep, self.training)
        if self.shortcut is not None:
            identity = self.shortcut(x)
        else:
            identity = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return out + identity


def _zero_last_norm(branch: nn.Sequential) -> None:
    """A new block starts as the identity: its last BN scale is zero."""
    nn.init.zeros_(branch[-1][-1].weight)


class BottleneckBlock(ResidualBlock):
    """1x1 -> BN-ReLU -> 3x3 (stride, dilation) -> BN-ReLU -> 1x1 -> BN; ``channels`` are the
    three conv widths ``(c1, c2, c_out)``."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        *,
        stride: int = 1,
        dilation: int = 1,
        se: bool = False,
        drop_path_keep: float = 1.0,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.branch = nn.Sequential(
            nn.Sequential(*conv_bn(in_channels, c1, 1), nn.ReLU(inplace=True)),
            nn.Sequential(*conv_bn(c1, c2, 3, stride=stride, dilation=dilation), nn.ReLU()),
            conv_bn(c2, c3, 1),
        )
        _zero_last_norm(self.branch)
        self._finish_init(in_channels, c3, stride, se, drop_path_keep)


class BasicBlock(ResidualBlock):
    """3x3 (stride, dilation) -> BN-ReLU -> 3x3 (``second_dilation``) -> BN; ``channels`` are the
    two conv widths ``(c1, c_out)`` (the wide blocks of Wide-ResNet / SWideRNet)."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        *,
        stride: int = 1,
        dilation: int = 1,
        second_dilation: int = 1,
        se: bool = False,
        drop_path_keep: float = 1.0,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.branch = nn.Sequential(
            nn.Sequential(
                *conv_bn(in_channels, c1, 3, stride=stride, dilation=dilation), nn.ReLU()
            ),
            conv_bn(c1, c2, 3, dilation=second_dilation),
        )
        _zero_last_norm(self.branch)
        self._finish_init(in_channels, c2, stride, se, drop_path_keep)
