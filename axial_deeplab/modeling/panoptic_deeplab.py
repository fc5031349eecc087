"""The Panoptic-DeepLab meta-architecture: backbone, dual decoders, three heads.

``forward`` takes raw RGB images ``[N, 3, H, W]`` in 0-255 (as loaded) and normalises them inside
with ``pixel_mean`` / ``pixel_std`` (as detectron2 models do); it returns the raw predictions at
input resolution, the same dict in train and eval mode:

- ``"semantic"`` ``[N, K, H, W]`` logits,
- ``"center"`` ``[N, 1, H, W]`` centre heatmap,
- ``"offset"`` ``[N, 2, H, W]`` offsets ``(dy, dx)`` in input pixels.

Losses (``losses.py``) and post-processing (``postprocessing.py``) are separate callables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from axial_deeplab.modeling.backbone.base import Backbone


def upsample(x: torch.Tensor, size: tuple[int, int], *, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``[N, C, h, w]`` to ``[N, C, H, W]`` (no-op when already that size)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def offset_scale(src: int, dst: int, *, align_corners: bool) -> float:
    """Factor turning an offset in a ``src``-pixel axis into one in the ``dst``-pixel axis.

    With ``align_corners`` the first and last pixel centres map onto each other, so distances
    scale by ``(dst - 1) / (src - 1)``; without it the pixel edges do and they scale by
    ``dst / src``.
    """
    if align_corners:
        return (dst - 1) / (src - 1) if src > 1 else float(dst)
    return dst / src


def upsample_offsets(
    offsets: torch.Tensor, size: tuple[int, int], *, align_corners: bool
) -> torch.Tensor:
    """Resize ``[N, 2, h, w]`` ``(dy, dx)`` offsets to ``[N, 2, H, W]`` and rescale each axis."""
    h, w = offsets.shape[2:]
    scale_y = offset_scale(h, size[0], align_corners=align_corners)
    scale_x = offset_scale(w, size[1], align_corners=align_corners)
    scale = offsets.new_tensor([scale_y, scale_x]).view(1, 2, 1, 1)
    return upsample(offsets, size, align_corners=align_corners) * scale


class PanopticDeepLab(nn.Module):
    """Backbone -> semantic decoder -> semantic head; backbone -> instance decoder -> centre and
    offset heads; outputs upsampled to the input size."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        semantic_decoder: nn.Module,
        instance_decoder: nn.Module,
        semantic_head: nn.Module,
        center_head: nn.Module,
        offset_head: nn.Module,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.semantic_decoder = semantic_decoder
        self.instance_decoder = instance_decoder
        self.semantic_head = semantic_head
        self.center_head = center_head
        self.offset_head = offset_head
        self.align_corners = align_corners
        # Run the network on channels-last activations (faster CPU convolutions; set by
        # ``fusion.inference_model``), otherwise on NCHW ones whatever the images' layout; the
        # outputs are contiguous either way.
        self.channels_last = False
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` 0-255 RGB -> ``{"semantic", "center", "offset"}`` at ``H x W``."""
        if images.dim() != 4 or images.shape[1] != self.pixel_mean.shape[1]:
            raise ValueError(
                f"images: expected [N, {self.pixel_mean.shape[1]}, H, W], got {list(images.shape)}"
            )
        x = (images - self.pixel_mean) / self.pixel_std  # [N, 3, H, W]
        x = x.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        features = self.backbone(x)
        return self.predict_from_features(features, tuple(images.shape[2:]))

    def predict_from_features(
        self, features: dict[str, torch.Tensor], size: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """The decoders and heads on the backbone's ``features``, upsampled to ``size``."""
        semantic = self.semantic_head(self.semantic_decoder(features))  # [N, K, h, w]
        instance = self.instance_decoder(features)  # [N, C, h, w]
        center = self.center_head(instance)  # [N, 1, h, w]
        offset = self.offset_head(instance)  # [N, 2, h, w]
        if self.channels_last:
            semantic, center, offset = (t.contiguous() for t in (semantic, center, offset))
        return {
            "semantic": upsample(semantic, size, align_corners=self.align_corners),
            "center": upsample(center, size, align_corners=self.align_corners),
            "offset": upsample_offsets(offset, size, align_corners=self.align_corners),
        }
