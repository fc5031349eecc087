"""Position-sensitive axial attention (Wang et al., ECCV 2020, eq. 4).

Along one axis of length ``L``, for every query position ``o``::

    y_o = sum_p softmax_p(q_o . k_p + q_o . rq_{p-o} + k_p . rk_{p-o}) (v_p + rv_{p-o})

with ``G`` heads, per-head query/key width ``C_out / (2G)`` and value width ``C_out / G`` (for 8 heads:
width/16 and width/8), relative tables ``rq, rk, rv`` shared by all heads and no ``1/sqrt(d)`` scaling.
Batch norm follows the q/k/v projection, each of the three logit terms (separate parameters per term
and head; batch statistics over the (query, key) pairs the softmax sees: the whole axis, the local
window or the widened block, as deeplab2 normalises the similarity it feeds to the softmax) before
they are summed, and the two outputs (``sum softmax * v`` and ``sum softmax * rv``,
separate parameters per term and channel) before they are summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused_eval, fused_train
from .attention_core import attend, key_ranges
from .attention_graph import attend_windowed
from .batch_norm import running_affine, sync_moments, update_running_stats, uses_batch_stats
from .logit_stats import logit_moments
from .precision import autocast_enabled
from .relative_position import extended_index, table_size

AXES = {"height": 2, "width": 3}
STRIDE_MODES = ("subsample", "avgpool")


def project(
    lines: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor | None, sizes: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """``weight @ lines + shift`` for ``lines [B, C_in, L]``, ``weight [C, C_in]``, ``shift [C]``
    (None: no shift), split into channel groups of ``sizes`` (views): ``[B, c, L]`` each.

    One batched matmul of the weight expanded (a view) over the lines: about twice as fast on the
    CPU as ``conv1d`` on these shapes. (A graph would copy the expanded weight:
    ``export.tracing`` swaps in a version for graphs.)
    """
    weight = weight.expand(lines.shape[0], -1, -1)  # [B, C, C_in] (a view)
    if shift is None:
        return torch.split(torch.bmm(weight, lines), sizes, dim=1)
    return torch.split(torch.baddbmm(shift[:, None], weight, lines), sizes, dim=1)


def shifted_scale(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``scale * (x + shift)`` (broadcast), contiguous: a product then an in-place sum, about 3x
    faster on the CPU than one ``addcmul`` with two broadcast operands."""
    return torch.mul(x, scale).add_(shift * scale)


def head_major_rows(heads: int, dk: int, dv: int, *, device: torch.device) -> torch.Tensor:
    """Indices ``[2C]`` taking the projection's rows from ``[q (G dk) | k (G dk) | v (G dv)]`` to
    ``[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]`` (head by head)."""
    head = torch.arange(heads, device=device)[:, None]  # [G, 1]
    q = head * dk + torch.arange(dk, device=device)  # [G, dk]
    v = 2 * heads * dk + head * dv + torch.arange(dv, device=device)  # [G, dv]
    return torch.cat((q, q + heads * dk, v), dim=1).flatten()  # [G (2 dk + dv)]


class AxialAttention(nn.Module):
    """Multi-head position-sensitive self-attention along the height or the width axis.

    Args:
        in_channels: ``C_in`` of the input ``[N, C_in, H, W]``.
        out_channels: ``C_out``, the attention width; divisible by ``2 * num_heads``.
        axis: ``"height"`` or ``"width"``.
        num_heads: ``G``.
        span: local window size ``m`` (``span_mode="local"`` or ``"block"``) or the reach of the
            relative table (``"global"``: distances up to ``span - 1``; beyond, clipped to the
            table's edge).
        span_mode: ``"local"`` (each position attends to the ``m`` positions centred on it, the window
            clipped at the borders), ``"global"`` (each position attends to the whole axis),
            ``"hybrid"`` (local on axes longer than ``2m - 1``, global on shorter ones, where a
            window of ``m`` covers most of the axis anyway; relative tables of ``4m - 3`` entries;
            the formulation whose parameter and multiply-add counts match the paper's
            Axial-DeepLab-S/M/L/XL) or ``"block"`` (the blocked local attention described, not
            implemented, by deeplab2's axial layer: blocks of ``2m - 1`` queries attend to
            their block widened by ``m // 2`` on each side, so each query sees ``m`` to ``3m - 2``
            positions; axes up to ``2m - 1`` long are attended globally; relative tables of
            ``2 (2m - 1 + m // 2) - 1`` entries, 321 for ``m = 65``).
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
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("num_heads", num_heads), ("stride", stride)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
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
            raise ValueError(f"expected input [N, {self.in_channels}, H, W], got {list(x.shape)}")
        if x.shape[0] == 0:  # no lines to attend over (the chunked PyTorch path needs one)
            return self._apply_stride(x.new_zeros(0, self.out_channels, *x.shape[2:]))
        if fused_eval.applies(self, x):  # inference on an AVX2 CPU: one compiled pass
            return self._apply_stride(fused_eval.attend(self, x))
        if fused_train.applies(self, x):  # training on an AVX2 CPU: compiled, backward included
            return self._apply_stride(fused_train.forward(self, x))
        n = x.shape[0]
        n_lines, length = self._line_sizes(x)
        q, k, v, shift = self._project(x)
        sv, sve = self._attend(q, k, v, shift)  # sum W v [B, C, L], sum W rv [L, B, C]
        out = self._combine(sv, sve, shift).view(n, n_lines, self.out_channels, length)
        if self.axis == "height":
            out = out.permute(0, 2, 3, 1)  # [N, C, H, W]
        else:
            out = out.permute(0, 2, 1, 3)  # [N, C, H, W]
        return self._apply_stride(out)

    def _line_sizes(self, x: torch.Tensor) -> tuple[int, int]:
        """``(lines per image, line length)`` of ``x [N, C, H, W]`` along this layer's axis."""
        h, w = x.shape[2:]
        return (w, h) if self.axis == "height" else (h, w)

    def _lines(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> its lines along this layer's axis, ``[B, C, L]`` (a copy)."""
        order = (0, 3, 1, 2) if self.axis == "height" else (0, 2, 1, 3)  # [N, lines, C, L]
        n_lines, length = self._line_sizes(x)
        return x.permute(order).reshape(x.shape[0] * n_lines, x.shape[1], length)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``qkv_norm(qkv_proj(x))`` for ``x [N, C_in, H, W]``, as lines split into ``q, k [B, G,
        dk, L]`` and ``v [B, G, dv, L]`` (views), and None; or, in eval mode, the same without
        the norm's shift, and that shift ``[2C]`` (``[q | k | v]``), added later where it is
        free (``_attend``, ``_combine``)."""
        weight = self.qkv_proj.weight.flatten(1)  # [2C, C_in]
        n_lines, length = self._line_sizes(x)
        b = x.shape[0] * n_lines
        g, dk, dv = self.num_heads, self.key_channels, self.value_channels

        def heads(q, k, v):  # [B, G d, L] -> [B, G, d, L]
            return q.view(b, g, dk, length), k.view(b, g, dk, length), v.view(b, g, dv, length)

        if uses_batch_stats(self.qkv_norm):
            lines = self._lines(x)  # [B, C_in, L]
            qkv = F.conv1d(lines, weight[:, :, None]).unsqueeze(-1)  # [B, 2C, L, 1]
            qkv = self.qkv_norm(qkv).squeeze(-1)  # [B, 2C, L]
            return *heads(*torch.split(qkv, (g * dk, g * dk, g * dv), dim=1)), None
        scale, shift = running_affine(self.qkv_norm)  # [2C] each
        weight = weight * scale[:, None]
        if torch.compiler.is_compiling() or uses_batch_stats(self.logits_norm):
            # Graphs: a projection per part (export.tracing swaps ``project``). Logit batch
            # statistics need the shifted q and k.
            parts = project(self._lines(x), weight, shift, (g * dk, g * dk, g * dv))
            return *heads(*parts), None
        # Rows reordered head by head, [q_h | k_h | v_h]: each part is then a view whose lines
        # and heads flatten to one batch axis without a copy ([B G, d, L] for the matmuls). No
        # shift: broadcasting it into the output would be a pass over it (8% of the layer).
        weight = weight[head_major_rows(g, dk, dv, device=weight.device)]  # [2C, C_in]
        if x.device.type in ("cpu", "meta") and torch.get_num_threads() > 1:
            # One 1x1 convolution over the channels-last map (oneDNN), then its lines: the
            # MaX-S backbone at 1025 x 2049 on 2 cores ran ~12% faster than with a matmul per
            # line. On one thread PyTorch runs such a convolution as its own matmul, and the
            # matmul per line was as fast or faster (the 65 x 65, C = 128 pair). ("meta": MAC
            # counts on shapes only, utils.model_stats, follow what the CPU runs.)
            x = x.contiguous(memory_format=torch.channels_last)
            qkv = self._lines(F.conv2d(x, weight[:, :, None, None]))  # [B, 2C, L]
        else:
            (qkv,) = project(self._lines(x), weight, None, (weight.shape[0],))  # [B, 2C, L]
        qkv = qkv.view(b, g, 2 * dk + dv, length)
        return qkv[:, :, :dk], qkv[:, :, dk : 2 * dk], qkv[:, :, 2 * dk :], shift

    def _combine(
        self, sv: torch.Tensor, sve: torch.Tensor, qkv_shift: torch.Tensor | None
    ) -> torch.Tensor:
        """``output_norm`` of the two terms ``sv [B, C, L]`` and ``sve [L, B, C]``, summed:
        ``[B, C, L]``. ``qkv_shift``: the values' shift left out by ``_project`` (the weights
        sum to 1 over the keys, so it adds to ``sv`` as it is)."""
        c = self.out_channels
        sve = sve.permute(1, 2, 0)  # [B, C, L] (a view)
        value_shift = None if qkv_shift is None else qkv_shift[-c:, None]  # [C, 1]
        if uses_batch_stats(self.output_norm):
            sv = sv if value_shift is None else sv + value_shift
            out = torch.cat((sv, sve), dim=1)  # [B, 2C, L]
            out = self.output_norm(out.unsqueeze(-1))  # [B, 2C, L, 1]
            # Summed as [B, 2, C, L] over its pair axis: the backward of a sum is a broadcast,
            # where the two slices of ``out[:, :c] + out[:, c:]`` each zero-filled a [B, 2C, L]
            # gradient (train pair 1.4% faster, the same values).
            return out.view(out.shape[0], 2, c, -1).sum(1)  # [B, C, L]
        scale, shift = running_affine(self.output_norm)  # [2C] each
        constant = (shift[:c] + shift[c:])[:, None]  # [C, 1]
        if value_shift is not None:
            constant = constant + scale[:c, None] * value_shift
        combined = torch.addcmul(constant, sv, scale[:c, None])
        return combined.addcmul_(sve, scale[c:, None])  # [B, C, L]

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qkv_shift: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention along the last axis of ``q, k [B, G, dk, L]``, ``v [B, G, dv, L]``; returns
        ``sum W v`` ``[B, C, L]`` (without the values' shift, see ``_combine``) and ``sum W rv``
        ``[L, B, C]``. ``qkv_shift``: the shift ``_project`` left out, or None.

        The query shift is added with the logit scales (the same pass). The key shift only
        matters in the key-position term: in ``q . k`` it adds ``q . shift``, the same for every
        key of a query, which the softmax cancels.

        Under autocast (mixed precision) this part runs in float32: logits of 65+ positions and
        their softmax lose too much in float16/bfloat16, and the logit batch norm needs exact sums.
        """
        device = q.device.type
        if autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                shift = None if qkv_shift is None else qkv_shift.float()
                return self._attend(q.float(), k.float(), v.float(), shift)
        g, dk = self.num_heads, self.key_channels
        moments = lambda *args: logit_moments(q, k, *args)  # noqa: E731
        scales = self._logit_scales(q.shape[-1], moments).view(3, g, 1, 1)  # [3, G, 1, 1]
        if qkv_shift is None:
            args = (q * scales[0], k, q * scales[1], k * scales[2], v)
        else:
            q_shift = qkv_shift[: g * dk].view(g, dk, 1)  # [G, dk, 1]
            k_shift = qkv_shift[g * dk : 2 * g * dk].view(g, dk, 1)  # [G, dk, 1]
            q1 = shifted_scale(q, scales[0], q_shift)  # [B, G, dk, L]
            q2 = shifted_scale(q, scales[1], q_shift)
            k3 = shifted_scale(k, scales[2], k_shift)
            args = (q1, k, q2, k3, v)
        tables = (self.query_rel, self.key_rel, self.value_rel)
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            # torch.compile and torch.export (tools/export.py): traced, the eager core's Python
            # plan of blocks and chunks would be unrolled (Axial-DeepLab-S at 641 x 641 had not
            # compiled after 300 s) or pin the axis length; the shape-generic version does not.
            out = attend_windowed(*args, tables, span=self.span, span_mode=self.span_mode)
            c = self.out_channels
            return out[:, :c], out[:, c:].permute(2, 0, 1)  # [B, C, L], [L, B, C] (views)
        return attend(*args, tables, span=self.span, span_mode=self.span_mode)

    def _logit_scales(self, length: int, moments) -> torch.Tensor:
        """BN scale ``gamma / sqrt(var + eps)`` of each logit term and head, ``[3 * G]``, on an axis
        of ``length``; in training the statistics are over the pairs inside each query's window
        (``key_ranges``), ``(mean, var, count) = moments(eq, ek, key_ranges)`` for the relative
        tables ``eq, ek [dk, 2L - 1]`` (``logit_stats.logit_moments`` on the layer's q and k).

        The BN shift is constant over the softmax axis and cancels, in train and in eval mode.
        """
        bn = self.logits_norm
        if uses_batch_stats(bn):
            index = extended_index(length, self.query_rel.shape[1], device=bn.weight.device)
            ranges = key_ranges(length, self.span, self.span_mode)  # CPU index tensors
            eq, ek = self.query_rel[:, index], self.key_rel[:, index]  # [dk, 2L - 1] each
            mean, var, count = moments(eq, ek, ranges)
            mean, var = sync_moments(bn, mean, var, count)
            update_running_stats(bn, mean, var, count)
        else:
            var = bn.running_var
        # The shift's true gradient is exactly zero; keep it in the graph (DDP expects every
        # parameter to receive a gradient).
        return torch.addcmul(bn.bias * 0.0, bn.weight, torch.rsqrt(var + bn.eps))

    def _apply_stride(self, out: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return out
        if self.stride_mode == "avgpool":
            return F.avg_pool2d(out, self.stride, self.stride)
        if self.axis == "height":
            return out[:, :, :: self.stride]
        return out[:, :, :, :: self.stride]
