"""Axial-ResNet: a stem and four stages of axial blocks, as a ``Backbone`` (and an ImageNet classifier).

The variants (panoptic Axial-ResNet-S/M/L/XL and the authors' ImageNet ``axial26s``/``axial50s/m/l``)
are rows of ``VARIANTS`` in ``variants.py``, built by ``variants.axial_resnet(name, **overrides)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .axial_blocks import AxialBlock, AxialStage
from .base import Backbone, ShapeSpec
from .stems import Stem

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def make_stage(
    in_channels: int,
    width: int,
    spans: Sequence[int],
    *,
    stride: int,
    span_mode: str,
    stride_mode: str,
    num_heads: int,
    gradient_checkpointing: bool = False,
) -> AxialStage:
    """``len(spans)`` axial blocks of attention width ``width`` (output ``2 * width`` channels); the
    first one reads ``in_channels`` and strides by ``stride``; block ``i`` uses span ``spans[i]``.
    """
    blocks = [
        AxialBlock(
            in_channels if i == 0 else AxialBlock.expansion * width,
            width,
            stride=stride if i == 0 else 1,
            span=span,
            span_mode=span_mode,
            stride_mode=stride_mode,
            num_heads=num_heads,
        )
        for i, span in enumerate(spans)
    ]
    return AxialStage(blocks, gradient_checkpointing=gradient_checkpointing)


class AxialResNet(Backbone):
    """``[N, 3, H, W]`` -> ``{"res2": [N, C2, H/4, W/4], ..., "res5": [N, C5, H/s5, W/s5]}``.

    Args:
        stem: maps images to ``[N, stem.out_channels, H/4, W/4]`` (sizes rounded up).
        stages: the four stages res2..res5.
        stage_strides: stride of the first block of each stage (1, 2, 2, 2 for output stride 32;
            1, 2, 2, 1 for 16).
        out_features: names returned by ``forward`` among ``res2..res5`` and ``"linear"``.
        num_classes: > 0 adds global average pooling and a linear classifier on res5, returned
            under ``"linear"`` as ``[N, num_classes]`` logits.
        size_divisibility: input sizes must be multiples of this (0: any size).
    """

    def __init__(
        self,
        stem: Stem,
        stages: Sequence[AxialStage],
        *,
        stage_strides: Sequence[int],
        out_features: Sequence[str] = ("res2", "res3", "res5"),
        num_classes: int = 0,
        size_divisibility: int = 0,
    ) -> None:
        super().__init__()
        if len(stages) != len(STAGE_NAMES) or len(stage_strides) != len(STAGE_NAMES):
            raise ValueError(
                f"expected {len(STAGE_NAMES)} stages and strides, got {len(stages)} and "
                f"{len(stage_strides)}"
            )
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self._feature_specs = {}
        stride = stem.stride
        for name, stage, s in zip(STAGE_NAMES, stages, stage_strides, strict=True):
            stride *= s
            last = stage[-1]
            self._feature_specs[name] = ShapeSpec(channels=last.expand.out_channels, stride=stride)
        self.fc: nn.Linear | None = None
        if num_classes > 0:
            self.fc = nn.Linear(self._feature_specs["res5"].channels, num_classes)
            self._feature_specs["linear"] = ShapeSpec(channels=num_classes, stride=0)
        unknown = [f for f in out_features if f not in self._feature_specs]
        if unknown:
            raise ValueError(
                f"out_features {unknown} are not among this model's {list(self._feature_specs)}"
            )
        self._out_features = list(out_features)
        self._size_divisibility = size_divisibility

    @property
    def size_divisibility(self) -> int:
        """0 (any size), or the output stride for average-pool striding (see ``AxialBlock``)."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` normalised images -> the requested features."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"AxialResNet expects images [N, 3, H, W], got {list(x.shape)}")
        d = self._size_divisibility
        if d and (x.shape[-2] % d or x.shape[-1] % d):
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be a multiple of {d} for this model "
                f"(stride_mode='avgpool'); pad the images"
            )
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)  # [N, C1, H/4, W/4]
        for name, stage in zip(STAGE_NAMES, self.stages, strict=True):
            x = stage(x)  # [N, C, H/s, W/s]
            if name in self._out_features:
                out[name] = x
        if self.fc is not None and "linear" in self._out_features:
            out["linear"] = self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))  # [N, num_classes]
        return out
