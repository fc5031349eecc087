"""Axial attention with its backward pass, compiled (CPU, x86-64 with AVX2 and FMA).

Where ``AxialAttention`` does not run the inference pass (``fused_eval``: training, batch
statistics, gradients) on float32 CPU tensors, everything between the q/k/v batch norm and the
output batch norm goes to ``_fused_train.c``: per group of 8 lines along the axis (the lanes of a
vector) and head, the three logit terms, the softmax and both value terms, read from the
normalised projection ``[N, 2C, H, W]`` as it is and written into the ``[N, 2C, H, W]`` map the
output norm takes; only the softmax weights are kept for the backward pass, one more compiled
pass that writes the projection's gradient and sums the gradients of the relative tables and the
logit scales. The projection and both batch norms stay PyTorch modules (``[N, C, H, W]`` maps,
no lines gathered). Outputs and gradients match the PyTorch path to float32 round-off
(``tests/test_fused_train.py``).

It steps aside where ``fused_eval`` does (no compiled module, no AVX2, graphs and tracing,
dispatch modes, autocast, non-float32, ``AXIAL_DEEPLAB_FUSED_ATTENTION=0``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import fused_eval, logit_stats
from .attention_core import key_ranges
from .logit_stats import window_terms, with_band
from .precision import autocast_enabled
from .relative_position import extended_index

try:
    from . import _fused_train
except ImportError:  # built without a C compiler, or not x86-64: the PyTorch path runs
    _fused_train = None

LANES = 8
_SUPPORTED: bool | None = None


def available() -> bool:
    """Whether the compiled kernel is here, this CPU runs it, and ``$AXIAL_DEEPLAB_FUSED_ATTENTION``
    is not ``0``."""
    global _SUPPORTED
    if _fused_train is None or os.environ.get(fused_eval.ENV, "1") == "0":
        return False
    if _SUPPORTED is None:
        _SUPPORTED = bool(_fused_train.supported())
    return _SUPPORTED


def applies(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer(x)`` may run through the compiled kernel (see the module's docstring)."""
    for t in (x, *layer.parameters()):  # (other tensor subclasses may redefine operations)
        plain = type(t) in (torch.Tensor, torch.nn.Parameter)
        if not (plain and t.device.type == "cpu" and t.dtype == torch.float32):
            return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if _get_current_dispatch_mode() is not None or autocast_enabled("cpu"):
        return False
    return available()


def _map(x: torch.Tensor, axis: str) -> list[int]:
    """Address and (image, line, channel, position) strides of a map ``[N, C, H, W]`` whose lines
    run along ``axis``."""
    n, c, h, w = x.stride()
    return [x.data_ptr(), n, w, c, h] if axis == "height" else [x.data_ptr(), n, h, c, w]


# Modes of a kernel call, and where the per-part buffers go in its descriptor.
ATTEND, ATTEND_BACKWARD, MOMENTS, MOMENTS_BACKWARD = range(4)
_GR, _MOMENTS = 5 * 3 + 6, 5 * 3 + 13


def _run(descriptor: list[int], tasks: int, mode: int, parts: dict[int, torch.Tensor]) -> None:
    """The kernel on every task, split over ``len`` of the ``parts`` buffers (or torch's thread
    count), each part adding to its own row of every buffer ``parts[slot] [parts, ...]`` (a
    descriptor address slot: ``_GR``, ``_MOMENTS``)."""
    threads = next(iter(parts.values())).shape[0] if parts else _threads(tasks)
    calls = []
    for i in range(threads):
        for slot, buffer in parts.items():
            descriptor[slot] = buffer[i].data_ptr()
        calls.append((torch.tensor(descriptor), tasks * i // threads, tasks * (i + 1) // threads))
    if threads == 1:
        _fused_train.call(calls[0][0].data_ptr(), calls[0][1], calls[0][2], mode)
        return
    pool = fused_eval._pool(threads)
    runs = [pool.submit(_fused_train.call, d.data_ptr(), a, b, mode) for d, a, b in calls]
    for run in runs:
        run.result()


def _threads(tasks: int) -> int:
    return max(1, min(torch.get_num_threads(), tasks))


def _descriptor(maps: list[int], tables=(), moments=(), sizes=()) -> list[int]:
    """A call's descriptor (``_fused_train.c``): three maps (15 entries, zeros for the ones not
    used), the addresses ``tables`` (rq, rk, rv, lo, hi, w, gr, scales) and ``moments`` (sum_q,
    gram_q, sum_k, gram_k, coef, moments), zero where not given, and the seven sizes."""
    tables = list(tables) + [0] * (8 - len(tables))
    moments = list(moments) + [0] * (6 - len(moments))
    return maps + [0] * (15 - len(maps)) + tables + moments + list(sizes)


class FusedMoments(torch.autograd.Function):
    """``logit_stats.TermMoments`` on the normalised projection ``qkv [N, 2C, H, W]`` as it is:
    ``(qkv, sum_q, gram_q, sum_k, gram_k, geometry) -> (total, squares)``, each ``[3 G]`` float64,
    ``geometry = (axis, heads, dk)``."""

    @staticmethod
    def forward(ctx, qkv, sum_q, gram_q, sum_k, gram_k, geometry):  # noqa: D102
        axis, g, dk = geometry
        n, _, h, w = qkv.shape
        length, lines = (h, w) if axis == "height" else (w, h)
        tables = [t.detach().contiguous() for t in (sum_q, gram_q, sum_k, gram_k)]
        tasks = -(-n * lines // LANES) * g
        sums = qkv.new_zeros(_threads(tasks), 6, g, dtype=torch.float64)
        sizes = (n, lines, g, length, dk, 1, length)
        descriptor = _descriptor(_map(qkv, axis), (), [t.data_ptr() for t in tables], sizes)
        _run(descriptor, tasks, MOMENTS, {_MOMENTS: sums})
        ctx.save_for_backward(qkv, *tables)
        ctx.geometry, ctx.sizes = geometry, sizes
        total = sums.sum(0)
        return total[:3].flatten(), total[3:].flatten()

    @staticmethod
    def backward(ctx, grad_total, grad_squares):  # noqa: D102
        qkv, *tables = ctx.saved_tensors
        axis, g, dk = ctx.geometry
        length = ctx.sizes[3]
        tasks = -(-ctx.sizes[0] * ctx.sizes[1] // LANES) * g
        coef = torch.cat([grad_total, grad_squares]).to(qkv.dtype).contiguous()  # [6 G]
        grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        grad_qkv[:, 2 * g * dk :].zero_()  # (the values': the kernel writes q and k)
        sizes = [dk * length, length * dk * dk, dk * length, length * dk * dk]
        grads = qkv.new_zeros(_threads(tasks), sum(sizes))
        addresses = [t.data_ptr() for t in tables] + [coef.data_ptr()]
        descriptor = _map(qkv, axis) + [0] * 5 + _map(grad_qkv, axis)
        descriptor = _descriptor(descriptor, (), addresses, ctx.sizes)
        _run(descriptor, tasks, MOMENTS_BACKWARD, {_GR: grads})
        parts = grads.sum(0).split(sizes)
        return grad_qkv, *(p.view_as(t) for p, t in zip(parts, tables)), None


class FusedAxial(torch.autograd.Function):
    """``(qkv, scales, rq, rk, rv, geometry) -> out``: ``qkv [N, 2C, H, W]`` the normalised
    projection (channels ``[q | k | v]``), ``scales [3, G]`` the logit scales, extended tables
    ``[d, 2L + 1]`` (entry ``d + L`` for distance ``d``), ``geometry = (axis, heads, lo, hi)``
    (int32 key ranges ``[L]``, or None for the whole axis); ``out [N, 2C, H, W]``, channels
    ``[sum W v | sum W rv]``."""

    @staticmethod
    def forward(ctx, qkv, scales, rq, rk, rv, geometry):  # noqa: D102
        axis, g, lo, hi = geometry
        n, channels, h, w = qkv.shape
        length, lines = (h, w) if axis == "height" else (w, h)
        dk, dv = rq.shape[0], rv.shape[0]
        win = length if lo is None else int((hi - lo).max())
        tasks = -(-n * lines // LANES) * g
        weights = qkv.new_empty(tasks, length, win, LANES)
        out = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        tables = [t.contiguous() for t in (rq, rk, rv)]
        scales = scales.contiguous()
        ranges = [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]
        addresses = [t.data_ptr() for t in tables] + ranges + [weights.data_ptr(), 0]
        sizes = (n, lines, g, length, dk, dv, win)
        descriptor = _descriptor(
            _map(qkv, axis) + _map(out, axis), addresses + [scales.data_ptr()], (), sizes
        )
        _run(descriptor, tasks, ATTEND, {})
        ctx.save_for_backward(qkv, scales, *tables, weights)
        ctx.geometry, ctx.sizes = geometry, sizes
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        qkv, scales, rq, rk, rv, weights = ctx.saved_tensors
        axis, g, lo, hi = ctx.geometry
        length, dk, dv = ctx.sizes[3:6]
        tasks = weights.shape[0]
        grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        size = (2 * dk + dv) * (2 * length + 1)
        table_grads = qkv.new_zeros(_threads(tasks), size + 3 * g)
        ranges = [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]
        addresses = [t.data_ptr() for t in (rq, rk, rv)] + ranges + [weights.data_ptr(), 0]
        maps = _map(qkv, axis) + _map(grad_out, axis) + _map(grad_qkv, axis)
        descriptor = _descriptor(maps, addresses + [scales.data_ptr()], (), ctx.sizes)
        _run(descriptor, tasks, ATTEND_BACKWARD, {_GR: table_grads})
        total = table_grads.sum(0)
        grq, grk, grv = total[:size].view(2 * dk + dv, -1).split((dk, dk, dv))
        return grad_qkv, total[size:].view(3, g), grq, grk, grv, None


def forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` before its stride, ``[N, C_out, H, W]``, for an ``AxialAttention`` for which
    ``applies(layer, x)`` holds: the projection and its norm, the logit scales and the output norm
    by the layer's own modules and methods, the rest by the kernel."""
    g, dk, c = layer.num_heads, layer.key_channels, layer.out_channels
    qkv = layer.qkv_norm(F.conv2d(x, layer.qkv_proj.weight))  # [N, 2C, H, W]
    n, _, h, w = qkv.shape
    length, lines = (h, w) if layer.axis == "height" else (w, h)

    def moments(eq, ek, ranges):  # the logit statistics (logit_stats.logit_moments)
        tables, pairs = window_terms(eq, ek, length, ranges)
        total, squares = FusedMoments.apply(qkv, *tables, (layer.axis, g, dk))
        if ranges is not None:  # the q . k term over the windows only, on the lines
            qk = layer._lines(qkv[:, : 2 * g * dk])  # [B, 2 G dk, L]
            q, k = (t.view(n * lines, g, dk, length) for t in qk.split(g * dk, dim=1))
            total, squares = with_band(total, squares, q, k, ranges)
        return logit_stats.moments(total, squares, n * lines * pairs, qkv.dtype)

    scales = layer._logit_scales(length, moments).view(3, g)
    index = extended_index(length, layer.query_rel.shape[1], device=x.device)  # [2L - 1]
    # [d, 2L + 1]: entry d + L for distance d, a zero beyond each end
    tables = [F.pad(t[:, index], (1, 1)) for t in (layer.query_rel, layer.key_rel, layer.value_rel)]
    ranges = key_ranges(length, layer.span, layer.span_mode)
    lo, hi = (None, None) if ranges is None else (r.to(torch.int32) for r in ranges)
    out = FusedAxial.apply(qkv, scales, *tables, (layer.axis, g, lo, hi))
    out = layer.output_norm(out)  # [N, 2C, H, W]
    return out.view(n, 2, c, h, w).sum(1)
