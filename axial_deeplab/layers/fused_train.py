"""Axial attention with its backward pass, compiled (CPU, x86-64 with AVX2 and FMA).

Where ``AxialAttention`` does not run the inference pass (``fused_eval``: training, batch
statistics, gradients) on float32 CPU tensors, the projection (a 1x1 convolution) and its batch
norm run as PyTorch modules on the ``[N, C, H, W]`` map, and the rest goes to ``_fused_train.c``,
per head and group of 8 lines along the axis (the lanes of a vector), read from the maps as they
are (no lines gathered in PyTorch):

- the logit batch statistics (``FusedMoments``: ``logit_stats.TermMoments``'s sums and Gram
  contractions, not the L x L terms; a local window's ``q . k`` term by ``BandMoments``);
- the three logit terms, the softmax and both value terms (``FusedAxial``), with the output
  batch norm folded in when it is an affine ``BatchNorm2d`` (its statistics summed as the
  outputs are written; else it runs as a module on the kernel's output).

Only the softmax weights are kept; the backward passes are compiled too and write the
projection's gradient, and sum the gradients of the relative tables, the logit scales and the
output norm. Outputs, gradients and running statistics match the PyTorch path to float32
round-off (``tests/test_fused_train.py``).

It steps aside where ``fused_eval`` does (no compiled module, no AVX2, graphs and tracing,
dispatch modes, autocast, non-float32, empty inputs, ``AXIAL_DEEPLAB_FUSED_ATTENTION=0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import fused_eval, logit_stats
from .attention_core import key_ranges
from .batch_norm import update_running_stats, uses_batch_stats
from .logit_stats import window_terms, with_band
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
    if _fused_train is None or not fused_eval.enabled():
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
    if x.numel() == 0 or fused_eval.intercepted():
        return False
    return available()


def _map(x: torch.Tensor, axis: str) -> list[int]:
    """Address and (image, line, channel, position) strides of a map ``[N, C, H, W]`` whose lines
    run along ``axis``."""
    n, c, h, w = x.stride()
    return [x.data_ptr(), n, w, c, h] if axis == "height" else [x.data_ptr(), n, h, c, w]


# Modes of a kernel call, and where the per-part buffers go in its descriptor (after 4 maps).
ATTEND, ATTEND_BACKWARD, MOMENTS, MOMENTS_BACKWARD, NORM_SUMS = range(5)
_GR, _SUMS = 5 * 4 + 6, 5 * 4 + 13


def _run(descriptor: list[int], tasks: int, mode: int, parts: dict[int, torch.Tensor]) -> None:
    """The kernel on every task, split over ``len`` of the ``parts`` buffers (or torch's thread
    count), each part adding to its own row of every buffer ``parts[slot] [parts, ...]`` (a
    descriptor address slot: ``_GR``, ``_SUMS``)."""
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


def _tasks(images: int, lines: int, heads: int) -> int:
    """The kernel's tasks: every (group of 8 of the images' lines, head)."""
    return -(-images * lines // LANES) * heads


def _ranges(lo: torch.Tensor | None, hi: torch.Tensor | None) -> list[int]:
    """The addresses of the key ranges, zeros for the whole axis."""
    return [0, 0] if lo is None else [lo.data_ptr(), hi.data_ptr()]


def _descriptor(maps: list[int], tables=(), moments=(), sizes=()) -> list[int]:
    """A call's descriptor (``_fused_train.c``): four maps (QKV, OUT, GQKV, XOUT: 20 entries,
    zeros for the ones not used), the addresses ``tables`` (rq, rk, rv, lo, hi, w, gr, scales)
    and ``moments`` (sum_q, gram_q, sum_k, gram_k, coef, sums), zero where not given, and the
    seven sizes."""
    tables = list(tables) + [0] * (8 - len(tables))
    moments = list(moments) + [0] * (6 - len(moments))
    return maps + [0] * (20 - len(maps)) + tables + moments + list(sizes)


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
        tasks = _tasks(n, lines, g)
        sums = qkv.new_zeros(_threads(tasks), 6, g, dtype=torch.float64)
        sizes = (n, lines, g, length, dk, 1, length)
        descriptor = _descriptor(_map(qkv, axis), (), [t.data_ptr() for t in tables], sizes)
        _run(descriptor, tasks, MOMENTS, {_SUMS: sums})
        ctx.save_for_backward(qkv, *tables)
        ctx.geometry, ctx.sizes = geometry, sizes
        total = sums.sum(0)
        return total[:3].flatten(), total[3:].flatten()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, grad_squares):  # noqa: D102
        qkv, *tables = ctx.saved_tensors
        axis, g, dk = ctx.geometry
        length = ctx.sizes[3]
        tasks = _tasks(ctx.sizes[0], ctx.sizes[1], g)
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
    """``(qkv, scales, rq, rk, rv, weight, bias, geometry) -> out``: ``qkv [N, 2C, H, W]`` the
    normalised projection (channels ``[q | k | v]``), ``scales [3, G]`` the logit scales, extended
    tables ``[d, 2L + 1]`` (entry ``d + L`` for distance ``d``), ``geometry = (axis, heads, lo,
    hi, norm)`` (int32 key ranges ``[L]``, or None for the whole axis).

    ``norm`` None (``weight``, ``bias`` None): ``out [N, 2C, H, W]``, channels ``[sum W v | sum W
    rv]``. Else the output batch norm (``weight``, ``bias [2C]`` its affine parameters) folded in:
    ``out [N, C, H, W]``, the normalised halves summed, with batch statistics the forward pass
    sums as it writes (``norm``'s running statistics updated as ``nn.BatchNorm2d`` does) or the
    running ones in eval mode; the backward pass sums ``dy``, ``dy x`` per channel (``NORM_SUMS``)
    and hands the kernel ``a dy + b x + c``, the norm's backward, instead of a gradient map.
    """

    @staticmethod
    def forward(ctx, qkv, scales, rq, rk, rv, weight, bias, geometry):  # noqa: D102
        axis, g, lo, hi, norm = geometry
        n, _, h, w = qkv.shape
        length, lines = (h, w) if axis == "height" else (w, h)
        dk, dv = rq.shape[0], rv.shape[0]
        win = length if lo is None else int((hi - lo).max())
        tasks = _tasks(n, lines, g)
        weights = qkv.new_empty(tasks, length, win, LANES)
        out = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        tables = [t.contiguous() for t in (rq, rk, rv)]
        scales = scales.contiguous()
        addresses = [t.data_ptr() for t in tables] + _ranges(lo, hi) + [weights.data_ptr(), 0]
        sizes = (n, lines, g, length, dk, dv, win)
        descriptor = _descriptor(
            _map(qkv, axis) + _map(out, axis), addresses + [scales.data_ptr()], (), sizes
        )
        batch_stats = norm is not None and uses_batch_stats(norm)
        parts = {}  # the output norm's batch statistics, per part
        if batch_stats:
            parts[_SUMS] = out.new_zeros(_threads(tasks), 2 * g * dv, 3, dtype=torch.float64)
        _run(descriptor, tasks, ATTEND, parts)
        ctx.geometry, ctx.sizes = geometry, sizes
        if norm is None:
            ctx.save_for_backward(qkv, scales, *tables, weights)
            return out
        count = n * h * w
        if batch_stats:
            mean, var = _combine(parts[_SUMS])
            update_running_stats(norm, mean, var, count)
            mean, var = mean.to(out.dtype), var.to(out.dtype)
        else:
            mean, var = norm.running_mean, norm.running_var
        invstd = torch.rsqrt(var + norm.eps)
        scale = weight * invstd
        shift = bias - mean * scale
        c = g * dv
        y = torch.addcmul((shift[:c] + shift[c:])[:, None, None], out[:, :c], scale[:c, None, None])
        y.addcmul_(out[:, c:], scale[c:, None, None])  # [N, C, H, W]
        ctx.save_for_backward(qkv, scales, *tables, weights, out, mean, invstd, scale)
        ctx.batch_stats, ctx.count = batch_stats, count
        return y

    @staticmethod
    @once_differentiable  # (the kernel's backward is not itself differentiable)
    def backward(ctx, grad_out):  # noqa: D102
        qkv, scales, rq, rk, rv, weights, *normed = ctx.saved_tensors
        axis, g, lo, hi, norm = ctx.geometry
        length, dk, dv = ctx.sizes[3:6]
        tasks = weights.shape[0]
        grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        size = (2 * dk + dv) * (2 * length + 1)
        table_grads = qkv.new_zeros(_threads(tasks), size + 3 * g)
        addresses = [t.data_ptr() for t in (rq, rk, rv)] + _ranges(lo, hi)
        addresses += [weights.data_ptr(), 0, scales.data_ptr()]
        maps = _map(qkv, axis) + _map(grad_out, axis) + _map(grad_qkv, axis)
        grad_weight = grad_bias = None
        coef = None
        if normed:  # the output norm's backward, handed to the kernel as a dy + b x + c
            out, mean, invstd, scale = normed
            maps += _map(out, axis)
            sums = out.new_zeros(_threads(tasks), 3, g * dv, dtype=torch.float64)
            mean = mean.contiguous()
            descriptor = _descriptor(maps, addresses, [0, 0, 0, 0, mean.data_ptr()], ctx.sizes)
            _run(descriptor, tasks, NORM_SUMS, {_SUMS: sums})
            sum_dy, sum_dyx = sums.sum(0).to(out.dtype).split((1, 2))  # [1, C], [2, C]
            sum_dy = sum_dy.expand(2, -1).flatten()  # [2C]: dy is shared by both halves
            sum_dy_xhat = invstd * sum_dyx.flatten()  # [2C]
            grad_weight, grad_bias = sum_dy_xhat, sum_dy
            # d out = scale (dy - mean(dy) - xhat mean(dy xhat)) with batch statistics
            b = -scale * invstd * sum_dy_xhat / ctx.count
            c = -scale * sum_dy / ctx.count
            if not ctx.batch_stats:
                b, c = torch.zeros_like(b), torch.zeros_like(c)
            coef = torch.cat([scale, b, mean, c]).contiguous()  # [4, 2C]
        moments = [] if coef is None else [0, 0, 0, 0, coef.data_ptr()]
        descriptor = _descriptor(maps, addresses, moments, ctx.sizes)
        _run(descriptor, tasks, ATTEND_BACKWARD, {_GR: table_grads})
        total = table_grads.sum(0)
        grq, grk, grv = total[:size].view(2 * dk + dv, -1).split((dk, dk, dv))
        grads = (grad_qkv, total[size:].view(3, g), grq, grk, grv)
        return (*grads, grad_weight, grad_bias, None)


def _combine(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, biased var)`` ``[2C]`` from per-part ``(count, mean, M2)`` rows ``[parts, 2C, 3]``
    (Chan et al.'s pairwise combination, in float64)."""
    count, mean, m2 = stats[0].unbind(-1)
    for part in stats[1:]:
        n, m, s = part.unbind(-1)
        total = count + n
        weight = n / total.clamp(min=1.0)  # (channels of heads a part did not run: n = 0)
        delta = m - mean
        mean = mean + delta * weight
        m2 = m2 + s + delta * delta * count * weight
        count = total
    return mean, m2 / count


def _foldable(bn: torch.nn.Module) -> bool:
    """Whether the output norm can run inside ``FusedAxial``: an affine ``BatchNorm2d`` with its
    statistics local to this process (a ``SyncBatchNorm`` runs as a module)."""
    return type(bn) is torch.nn.BatchNorm2d and bn.affine


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
    norm = layer.output_norm
    if _foldable(norm):
        geometry = (layer.axis, g, lo, hi, norm)
        return FusedAxial.apply(qkv, scales, *tables, norm.weight, norm.bias, geometry)
    out = FusedAxial.apply(qkv, scales, *tables, None, None, (layer.axis, g, lo, hi, None))
    out = norm(out)  # [N, 2C, H, W]
    return out.view(n, 2, c, h, w).sum(1)
