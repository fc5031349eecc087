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

from . import fused_eval
from .attention_core import key_ranges
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


def _run(descriptor: list[int], tasks: int, table_grads: torch.Tensor | None) -> None:
    """The kernel on every task, split over torch's thread count (each part adding to its own row
    of ``table_grads [parts, ...]`` in the backward pass; None: the forward pass)."""
    threads = table_grads.shape[0] if table_grads is not None else _threads(tasks)
    at = 5 * 3 + 6  # the table-gradient address in the descriptor
    calls = []
    for i in range(threads):
        if table_grads is not None:
            descriptor[at] = table_grads[i].data_ptr()
        d = torch.tensor(descriptor)
        calls.append((d, tasks * i // threads, tasks * (i + 1) // threads))
    if threads == 1:
        _fused_train.call(calls[0][0].data_ptr(), *calls[0][1:], table_grads is not None)
        return
    pool = fused_eval._pool(threads)
    runs = [
        pool.submit(_fused_train.call, d.data_ptr(), a, b, table_grads is not None)
        for d, a, b in calls
    ]
    for run in runs:
        run.result()


def _threads(tasks: int) -> int:
    return max(1, min(torch.get_num_threads(), tasks))


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
        descriptor = _map(qkv, axis) + _map(out, axis) + [0] * 5
        descriptor += [t.data_ptr() for t in tables] + ranges + [weights.data_ptr(), 0]
        descriptor += [scales.data_ptr(), n, lines, g, length, dk, dv, win]
        _run(descriptor, tasks, None)
        ctx.save_for_backward(qkv, scales, *tables, weights)
        ctx.geometry, ctx.sizes = geometry, descriptor[-7:]
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
        descriptor = _map(qkv, axis) + _map(grad_out, axis) + _map(grad_qkv, axis)
        descriptor += [t.data_ptr() for t in (rq, rk, rv)] + ranges + [weights.data_ptr(), 0]
        descriptor += [scales.data_ptr(), *ctx.sizes]
        _run(descriptor, tasks, table_grads)
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
    qk = layer._lines(qkv[:, : 2 * g * dk])  # [B, 2 G dk, L], for the logit statistics
    q, k = (t.view(n * lines, g, dk, length) for t in qk.split(g * dk, dim=1))
    scales = layer._logit_scales(q, k).view(3, g)
    index = extended_index(length, layer.query_rel.shape[1], device=x.device)  # [2L - 1]
    # [d, 2L + 1]: entry d + L for distance d, a zero beyond each end
    tables = [F.pad(t[:, index], (1, 1)) for t in (layer.query_rel, layer.key_rel, layer.value_rel)]
    ranges = key_ranges(length, layer.span, layer.span_mode)
    lo, hi = (None, None) if ranges is None else (r.to(torch.int32) for r in ranges)
    out = FusedAxial.apply(qkv, scales, *tables, (layer.axis, g, lo, hi))
    out = layer.output_norm(out)  # [N, 2C, H, W]
    return out.view(n, 2, c, h, w).sum(1)
