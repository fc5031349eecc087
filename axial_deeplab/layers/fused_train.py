"""The attention core with its backward pass, compiled (CPU, x86-64 with AVX2 and FMA).

Where ``AxialAttention`` runs its PyTorch path on a float32 CPU tensor (training, batch
statistics, or inference with the compiled inference pass turned off), the part between the
batch-norm-scaled operands and the two outputs (``attention_core.attend``: the three logit terms,
the softmax, both value terms) goes to ``_fused_train.c`` instead: one pass per group of 8 lines
and head, the lines in the 8 lanes of a vector, keeping only the softmax weights for the
backward pass, which is one more compiled pass (the gradients of the operands and of the three
relative tables). Outputs and gradients match the PyTorch path to float32 round-off
(``tests/test_fused_train.py``).

It steps aside where ``fused_eval`` does (no compiled module, no AVX2, graphs and tracing,
dispatch modes, non-float32, ``AXIAL_DEEPLAB_FUSED_ATTENTION=0``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import fused_eval
from .attention_core import key_ranges
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


def applies(*tensors: torch.Tensor) -> bool:
    """Whether ``attend`` may run on these operands and tables."""
    for t in tensors:  # (tensor subclasses other than parameters may redefine operations)
        plain = type(t) in (torch.Tensor, torch.nn.Parameter)
        if not (plain and t.device.type == "cpu" and t.dtype == torch.float32):
            return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if _get_current_dispatch_mode() is not None:
        return False
    return available()


OPERANDS = ("q1", "k", "q2", "k3", "v", "sv", "sve", "gq1", "gk", "gq2", "gk3", "gv")


def _lines(x: torch.Tensor) -> list[int]:
    """Address and (line, head, channel, position) strides of an operand ``[B, G, d, L]``."""
    return [x.data_ptr(), *x.stride()]


def _outputs(sv: torch.Tensor, sve: torch.Tensor, dv: int) -> list[int]:
    """The same for ``sv [B, C, L]`` and ``sve [L, B, C]`` (``C = G dv``, head-major)."""
    return [sv.data_ptr(), sv.stride(0), dv * sv.stride(1), sv.stride(1), sv.stride(2),
            sve.data_ptr(), sve.stride(1), dv * sve.stride(2), sve.stride(2), sve.stride(0)]  # fmt: skip


def _run(operands: list[int], tables: list[int], sizes: tuple[int, ...], table_grads, backward):
    """The kernel on every task, split over torch's thread count (each part with its own row
    of ``table_grads [parts, ...]`` in the backward pass)."""
    lines, heads = sizes[:2]
    tasks = -(-lines // LANES) * heads
    threads = max(1, min(torch.get_num_threads(), tasks))
    descriptors = []
    for i in range(threads):
        grads = 0 if table_grads is None else table_grads[i].data_ptr()
        descriptors.append(torch.tensor(operands + tables + [grads] + list(sizes)))
    bounds = [tasks * i // threads for i in range(threads + 1)]
    calls = [(d.data_ptr(), a, b, backward) for d, a, b in zip(descriptors, bounds, bounds[1:])]
    if threads == 1:
        _fused_train.call(*calls[0])
        return
    pool = fused_eval._pool(threads)
    for run in [pool.submit(_fused_train.call, *args) for args in calls]:
        run.result()


class FusedCore(torch.autograd.Function):
    """``(q1, k, q2, k3, v, rq, rk, rv, lo, hi) -> (sv [B, C, L], sve [L, B, C])`` for operands
    ``[B, G, d, L]`` (any strides) and extended tables ``[d, 2L + 1]`` (entry ``d + L`` for
    distance ``d``); ``lo, hi``: int32 key ranges ``[L]``, or None for the whole axis."""

    @staticmethod
    def forward(ctx, q1, k, q2, k3, v, rq, rk, rv, lo, hi):  # noqa: D102
        b, g, dk, length = q1.shape
        dv = v.shape[2]
        tables = [t.contiguous() for t in (rq, rk, rv)]
        win = length if lo is None else int((hi - lo).max())
        w = q1.new_empty(-(-b // LANES) * g, length, win, LANES)
        sv, sve = q1.new_empty(b, g * dv, length), q1.new_empty(length, b, g * dv)
        operands = [x for t in (q1, k, q2, k3, v) for x in _lines(t)] + _outputs(sv, sve, dv)
        operands += [0] * 25  # (gradients: backward only)
        ranges = [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]
        pointers = [t.data_ptr() for t in tables] + ranges + [w.data_ptr()]
        sizes = (b, g, length, dk, dv, win)
        _run(operands, pointers, sizes, None, backward=False)
        ctx.save_for_backward(q1, k, q2, k3, v, *tables, w)
        ctx.ranges, ctx.sizes = (lo, hi), sizes
        return sv, sve

    @staticmethod
    def backward(ctx, grad_sv, grad_sve):  # noqa: D102
        *inputs, rq, rk, rv, w = ctx.saved_tensors
        lo, hi = ctx.ranges
        b, g, length, dk, dv, _ = ctx.sizes
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in inputs]
        threads = max(1, min(torch.get_num_threads(), -(-b // LANES) * g))
        table_grads = rq.new_zeros(threads, 2 * dk + dv, 2 * length + 1)
        operands = [x for t in inputs for x in _lines(t)] + _outputs(grad_sv, grad_sve, dv)
        operands += [x for t in grads for x in _lines(t)]
        ranges = [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]
        pointers = [t.data_ptr() for t in (rq, rk, rv)] + ranges + [w.data_ptr()]
        _run(operands, pointers, ctx.sizes, table_grads, backward=True)
        grq, grk, grv = table_grads.sum(0).split((dk, dk, dv))
        return (*grads, grq, grk, grv, None, None)


def attend(q1, k, q2, k3, v, tables, *, span: int, span_mode: str):
    """``attention_core.attend`` (same arguments and results) through the compiled kernel."""
    length = q1.shape[-1]
    index = extended_index(length, tables[0].shape[1], device=q1.device)  # [2L - 1]
    # [d, 2L + 1]: entry d + L for distance d, a zero beyond each end
    rq, rk, rv = (F.pad(t[:, index], (1, 1)) for t in tables)
    ranges = key_ranges(length, span, span_mode)
    lo, hi = (None, None) if ranges is None else (r.to(torch.int32) for r in ranges)
    return FusedCore.apply(q1, k, q2, k3, v, rq, rk, rv, lo, hi)
