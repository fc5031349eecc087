"""Position-sensitive axial attention (Wang et al., ECCV 2020, eq. 4).

Along one axis of length ``L``, for every query position ``o``::

    y_o = sum_p softmax_p(q_o . k_p + q_o . rq_{p-o} + k_p . rk_{p-o}) (v_p + rv_{p-o})

with ``G`` heads, per-head query/key width ``C_out / (2G)`` and value width ``C_out / G`` (for 8 heads:
width/16 and width/8), relative tables ``rq, rk, rv`` shared by all heads and no ``1/sqrt(d)`` scaling.
Batch norm follows the q/k/v projection, each of the three logit terms (separate parameters per term
and head) before they are summed, and the two outputs (``sum softmax * v`` and ``sum softmax * rv``,
separate parameters per term and channel) before they are summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .relative_position import local_mask, relative_index, table_size

AXES = {"height": 2, "width": 3}
STRIDE_MODES = ("subsample", "avgpool")


class AxialAttention(nn.Module):
    """Multi-head position-sensitive self-attention along the height or the width axis.

    Args:
        in_channels: ``C_in`` of the input ``[N, C_in, H, W]``.
        out_channels: ``C_out``, the attention width; divisible by ``2 * num_heads``.
        axis: ``"height"`` or ``"width"``.
        num_heads: ``G``.
        span: local window size ``m`` (``span_mode="local"``) or the reach of the relative table
            (``"global"``: distances up to ``span - 1``; beyond, clipped to the table's edge).
        span_mode: ``"local"`` (each position attends to the ``m`` positions centred on it, the window
            clipped at the borders) or ``"global"`` (each position attends to the whole axis).
        stride: output subsampling factor.
        stride_mode: ``"subsample"`` keeps every ``stride``-th position along this axis (the paper);
            ``"avgpool"`` average-pools ``stride x stride`` after the layer (the authors' ImageNet code).

    Input ``[N, C_in, H, W]``; output ``[N, C_out, H', W']`` (strided as above). Any ``H, W``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        axis: str,
        num_heads: int = 8,
        span: int = 65,
        span_mode: str = "local",
        stride: int = 1,
        stride_mode: str = "subsample",
    ) -> None:
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"axis must be one of {tuple(AXES)}, got {axis!r}")
        if out_channels % (2 * num_heads):
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by 2 * num_heads ({2 * num_heads})"
            )
        if stride_mode not in STRIDE_MODES:
            raise ValueError(f"stride_mode must be one of {STRIDE_MODES}, got {stride_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.axis = axis
        self.num_heads = num_heads
        self.span = span
        self.span_mode = span_mode
        self.stride = stride
        self.stride_mode = stride_mode
        self.key_channels = out_channels // (2 * num_heads)  # per-head query/key width
        self.value_channels = out_channels // num_heads  # per-head value width
        size = table_size(span, span_mode)

        # [q (G*dk) | k (G*dk) | v (G*dv)] channels, head-major inside each part.
        self.qkv_proj = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.qkv_norm = nn.BatchNorm2d(2 * out_channels)
        # Logit channels [qk heads | qr heads | kr heads].
        self.logits_norm = nn.BatchNorm2d(3 * num_heads)
        # Output channels [sum w*v (C_out) | sum w*rv (C_out)].
        self.output_norm = nn.BatchNorm2d(2 * out_channels)
        self.query_rel = nn.Parameter(torch.empty(self.key_channels, size))
        self.key_rel = nn.Parameter(torch.empty(self.key_channels, size))
        self.value_rel = nn.Parameter(torch.empty(self.value_channels, size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.qkv_proj.weight, 0.0, math.sqrt(1.0 / self.in_channels))
        for table in (self.query_rel, self.key_rel, self.value_rel):
            nn.init.normal_(table, 0.0, math.sqrt(1.0 / (2 * self.key_channels)))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, axis={self.axis}, heads={self.num_heads}, "
            f"span={self.span} ({self.span_mode}), stride={self.stride} ({self.stride_mode})"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input [N, {self.in_channels}, H, W], got {list(x.shape)}"
            )
        n, _, h, w = x.shape
        qkv = self.qkv_norm(self.qkv_proj(x))  # [N, 2C, H, W]
        if self.axis == "height":
            qkv = qkv.permute(0, 3, 1, 2)  # [N, W, 2C, H]
        else:
            qkv = qkv.permute(0, 2, 1, 3)  # [N, H, 2C, W]
        n_lines, length = qkv.shape[1], qkv.shape[3]
        qkv = qkv.reshape(n * n_lines, 2 * self.out_channels, length)  # [B, 2C, L]
        out = self._attend(qkv)  # [B, 2C, L]: [sum w*v | sum w*rv]
        out = out.reshape(n, n_lines, 2 * self.out_channels, length)
        if self.axis == "height":
            out = out.permute(0, 2, 3, 1)  # [N, 2C, H, W]
        else:
            out = out.permute(0, 2, 1, 3)  # [N, 2C, H, W]
        out = self.output_norm(out)
        out = out[:, : self.out_channels] + out[:, self.out_channels :]  # [N, C, H, W]
        return self._apply_stride(out)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention along the last axis of ``qkv [B, 2C, L]``; returns ``[B, 2C, L]``."""
        b, _, length = qkv.shape
        g, dk, dv = self.num_heads, self.key_channels, self.value_channels
        q, k, v = torch.split(qkv, [g * dk, g * dk, g * dv], dim=1)
        q = q.reshape(b, g, dk, length)  # [B, G, dk, L]
        k = k.reshape(b, g, dk, length)  # [B, G, dk, L]
        v = v.reshape(b, g, dv, length)  # [B, G, dv, L]
        index = relative_index(length, self.query_rel.shape[1], device=qkv.device)  # [L, L]
        rq = self.query_rel[:, index]  # [dk, L, L]: rq[:, o, p] = r_{p-o}
        rk = self.key_rel[:, index]  # [dk, L, L]
        rv = self.value_rel[:, index]  # [dv, L, L]
        qk = torch.einsum("bgco,bgcp->bgop", q, k)  # [B, G, L, L]
        qr = torch.einsum("bgco,cop->bgop", q, rq)  # [B, G, L, L]
        kr = torch.einsum("bgcp,cop->bgop", k, rk)  # [B, G, L, L]
        logits = self.logits_norm(torch.cat([qk, qr, kr], dim=1))  # [B, 3G, L, L]
        logits = logits.reshape(b, 3, g, length, length).sum(dim=1)  # [B, G, L, L]
        if self.span_mode == "local" and length > self.span // 2 + 1:
            mask = local_mask(length, self.span, device=qkv.device)
            logits = logits.masked_fill(mask, float("-inf"))
        weights = logits.softmax(dim=-1)  # [B, G, L(o), L(p)]
        sv = torch.einsum("bgop,bgcp->bgco", weights, v)  # [B, G, dv, L]
        sve = torch.einsum("bgop,cop->bgco", weights, rv)  # [B, G, dv, L]
        return torch.cat([sv.reshape(b, g * dv, length), sve.reshape(b, g * dv, length)], dim=1)

    def _apply_stride(self, out: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return out
        if self.stride_mode == "avgpool":
            return F.avg_pool2d(out, self.stride, self.stride)
        if self.axis == "height":
            return out[:, :, :: self.stride]
        return out[:, :, :, :: self.stride]
