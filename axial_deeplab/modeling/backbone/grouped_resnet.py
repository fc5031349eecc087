"""The deeplab2 encoder layout: a stem and up to five block groups whose block types, widths,
strides, dilations and drop-path rates follow from a few numbers (deeplab2
``model/encoder/axial_resnet.py`` and ``model/layers/axial_block_groups.py``).

One layout covers ResNet-50 (7x7 stem), ResNet-50-beta (Inception stem), Wide-ResNet-41 /
SWideRNet (3x3 stem, a first group at stride 2, wide basic blocks), Axial-SWideRNet and the
MaX-DeepLab-S/-L backbones (axial blocks from stride 16, or from stride 4). Unlike torchvision's
ResNet there is no max-pool: the first block of res2 strides instead.

``plan_groups`` is the pure planning function; ``GroupedResNet`` holds the modules; the variants
are rows of ``variants.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .axial_blocks import AxialBottleneckBlock, AxialStage
from .base import Backbone, ShapeSpec
from .conv_blocks import BasicBlock, BottleneckBlock, conv_bn
from .stems import Stem, inception_stem

BACKBONE_TYPES = ("resnet", "resnet_beta", "wider_resnet")
GROUP_NAMES = ("res1", "res2", "res3", "res4", "res5")
STACKED = "stacked_res5"  # output of MaX-DeepLab-L's stacked decoder


@dataclass(frozen=True)
class BlockPlan:
    """One residual block: ``kind`` ("basic", "bottleneck" or "axial"), conv/attention widths,
    stride, dilation of its (first) 3x3 conv and of a basic block's second conv, drop-path keep
    probability."""

    kind: str
    channels: tuple[int, ...]
    stride: int
    dilation: int
    second_dilation: int
    drop_path_keep: float


def drop_path_keep(keep_last: float, schedule: str, stage: int, num_stages: int = 4) -> float:
    """Keep probability of a block in ``stage`` (0-based ResNet stage of its stride):
    ``"constant"``: ``keep_last``; ``"linear"``: ``1 - (1 - keep_last) * stage / num_stages``."""
    if schedule == "constant":
        return keep_last
    if schedule == "linear":
        return 1.0 - (1.0 - keep_last) * stage / num_stages
    raise ValueError(f"drop_path_schedule: expected 'constant' or 'linear', got {schedule!r}")


def _group_plan(
    filters: int,
    num_blocks: int,
    *,
    stride: int,
    input_stride: int,
    output_stride: int,
    backbone_type: str,
    axial_from: int,
    attention_expansion: int,
    value_expansion: float,
    keep_prob: float,
    drop_path_from: int,
    schedule: str,
) -> list[BlockPlan]:
    """The blocks of one group that starts at ``input_stride`` and strides by ``stride``."""
    blocks, current = [], input_stride
    for index in range(num_blocks):
        first = index == 0
        block_stride = stride if first and input_stride < output_stride else 1
        dilation = current // output_stride if current > output_stride else 1
        second = dilation
        if first and input_stride * stride > output_stride:
            second = input_stride * stride // output_stride
        keep = 1.0
        if current >= drop_path_from:
            keep = drop_path_keep(keep_prob, schedule, round(math.log2(current) - 1))
        if current >= axial_from > 0:
            kind = "axial"
            channels = (
                filters * attention_expansion,
                round(filters * value_expansion),
                4 * filters,
            )
        elif backbone_type in ("resnet", "resnet_beta"):
            kind, channels = "bottleneck", (filters, filters, 4 * filters)
        elif input_stride * stride < 32:
            kind, channels = "basic", (4 * filters, 4 * filters)
        else:
            kind, channels = "bottleneck", (filters, 2 * filters, 4 * filters)
        blocks.append(BlockPlan(kind, channels, block_stride, dilation, second, keep))
        if first and stride > 1:
            current *= stride
    return blocks


# Defaults of ``plan_groups`` (deeplab2's Axial-ResNet defaults).
PLAN_DEFAULTS: dict[str, Any] = dict(
    layer_multiplier=1.0,
    width_multiplier=1.0,
    stem_width_multiplier=1.0,
    output_stride=16,
    axial_from=0,
    attention_expansion=2,
    value_expansion=2.0,
    drop_path_keep_prob=1.0,
    drop_path_from=16,
    drop_path_schedule="constant",
)


def block_options(*, backbone_type: str, **plan: Any) -> dict[str, Any]:
    """The keyword arguments of ``_group_plan`` shared by every group of an encoder built from
    ``plan`` (``plan_groups`` arguments; missing ones take ``PLAN_DEFAULTS``)."""
    o = {**PLAN_DEFAULTS, **plan}
    return dict(
        output_stride=o["output_stride"],
        backbone_type=backbone_type,
        axial_from=o["axial_from"],
        attention_expansion=o["attention_expansion"],
        value_expansion=o["value_expansion"],
        keep_prob=o["drop_path_keep_prob"],
        drop_path_from=o["drop_path_from"],
        schedule=o["drop_path_schedule"],
    )


def plan_groups(*, backbone_type: str, num_blocks: Sequence[int], **options: Any) -> dict:
    """Group name (``res1``..``res5``) -> its blocks, for a stem of stride 2.

    ``num_blocks`` are the res2..res5 counts (each scaled by ``layer_multiplier``, truncated);
    res1 (3 blocks at stride 2) exists only for ``"wider_resnet"``. Group ``i`` has base width
    ``round(32 * 2**i * width_multiplier)`` (res1 of a wide ResNet: ``stem_width_multiplier``).
    Blocks at a stride ``>= axial_from`` (0: none) are axial.
    """
    unknown = sorted(set(options) - set(PLAN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown encoder options {unknown}; known: {sorted(PLAN_DEFAULTS)}")
    o = {**PLAN_DEFAULTS, **options}
    output_stride = o["output_stride"]
    if backbone_type not in BACKBONE_TYPES:
        raise ValueError(f"backbone_type: expected one of {BACKBONE_TYPES}, got {backbone_type!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride: expected 8, 16 or 32, got {output_stride}")
    if len(num_blocks) != 4:
        raise ValueError(f"num_blocks: expected 4 counts (res2..res5), got {list(num_blocks)}")
    counts = [3] + [int(n * o["layer_multiplier"]) for n in num_blocks]
    wide = backbone_type == "wider_resnet"
    filters = [
        round(2**i * 32 * o["stem_width_multiplier" if wide and i == 0 else "width_multiplier"])
        for i in range(5)
    ]
    strides, input_strides = [1 if wide else 2, 2, 2, 2, 2], [2 if wide else 1, 2, 4, 8, 16]
    common = block_options(backbone_type=backbone_type, **o)
    return {
        GROUP_NAMES[i]: _group_plan(
            filters[i], counts[i], stride=strides[i], input_stride=input_strides[i], **common
        )
        for i in range(0 if wide else 1, 5)
    }


def build_block(in_channels: int, plan: BlockPlan, *, num_heads: int = 8) -> nn.Module:
    """The module of one ``BlockPlan`` (axial layers: deeplab2's global span, 509-entry tables)."""
    common = dict(stride=plan.stride, drop_path_keep=plan.drop_path_keep)
    if plan.kind == "axial":
        return AxialBottleneckBlock(in_channels, plan.channels, num_heads=num_heads, **common)
    if plan.kind == "bottleneck":
        return BottleneckBlock(in_channels, plan.channels, dilation=plan.dilation, **common)
    return BasicBlock(
        in_channels,
        plan.channels,
        dilation=plan.dilation,
        second_dilation=plan.second_dilation,
        **common,
    )


def grouped_stem(backbone_type: str, stem_width_multiplier: float) -> Stem:
    """Stride-2 stem, ending before its ReLU (the first block applies it): ``"resnet"`` 7x7
    conv-BN, ``"resnet_beta"`` the Inception stem without its last ReLU and max-pool,
    ``"wider_resnet"`` 3x3 conv-BN. Its ``stride`` is 2."""
    width = round(64 * stem_width_multiplier)
    if backbone_type == "resnet_beta":
        inception = inception_stem(tuple(int(c * stem_width_multiplier) for c in (64, 64, 128)))
        stem = Stem(*list(inception)[:-2], out_channels=inception.out_channels)
    else:
        kernel = 7 if backbone_type == "resnet" else 3
        stem = Stem(*conv_bn(3, width, kernel, stride=2), out_channels=width)
    stem.stride = 2
    return stem


class GroupedResNet(Backbone):
    """``[N, 3, H, W]`` -> ``{"res2": [N, C2, H/4, W/4], ..., "res5": [N, C5, H/os, W/os]}``.

    Args:
        stem: stride-2 stem (``grouped_stem``).
        groups: group name (``res1``..``res5``) -> its blocks, in order.
        out_features: names returned by ``forward``.
        stacked_decoder: MaX-DeepLab-L's hourglass on the group outputs (``stacked_decoder.py``);
            its output is the feature ``"stacked_res5"``.
        gradient_checkpointing: recompute each block in the backward pass (training only).
    """

    def __init__(
        self,
        stem: Stem,
        groups: dict[str, Sequence[nn.Module]],
        *,
        out_features: Sequence[str] = ("res2", "res3", "res5"),
        stacked_decoder: nn.Module | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.group_names = list(groups)
        self.stages = nn.ModuleList(
            AxialStage(blocks, gradient_checkpointing=gradient_checkpointing)
            for blocks in groups.values()
        )
        self._feature_specs = {}
        stride = stem.stride
        for name, stage in zip(self.group_names, self.stages, strict=True):
            stride *= stage[0].stride
            self._feature_specs[name] = ShapeSpec(channels=stage[-1].out_channels, stride=stride)
        self.stacked_decoder = stacked_decoder
        if stacked_decoder is not None:
            self._feature_specs[STACKED] = stacked_decoder.output_shape
        unknown = [f for f in out_features if f not in self._feature_specs]
        if unknown:
            raise ValueError(f"out_features {unknown} not among {list(self._feature_specs)}")
        self._out_features = list(out_features)
        if stacked_decoder is not None and STACKED not in self._out_features:
            # kept for its converted weights, but never run: frozen, so that DistributedDataParallel
            # (find_unused_parameters False, as detectron2's) does not wait for its gradients
            stacked_decoder.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` normalised images -> the requested features (after ReLU)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"GroupedResNet expects images [N, 3, H, W], got {list(x.shape)}")
        groups: dict[str, torch.Tensor] = {}
        x = self.stem(x)  # [N, C, H/2, W/2], before ReLU
        for name, stage in zip(self.group_names, self.stages, strict=True):
            x = groups[name] = stage(x)  # [N, C, H/s, W/s], before ReLU
        if self.stacked_decoder is not None and STACKED in self._out_features:
            groups[STACKED] = self.stacked_decoder(groups)
        return {name: torch.relu(groups[name]) for name in self._out_features}
