"""Inference-time axial attention in one compiled pass (CPU, x86-64 with AVX2 and FMA).

``AxialAttention`` in eval mode with no gradient to record, on a float32 CPU tensor, hands its
whole layer but the projection to ``_fused_eval.c``: per head and group of 8 lines along the
attended axis (of all the images' lines), the three logit terms, the softmax and both value terms in registers and L1,
the batch norms folded in, the output written straight into the ``[N, C, H, W]`` map. The
projection is one matmul per image on the map as it is (no lines are gathered). Outputs match
the PyTorch path to float32 round-off (``tests/test_fused_eval.py``).

It steps aside (the PyTorch path runs) where the compiled module is missing (no C compiler at
install) or the CPU lacks AVX2, under ``torch.compile``/``torch.export``/tracing, under any
``TorchDispatchMode`` (FLOP counters, fake tensors), under autocast, for batch statistics or
gradients, and when ``AXIAL_DEEPLAB_FUSED_ATTENTION=0``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .batch_norm import running_affine, uses_batch_stats
from .precision import autocast_enabled
from .relative_position import extended_index

try:
    from . import _fused_eval
except ImportError:  # built without a C compiler, or not x86-64: the PyTorch path runs
    _fused_eval = None

ENV = "AXIAL_DEEPLAB_FUSED_ATTENTION"
_SUPPORTED: bool | None = None
_POOL: tuple[tuple[int, int], ThreadPoolExecutor] | None = None


def enabled() -> bool:
    """Whether ``$AXIAL_DEEPLAB_FUSED_ATTENTION`` lets the compiled kernels run (it is not ``0``)."""
    return os.environ.get(ENV, "1") != "0"


def intercepted() -> bool:
    """Whether something other than eager float32 execution is watching or rewriting the ops
    (compile/export/jit tracing, a ``TorchDispatchMode``, CPU autocast): the compiled kernels
    step aside then, as opaque calls would hide their work."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    return _get_current_dispatch_mode() is not None or autocast_enabled("cpu")


def available() -> bool:
    """Whether the compiled kernel is here, this CPU runs it, and ``$AXIAL_DEEPLAB_FUSED_ATTENTION``
    is not ``0``."""
    global _SUPPORTED
    if _fused_eval is None or not enabled():
        return False
    if _SUPPORTED is None:
        _SUPPORTED = bool(_fused_eval.supported())
    return _SUPPORTED


def applies(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer(x)`` may run fused (see the module's docstring)."""
    if not (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32):
        return False
    if intercepted():
        return False
    norms = (layer.qkv_norm, layer.logits_norm, layer.output_norm)
    if any(uses_batch_stats(bn) for bn in norms):
        return False
    params = list(layer.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    return available()


def _pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads for the kernel (it releases the GIL); a new pool when the thread count
    changes, or in a process forked after the pool started (whose threads stayed behind)."""
    global _POOL
    key = (threads, os.getpid())
    if _POOL is None or _POOL[0] != key:
        if _POOL is not None and _POOL[0][1] == key[1]:
            _POOL[1].shutdown(wait=False)
        _POOL = (key, ThreadPoolExecutor(threads, thread_name_prefix="axial-fused"))
    return _POOL[1]


def _project(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight [C, C_in] @ x [N, C_in, H, W]`` per image: ``[N, C, H, W]`` whose rows (channels)
    are ``H W`` rounded up to 16 floats apart. On a row length that is not a multiple of 16 floats
    (65 x 65 = 4225) the CPU's matmul ran at ~60% of its usual rate (57 against 81-88 GFLOP/s
    for ``[256, 128] x [128, 4225]``, 1 thread); copying ``x`` into padded rows costs less."""
    n, c_in, h, w = x.shape
    size = h * w
    row = -(-size // 16) * 16
    if row != size:
        padded = x.new_empty(n, c_in, row)[..., :size]
        x = padded.copy_(x.view(n, c_in, size))
    else:
        x = x.view(n, c_in, size)
    out = x.new_empty(n, weight.shape[0], row)[..., :size]
    for image in range(n):
        torch.mm(weight, x[image], out=out[image])
    return out.unflatten(-1, (h, w))


@torch.no_grad()
def attend(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` before its stride, ``[N, C_out, H, W]``, for an ``AxialAttention`` for which
    ``applies(layer, x)`` holds."""
    from .attention_core import key_ranges  # (attention_core imports nothing from here)

    g, dk, dv, c = layer.num_heads, layer.key_channels, layer.value_channels, layer.out_channels
    n, c_in, h, w = x.shape
    scale, shift = running_affine(layer.qkv_norm)  # [2C] each
    weight = layer.qkv_proj.weight.flatten(1) * scale[:, None]  # [2C, C_in]
    if x.is_contiguous():
        qkv = _project(weight, x)
    else:  # channels-last and other layouts: oneDNN's 1x1 convolution keeps it
        qkv = torch.nn.functional.conv2d(x, weight[:, :, None, None])
    # the input's layout: the model's convolutions run channels-last (modeling.fusion)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
    out = torch.empty(n, c, h, w, dtype=x.dtype, memory_format=layout or torch.contiguous_format)
    length, lines = (h, w) if layer.axis == "height" else (w, h)
    # (position, line) strides of the projection and of the output
    pl_in = (qkv.stride(2), qkv.stride(3)) if layer.axis == "height" else qkv.stride()[:1:-1]
    pl_out = (out.stride(2), out.stride(3)) if layer.axis == "height" else out.stride()[:1:-1]

    s0, s1, s2 = running_affine(layer.logits_norm)[0].view(3, g, 1, 1)  # the shift cancels
    index = extended_index(length, layer.query_rel.shape[1], device=x.device)  # [2L - 1]

    def table(rel: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # [G, d, 2L + 1]: entry d + L for distance d, one zero beyond each end (read for a
        # phantom query past the end of an odd-length axis, whose results are not stored)
        return torch.nn.functional.pad(scale * rel[:, index], (1, 1)).contiguous()

    out_scale, out_shift = running_affine(layer.output_norm)  # [2C] each
    v_scale = out_scale[:c].contiguous()
    operands = {  # kept referenced until the kernel returns
        "q_shift": shift[: g * dk].contiguous(),
        "k_shift": shift[g * dk : 2 * g * dk].contiguous(),
        "s0": s0.flatten().contiguous(),
        "rq": table(layer.query_rel, s1),
        "rk": table(layer.key_rel, s2),
        "rv": table(layer.value_rel, out_scale[c:].view(g, dv, 1)),
        "v_scale": v_scale,
        # the values' shift passes through weights that sum to 1
        "bias": (out_shift[:c] + out_shift[c:] + v_scale * shift[2 * g * dk :]).contiguous(),
    }
    ranges = key_ranges(length, layer.span, layer.span_mode)
    lo, hi = (None, None) if ranges is None else (r.to(torch.int32) for r in ranges)
    pointers = (
        qkv.data_ptr(),
        out.data_ptr(),
        *(t.data_ptr() for t in operands.values()),
        0 if lo is None else lo.data_ptr(),
        0 if hi is None else hi.data_ptr(),
    )
    sizes = (qkv.stride(0), qkv.stride(1), *pl_in, out.stride(0), out.stride(1), *pl_out,
             n, length, lines, g, dk, dv)  # fmt: skip
    tasks = -(-n * lines // 8) * g  # (group of 8 of the N x lines lines, head)
    threads = min(torch.get_num_threads(), tasks)
    if threads <= 1:
        _fused_eval.attend(pointers, sizes, 0, tasks)
    else:
        bounds = [tasks * i // threads for i in range(threads + 1)]
        runs = [
            _pool(threads).submit(_fused_eval.attend, pointers, sizes, a, b)
            for a, b in zip(bounds, bounds[1:])
        ]
        for run in runs:
            run.result()
    return out
