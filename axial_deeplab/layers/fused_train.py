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


def _pack(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, G, d, L]`` -> ``[groups G, d, L, 8]``: 8 lines to a vector, missing lines zero."""
    b, g, d, length = x.shape
    if groups * LANES != b:
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, groups * LANES - b))
    return x.view(groups, LANES, g, d, length).permute(0, 2, 3, 4, 1).contiguous()


def _unpack(x: torch.Tensor, b: int, g: int) -> torch.Tensor:
    """The inverse of ``_pack``: ``[groups G, d, L, 8]`` -> ``[B, G, d, L]`` (a view)."""
    d, length = x.shape[-3:-1]
    return x.view(-1, g, d, length, LANES).permute(0, 4, 1, 2, 3).flatten(0, 1)[:b]


def _run(sizes: tuple[int, ...], pointers: list[int], tasks: int, backward: bool) -> None:
    """The kernel over ``tasks``, split over torch's thread count; ``pointers[-1]``, for the
    backward pass, is a list of one table-gradient buffer per part."""
    threads = max(1, min(torch.get_num_threads(), tasks))
    bounds = [tasks * i // threads for i in range(threads + 1)]
    parts = list(zip(bounds, bounds[1:]))

    def part(i: int) -> tuple:
        tail = [pointers[-1][i]] if backward else [0]
        return tuple(pointers[:-1] + tail), sizes, parts[i][0], parts[i][1], backward

    if threads == 1:
        _fused_train.call(*part(0))
        return
    pool = fused_eval._pool(threads)
    for run in [pool.submit(_fused_train.call, *part(i)) for i in range(threads)]:
        run.result()


class FusedCore(torch.autograd.Function):
    """``(q1, k, q2, k3, v, rq, rk, rv, lo, hi) -> (sv [B, C, L], sve [L, B, C])`` for operands
    ``[B, G, d, L]`` and extended tables ``[d, 2L + 1]`` (entry ``d + L`` for distance ``d``)."""

    @staticmethod
    def forward(ctx, q1, k, q2, k3, v, rq, rk, rv, lo, hi):  # noqa: D102
        b, g, dk, length = q1.shape
        dv = v.shape[2]
        groups = -(-b // LANES)
        packed = [_pack(t, groups) for t in (q1, k, q2, k3, v)]
        tables = [t.contiguous() for t in (rq, rk, rv)]
        win = length if lo is None else int((hi - lo).max())
        w = q1.new_empty(groups * g, length, win, LANES)
        sv, sve = (q1.new_empty(groups * g, dv, length, LANES) for _ in range(2))
        ranges = [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]
        pointers = [t.data_ptr() for t in (*packed, *tables)] + ranges
        pointers += [w.data_ptr(), sv.data_ptr(), sve.data_ptr()] + [0] * 5 + [None]
        sizes = (groups * g, length, dk, dv, win)
        _run(sizes, pointers, groups * g, backward=False)
        ctx.save_for_backward(*packed, *tables, w)
        ctx.ranges, ctx.sizes, ctx.shape = (lo, hi), sizes, (b, g)
        out_sv = _unpack(sv, b, g).reshape(b, g * dv, length)  # [B, C, L]
        out_sve = _unpack(sve, b, g).permute(3, 0, 1, 2).reshape(length, b, g * dv)  # [L, B, C]
        return out_sv, out_sve

    @staticmethod
    def backward(ctx, grad_sv, grad_sve):  # noqa: D102
        *packed, rq, rk, rv, w = ctx.saved_tensors
        lo, hi = ctx.ranges
        b, g = ctx.shape
        tasks, length, dk, dv, _ = ctx.sizes
        groups = tasks // g
        gsv = _pack(grad_sv.reshape(b, g, dv, length), groups)
        gsve = _pack(grad_sve.reshape(length, b, g, dv).permute(1, 2, 3, 0), groups)
        grads = [torch.empty_like(t) for t in packed]  # gq1, gk, gq2, gk3, gv
        threads = max(1, min(torch.get_num_threads(), tasks))
        table_grads = rq.new_zeros(threads, 2 * dk + dv, 2 * length + 1)
        ranges = [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]
        pointers = [t.data_ptr() for t in (*packed, rq, rk, rv)] + ranges
        pointers += [w.data_ptr(), gsv.data_ptr(), gsve.data_ptr()]
        pointers += [t.data_ptr() for t in grads] + [[t.data_ptr() for t in table_grads]]
        _run(ctx.sizes, pointers, tasks, backward=True)
        grq, grk, grv = table_grads.sum(0).split((dk, dk, dv))
        out = [_unpack(t, b, g) for t in grads]
        return (*out, grq, grk, grv, None, None)


def attend(q1, k, q2, k3, v, tables, *, span: int, span_mode: str):
    """``attention_core.attend`` (same arguments and results) through the compiled kernel."""
    length = q1.shape[-1]
    index = extended_index(length, tables[0].shape[1], device=q1.device)  # [2L - 1]
    # [d, 2L + 1]: entry d + L for distance d, a zero beyond each end
    rq, rk, rv = (F.pad(t[:, index], (1, 1)) for t in tables)
    ranges = key_ranges(length, span, span_mode)
    lo, hi = (None, None) if ranges is None else (r.to(torch.int32) for r in ranges)
    return FusedCore.apply(q1, k, q2, k3, v, rq, rk, rv, lo, hi)
