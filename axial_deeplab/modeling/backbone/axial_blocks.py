"""The axial block: a ResNet bottleneck whose 3x3 conv is a height then a width axial layer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...layers import AxialAttention
from .conv_blocks import ResidualBlock, conv_bn


class AxialBlock(nn.Module):
    """``x -> 1x1 -> BN-ReLU -> height attention -> width attention -> ReLU -> 1x1 -> BN (+x) -> ReLU``.

    Args:
        in_channels: ``C_in`` of the input ``[N, C_in, H, W]``.
        width: attention width ``w``; the block outputs ``2 * w`` channels (expansion 2).
        stride: output subsampling. ``stride_mode="subsample"``: the height layer keeps every
            ``stride``-th row and the width layer every ``stride``-th column (the paper);
            ``"avgpool"``: the width layer is followed by ``stride x stride`` average pooling (the
            authors' ImageNet code).
        span, span_mode, num_heads: passed to both axial layers.

    The last BN starts at zero, so a new block is the identity (plus ReLU); a 1x1 conv + BN
    shortcut (strided like the block) matches shapes when they change.
    """

    expansion = 2

    def __init__(
        self,
        in_channels: int,
        width: int,
        *,
        stride: int = 1,
        span: int = 65,
        span_mode: str = "local",
        stride_mode: str = "subsample",
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.reduce = nn.Conv2d(in_channels, width, 1, bias=False)
        self.reduce_norm = nn.BatchNorm2d(width)
        attn = dict(span=span, span_mode=span_mode, num_heads=num_heads, stride_mode=stride_mode)
        height_stride = stride if stride_mode == "subsample" else 1
        self.height_attention = AxialAttention(
            width, width, axis="height", stride=height_stride, **attn
        )
        self.width_attention = AxialAttention(width, width, axis="width", stride=stride, **attn)
        self.expand = nn.Conv2d(width, out_channels, 1, bias=False)
        self.expand_norm = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.expand_norm.weight)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)
        for conv in (self.reduce, self.expand):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.reduce_norm(self.reduce(x)))  # [N, w, H, W]
        out = self.width_attention(self.height_attention(out))  # [N, w, H/s, W/s]
        out = self.expand_norm(self.expand(self.relu(out)))  # [N, 2w, H/s, W/s]
        identity = x if self.shortcut is None else self.shortcut(x)
        if identity.shape != out.shape:  # avg-pool striding floors odd sizes, the shortcut ceils
            raise ValueError(
                f"axial block: attention output {list(out.shape)} and shortcut "
                f"{list(identity.shape)} differ; with stride_mode='avgpool' the input height and "
                f"width must be even at every strided block"
            )
        return self.relu(out + identity)


class AxialBottleneckBlock(ResidualBlock):
    """deeplab2's axial block: ``1x1 -> BN-ReLU -> height attention -> width attention -> ReLU ->
    1x1 -> BN``, with the shortcut, squeeze-excitation and drop path of ``ResidualBlock``.

    Args:
        in_channels: ``C_in``.
        channels: ``(c1, value_depth, c_out)``: the reduce width (attention input), the attention
            width (per head: ``value_depth / G`` value and ``value_depth / 2G`` query/key
            channels) and the output width.
        stride: both axes are subsampled after their attention layer.
        span, span_mode, num_heads: of both axial layers (deeplab2: global attention with
            relative tables of 509 entries, i.e. ``span=255, span_mode="global"``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        *,
        stride: int = 1,
        span: int = 255,
        span_mode: str = "global",
        num_heads: int = 8,
        se: bool = False,
        drop_path_keep: float = 1.0,
    ) -> None:
        super().__init__()
        c1, value_depth, c3 = channels
        attn = dict(span=span, span_mode=span_mode, num_heads=num_heads, stride=stride)
        self.branch = nn.Sequential(
            nn.Sequential(*conv_bn(in_channels, c1, 1), nn.ReLU(inplace=True)),
            AxialAttention(c1, value_depth, axis="height", **attn),
            AxialAttention(value_depth, value_depth, axis="width", **attn),
            nn.ReLU(),
            conv_bn(value_depth, c3, 1),
        )
        nn.init.zeros_(self.branch[-1][-1].weight)
        self._finish_init(in_channels, c3, stride, se, drop_path_keep)


@contextmanager
def _frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Restore batch-norm running statistics on exit (for checkpoint recomputation)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in norms
        if m.track_running_stats
    ]
    try:
        yield
    finally:
        tracked = [m for m in norms if m.track_running_stats]
        for m, (mean, var, count) in zip(tracked, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


class AxialStage(nn.Sequential):
    """Residual blocks in sequence; with ``gradient_checkpointing`` (training only) each block's
    activations are recomputed in the backward pass instead of stored. Outputs, gradients and
    batch-norm running statistics are the same as without it."""

    def __init__(self, blocks: Sequence[nn.Module], *, gradient_checkpointing: bool = False):
        super().__init__(*blocks)
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():

                def contexts(block: nn.Module = block):
                    return nullcontext(), _frozen_norm_stats(block)

                x = checkpoint(block, x, use_reentrant=False, context_fn=contexts)
            else:
                x = block(x)
        return x
