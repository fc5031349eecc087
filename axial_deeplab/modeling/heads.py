"""Prediction heads: a 5x5 depthwise-separable conv then a 1x1 conv (deeplab2
``PanopticDeepLabSingleHead``): semantic ``-> num_classes``, centre ``32 -> 1``,
offset ``32 -> 2`` ``(dy, dx)``. With ``separable=False`` two 3x3 conv-norm-ReLU
(``in -> in -> head_channels``) replace the 5x5 conv, as in detectron2's regular Panoptic-DeepLab
heads (and always in its centre head)."""

from __future__ import annotations

import torch
from torch import nn

from axial_deeplab.layers.precision import autocast_enabled
from axial_deeplab.modeling.decoder import DepthwiseSeparableConv, conv_norm_relu


class PredictionHead(nn.Module):
    """``[N, in_channels, h, w]`` -> ``[N, out_channels, h, w]`` raw predictions.

    ``init_std`` is the std of the normal initialisation of the final 1x1 conv (bias 0), small so
    that training starts from near-zero outputs (detectron2 uses 0.001, deeplab2 0.01).
    """

    def __init__(
        self,
        in_channels: int,
        head_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 5,
        norm: str = "BN",
        init_std: float = 0.001,
        separable: bool = True,
    ) -> None:
        super().__init__()
        if separable:
            self.conv: nn.Sequential = DepthwiseSeparableConv(
                in_channels, head_channels, kernel_size=kernel_size, norm=norm
            )
        else:
            self.conv = nn.Sequential(
                conv_norm_relu(in_channels, in_channels, kernel_size=3, norm=norm),
                conv_norm_relu(in_channels, head_channels, kernel_size=3, norm=norm),
            )
        self.predictor = nn.Conv2d(head_channels, out_channels, 1)
        nn.init.normal_(self.predictor.weight, 0.0, init_std)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        device = x.device.type
        if autocast_enabled(device):
            # Under autocast (mixed precision) the final 1x1 convolution runs in float32: a
            # bfloat16 offset of 500 pixels is only known to +-1 pixel. It is cheap (few channels).
            with torch.autocast(device, enabled=False):
                return self.predictor(x.float())
        return self.predictor(x)
