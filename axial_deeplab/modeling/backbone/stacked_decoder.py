"""MaX-DeepLab-L's stacked decoder: an hourglass over the encoder's group outputs (deeplab2
``AxialResNet`` with ``backbone_decoder_num_stacks``, in classification mode).

From the last group (stride ``os``) the decoder walks down to stride 4 and back up to ``os``, once
per stack (os 16, one stack: strides 8, 4, 8, 16). Each stage fuses (``ResizedFuse``) the previous
stage's output with the last two features seen at its stride, then runs one residual block
(deeplab2's block rules at that stride: wide basic blocks below stride 16, axial above). All
features are pre-activation; the result is the feature ``"stacked_res5"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ShapeSpec
from .conv_blocks import conv_bn
from .grouped_resnet import GROUP_NAMES, PLAN_DEFAULTS, _group_plan, block_options, build_block


class ResizedFuse(nn.Module):
    """Sum of inputs brought to ``channels`` and the first input's target size.

    Input ``i`` with ``channels`` channels is resized as is; one of about twice the target size
    goes through ReLU and a strided 1x1 conv + BN; any other through ReLU, a 1x1 conv + BN and a
    bilinear resize (align corners). ``kinds[i]`` is ``"same"``, ``"strided"`` or ``"resized"``.
    """

    def __init__(self, in_channels: Sequence[int], kinds: Sequence[str], channels: int) -> None:
        super().__init__()
        self.kinds = list(kinds)
        self.convs = nn.ModuleList(
            (
                nn.Identity()
                if kind == "same"
                else conv_bn(cin, channels, 1, stride=2 if kind == "strided" else 1)
            )
            for cin, kind in zip(in_channels, kinds, strict=True)
        )

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        total = 0
        for x, conv, kind in zip(features, self.convs, self.kinds, strict=True):
            if kind != "same":
                x = conv(F.relu(x))  # [N, C, h, w]
            if tuple(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            total = total + x
        return total


def _fuse_kind(channels: int, spec: ShapeSpec, stride: int, target: int) -> str:
    if spec.channels == target:
        return "same"
    return "strided" if spec.stride * 2 == stride else "resized"


class StackedDecoder(nn.Module):
    """The stages of the hourglass: per stage its stride, ``ResizedFuse`` and block."""

    def __init__(self, stages: list[tuple[int, list[str], ResizedFuse, nn.Module]]) -> None:
        super().__init__()
        self.strides = [s for s, _, _, _ in stages]
        self.sources = [src for _, src, _, _ in stages]
        self.fuses = nn.ModuleList(f for _, _, f, _ in stages)
        self.blocks = nn.ModuleList(b for _, _, _, b in stages)
        self.output_shape = ShapeSpec(channels=stages[-1][3].out_channels, stride=self.strides[-1])

    def forward(self, groups: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Group outputs (pre-activation) -> ``[N, C, H/os, W/os]`` (pre-activation)."""
        seen = dict(groups)
        for i, (sources, fuse, block) in enumerate(zip(self.sources, self.fuses, self.blocks)):
            size = tuple(seen[sources[-1]].shape[2:])  # the size at this stage's stride
            x = seen[f"decoder{i + 1}"] = block(fuse([seen[n] for n in sources], size))
        return x


def build_stacked_decoder(
    plan: Mapping[str, Any],
    groups: Mapping[str, Sequence[nn.Module]],
    num_stacks: int,
    *,
    num_heads: int = 8,
) -> StackedDecoder:
    """The hourglass for an encoder built from ``plan`` (``plan_groups`` arguments) with
    ``groups`` (name -> blocks); stages run to stride 4 and back, ``num_stacks`` times."""
    p = {**PLAN_DEFAULTS, **plan}
    os, width = p["output_stride"], p["width_multiplier"]
    shapes: dict[str, ShapeSpec] = {}
    stride = 2
    for name, blocks in groups.items():
        stride *= blocks[0].stride
        shapes[name] = ShapeSpec(blocks[-1].out_channels, stride)
    # stride -> names of the features seen at it (the last group stands for every stride >= os)
    at_stride = {min(2 ** (i + 1), os): [n] for i, n in enumerate(GROUP_NAMES) if n in shapes}
    stages, previous, stride, stack, down = [], GROUP_NAMES[-1], os, 0, True
    while stack < num_stacks or stride > 4:
        stride = stride // 2 if down else stride * 2
        input_stride = stride
        if stride == os:
            stack, down, input_stride = stack + 1, True, 32
        channels = round(input_stride * 64 * width)
        sources = [previous] + at_stride[stride][-2:]
        name = f"decoder{len(stages) + 1}"
        kinds = [_fuse_kind(channels, shapes[n], stride, channels) for n in sources]
        fuse = ResizedFuse([shapes[n].channels for n in sources], kinds, channels)
        (block_plan,) = _group_plan(
            channels // 4, 1, stride=1, input_stride=input_stride, **block_options(**plan)
        )
        block = build_block(channels, block_plan, num_heads=num_heads)
        stages.append((stride, sources, fuse, block))
        shapes[name] = ShapeSpec(block.out_channels, stride)
        if stride == os and stack == num_stacks:
            break
        at_stride[stride].append(name)
        previous = name
        if stride == 4:
            down = False
    return StackedDecoder(stages)
