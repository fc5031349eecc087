"""The backbone interface: named multi-scale features, each described by a ``ShapeSpec``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (input pixels per feature pixel) of one feature map."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """A module mapping ``[N, 3, H, W]`` images to ``{"res2": [N, C2, H/4, W/4], ...}``.

    Subclasses set ``self._out_features`` (names returned by ``forward``) and
    ``self._feature_specs`` (name -> ``ShapeSpec`` for every feature they can return).
    """

    _out_features: list[str]
    _feature_specs: dict[str, ShapeSpec]

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``ShapeSpec`` of every feature that ``forward`` returns."""
        return {name: self._feature_specs[name] for name in self._out_features}

    @property
    def size_divisibility(self) -> int:
        """Input sizes need no padding: axial attention and the stems accept any ``H, W``."""
        return 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError
