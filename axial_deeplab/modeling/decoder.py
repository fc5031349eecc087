"""Panoptic-DeepLab decoder: a context module on the coarsest feature, then fusion with finer ones.

Layout (Panoptic-DeepLab; deeplab2 ``model/decoder/panoptic_deeplab.py``, detectron2
``DeepLabV3PlusHead``): ``context(res5)`` -> for ``res3`` then ``res2``: bilinear upsample to
that feature's size, concatenate ``[projection(feature), upsampled]`` (projection: 1x1 conv, norm,
ReLU), fuse with one 5x5 depthwise-separable conv (depthwise 5x5, norm, ReLU, pointwise 1x1, norm,
ReLU) or, with ``separable=False``, two 3x3 conv-norm-ReLU (detectron2's regular
Panoptic-DeepLab). Output ``[N, decoder_channels, H/4, W/4]``.

Context modules:
- ``"aspp"``: 1x1 branch, three 3x3 atrous branches (rates ``(6, 12, 18)`` at OS16,
  ``(3, 6, 9)`` at OS32; 3x3 depthwise-separable with ``separable``, as detectron2's DSConv
  models) and an image-pooling branch, concatenated, 1x1 projection, dropout 0.1.
  Image pooling: a global mean (any input size), or with ``pool_size (h, w)`` a ``h x w`` average
  at stride 1 ('valid'; the window is clipped to the feature, so a feature no larger than it gets
  the global mean) then a bilinear resize back (detectron2 and deeplab2 pool over the training
  crop's feature size this way); then a 1x1 conv *with bias and no norm* (detectron2: BN on a 1x1
  map fails in training with batch size 1) or, with ``pool_norm``, without bias followed by a norm
  (deeplab2); ReLU; broadcast or resized back.
- ``"conv1x1"``: the single 1x1 projection (conv, norm, ReLU) that Axial-DeepLab uses instead of
  ASPP (deeplab2 ``aspp_use_only_1x1_proj_conv``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    """Depthwise ``k x k`` conv (dilated by ``dilation``), norm, ReLU, then pointwise 1x1 conv, norm,
    ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 5,
        dilation: int = 1,
        norm: str = "BN",
    ) -> None:
        depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        super().__init__(
            depthwise,
            norm_layer(norm, in_channels),
            nn.ReLU(inplace=True),
            *conv_norm_relu(in_channels, out_channels, norm=norm),
        )


def fusion_conv(
    in_channels: int, out_channels: int, *, separable: bool, norm: str
) -> nn.Sequential:
    """One 5x5 depthwise-separable conv, or two 3x3 conv-norm-ReLU (``in -> out -> out``)."""
    if separable:
        return DepthwiseSeparableConv(in_channels, out_channels, norm=norm)
    return nn.Sequential(
        conv_norm_relu(in_channels, out_channels, kernel_size=3, norm=norm),
        conv_norm_relu(out_channels, out_channels, kernel_size=3, norm=norm),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[N, C_in, h, w]`` -> ``[N, out_channels, h, w]``.

    ``separable``: 3x3 depthwise-separable atrous branches; ``pool_size``: ``()`` global image
    pooling, ``(h, w)`` a stride-1 ``h x w`` average then a bilinear resize (``align_corners``);
    ``pool_norm``: norm (no bias) after the pooling branch's 1x1 conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dilations: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        norm: str = "BN",
        separable: bool = False,
        pool_size: Sequence[int] = (),
        pool_norm: bool = False,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if len(pool_size) not in (0, 2) or any(p < 1 for p in pool_size):
            raise ValueError(f"pool_size: expected () or (h, w) >= 1, got {list(pool_size)}")
        branches = [conv_norm_relu(in_channels, out_channels, norm=norm)]
        for d in dilations:
            if separable:
                branch = DepthwiseSeparableConv(
                    in_channels, out_channels, kernel_size=3, dilation=d, norm=norm
                )
            else:
                branch = conv_norm_relu(
                    in_channels, out_channels, kernel_size=3, dilation=d, norm=norm
                )
            branches.append(branch)
        self.branches = nn.ModuleList(branches)
        self.pool_size = tuple(pool_size)
        self.align_corners = align_corners
        self.pool_conv = nn.Conv2d(in_channels, out_channels, 1, bias=not pool_norm)
        self.pool_norm = norm_layer(norm, out_channels) if pool_norm else nn.Identity()
        num = len(branches) + 1
        self.project = conv_norm_relu(num * out_channels, out_channels, norm=norm)
        self.dropout = nn.Dropout(dropout)

    def image_pool(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C_in, h, w]`` -> ``[N, C_in, 1, 1]`` global mean, or with ``pool_size`` the
        stride-1 average ``[N, C_in, h - kh + 1, w - kw + 1]`` over ``(kh, kw)`` = ``pool_size``
        clipped to ``(h, w)`` (``[N, C_in, 1, 1]`` when the feature is no larger than it)."""
        if not self.pool_size:
            return x.mean(dim=(2, 3), keepdim=True)
        window = (min(self.pool_size[0], x.shape[2]), min(self.pool_size[1], x.shape[3]))
        return F.avg_pool2d(x, window, stride=1)

    def normalize_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pool_norm`` of ``[N, C, h', w']``; a batch norm of one value per channel (batch 1,
        global pooling) has no batch statistics in training and uses its running ones."""
        norm = self.pool_norm
        single = pooled.shape[0] * pooled.shape[2] * pooled.shape[3] == 1
        if not (self.training and single and isinstance(norm, nn.modules.batchnorm._BatchNorm)):
            return norm(pooled)
        mean, var = norm.running_mean, norm.running_var
        return F.batch_norm(pooled, mean, var, norm.weight, norm.bias, False, 0.0, norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]  # each [N, C, h, w]
        pooled = self.pool_conv(self.image_pool(x))  # [N, C, h', w']
        pooled = F.relu(self.normalize_pooled(pooled))
        if not self.pool_size:
            outs.append(pooled.expand(-1, -1, *x.shape[2:]))  # [N, C, h, w]
        else:  # resized back even from 1 x 1, as detectron2 and deeplab2 do
            size = tuple(x.shape[2:])
            mode = dict(mode="bilinear", align_corners=self.align_corners)
            outs.append(F.interpolate(pooled, size=size, **mode))  # [N, C, h, w]
        return self.dropout(self.project(torch.cat(outs, dim=1)))


def build_context(
    kind: str, in_channels: int, out_channels: int, *, norm: str, **aspp_kwargs: Any
) -> nn.Module:
    """Context module by name: ``"aspp"`` (``aspp_kwargs`` go to ``ASPP``) or ``"conv1x1"``
    (which has none of those options and ignores them)."""
    if kind == "aspp":
        return ASPP(in_channels, out_channels, norm=norm, **aspp_kwargs)
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
        aspp_separable, aspp_pool_size, aspp_pool_norm: ``ASPP``'s ``separable``,
            ``pool_size`` (in feature pixels) and ``pool_norm``.
        decoder_channels: width of every fusion conv (and of the output).
        separable: fusion by one 5x5 depthwise-separable conv (else two 3x3 convs).
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
        aspp_separable: bool = False,
        aspp_pool_size: Sequence[int] = (),
        aspp_pool_norm: bool = False,
        decoder_channels: int = 256,
        separable: bool = True,
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
        aspp_options = dict(
            dilations=aspp_dilations,
            dropout=aspp_dropout,
            separable=aspp_separable,
            pool_size=aspp_pool_size,
            pool_norm=aspp_pool_norm,
            align_corners=align_corners,
        )
        self.context = build_context(
            context,
            input_shape[in_features[0]].channels,
            context_channels,
            norm=norm,
            **aspp_options,
        )
        self.projections = nn.ModuleList()
        self.fusions = nn.ModuleList()
        channels = context_channels
        for name, proj in zip(in_features[1:], project_channels, strict=True):
            self.projections.append(conv_norm_relu(input_shape[name].channels, proj, norm=norm))
            self.fusions.append(
                fusion_conv(proj + channels, decoder_channels, separable=separable, norm=norm)
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
