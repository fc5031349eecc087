"""Panoptic-DeepLab decoder: a context module on the coarsest feature, then fusion with finer ones.

Layout (Panoptic-DeepLab; deeplab2 ``model/decoder/panoptic_deeplab.py``, detectron2
``DeepLabV3PlusHead``): ``context(res5)`` -> for ``res3`` then ``res2``: bilinear upsample to
that feature's size, concatenate ``[projection(feature), upsampled]`` (projection: 1x1 conv, norm,
ReLU), fuse with one 5x5 depthwise-separable conv (depthwise 5x5, norm, ReLU, pointwise 1x1, norm,
ReLU). Output ``[N, decoder_channels, H/4, W/4]``.

Context modules:
- ``"aspp"``: 1x1 branch, three 3x3 atrous branches (rates ``(6, 12, 18)`` at OS16,
  ``(3, 6, 9)`` at OS32) and an image-pooling branch, concatenated, 1x1 projection, dropout 0.1.
  The pooling branch is a global mean (any input size) then a 1x1 conv *with bias and no norm*
  (as detectron2: BN on a 1x1 map fails in training with batch size 1), broadcast back.
- ``"conv1x1"``: the single 1x1 projection (conv, norm, ReLU) that Axial-DeepLab uses instead of
  ASPP (deeplab2 ``aspp_use_only_1x1_proj_conv``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from axial_deeplab.modeling.backbone.base import ShapeSpec

NORMS = {"BN": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm}


def norm_layer(norm: str, channels: int) -> nn.Module:
    """``"BN"``, ``"SyncBN"`` or ``"GN"`` (32 groups) over ``channels``."""
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {sorted(NORMS) + ['GN']}, got {norm!r}")
    return NORMS[norm](channels)


def conv_norm_relu(
    in_channels: int, out_channels: int, *, kernel_size: int = 1, dilation: int = 1, norm: str
) -> nn.Sequential:
    """``kernel_size`` conv (no bias, 'same' padding) -> norm -> ReLU."""
    pad = dilation * (kernel_size - 1) // 2
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False
    )
    return nn.Sequential(conv, norm_layer(norm, out_channels), nn.ReLU(inplace=True))


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise ``k x k`` conv, norm, ReLU, then pointwise 1x1 conv, norm, ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int = 5, norm: str = "BN"
    ) -> None:
        depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        super().__init__(
            depthwise,
            norm_layer(norm, in_channels),
            nn.ReLU(inplace=True),
            *conv_norm_relu(in_channels, out_channels, norm=norm),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[N, C_in, h, w]`` -> ``[N, out_channels, h, w]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dilations: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        norm: str = "BN",
    ) -> None:
        super().__init__()
        branches = [conv_norm_relu(in_channels, out_channels, norm=norm)]
        branches += [
            conv_norm_relu(in_channels, out_channels, kernel_size=3, dilation=d, norm=norm)
            for d in dilations
        ]
        self.branches = nn.ModuleList(branches)
        self.pool_conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        num = len(branches) + 1
        self.project = conv_norm_relu(num * out_channels, out_channels, norm=norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]  # each [N, C, h, w]
        pooled = F.relu(self.pool_conv(x.mean(dim=(2, 3), keepdim=True)))  # [N, C, 1, 1]
        outs.append(pooled.expand(-1, -1, *x.shape[2:]))  # [N, C, h, w]
        return self.dropout(self.project(torch.cat(outs, dim=1)))


def build_context(
    kind: str,
    in_channels: int,
    out_channels: int,
    *,
    dilations: Sequence[int],
    dropout: float,
    norm: str,
) -> nn.Module:
    """Context module by name: ``"aspp"`` or ``"conv1x1"``."""
    if kind == "aspp":
        return ASPP(in_channels, out_channels, dilations=dilations, dropout=dropout, norm=norm)
    if kind == "conv1x1":
        return conv_norm_relu(in_channels, out_channels, norm=norm)
    raise ValueError(f"context: expected 'aspp' or 'conv1x1', got {kind!r}")


class PanopticDeepLabDecoder(nn.Module):
    """One decoder branch (semantic or instance) of Panoptic-DeepLab.

    Args:
        input_shape: the backbone's ``output_shape()``; only ``in_features`` are used.
        in_features: feature names, the coarsest (context input) first, e.g.
            ``("res5", "res3", "res2")``.
        project_channels: 1x1 projection width of each finer feature, e.g. ``(64, 32)``.
        context: ``"aspp"`` or ``"conv1x1"``; ``context_channels`` its output width.
        decoder_channels: width of every fusion conv (and of the output).
        align_corners: bilinear upsampling convention.
    """

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        in_features: Sequence[str] = ("res5", "res3", "res2"),
        project_channels: Sequence[int] = (64, 32),
        context: str = "conv1x1",
        context_channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        aspp_dropout: float = 0.1,
        decoder_channels: int = 256,
        norm: str = "BN",
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"decoder in_features {missing} not among {sorted(input_shape)}")
        if len(project_channels) != len(in_features) - 1:
            raise ValueError(
                f"project_channels: need one per feature after {in_features[0]!r}, "
                f"got {list(project_channels)} for {list(in_features[1:])}"
            )
        self.in_features = list(in_features)
        self.align_corners = align_corners
        self.context = build_context(
            context,
            input_shape[in_features[0]].channels,
            context_channels,
            dilations=aspp_dilations,
            dropout=aspp_dropout,
            norm=norm,
        )
        self.projections = nn.ModuleList()
        self.fusions = nn.ModuleList()
        channels = context_channels
        for name, proj in zip(in_features[1:], project_channels, strict=True):
            self.projections.append(conv_norm_relu(input_shape[name].channels, proj, norm=norm))
            self.fusions.append(
                DepthwiseSeparableConv(proj + channels, decoder_channels, norm=norm)
            )
            channels = decoder_channels
        self.out_channels = channels
        self.out_stride = input_shape[in_features[-1]].stride

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{"res5": [N, C5, h5, w5], ...}`` -> ``[N, decoder_channels, h2, w2]``."""
        y = self.context(features[self.in_features[0]])
        for name, project, fuse in zip(
            self.in_features[1:], self.projections, self.fusions, strict=True
        ):
            low = project(features[name])  # [N, P, h, w]
            y = F.interpolate(
                y, size=low.shape[2:], mode="bilinear", align_corners=self.align_corners
            )
            y = fuse(torch.cat([low, y], dim=1))  # [N, decoder_channels, h, w]
        return y
