"""The compiled training passes of ``layers/_fused_train.c`` on their own, against the PyTorch
core in float64: ``FusedAxial`` (the attention and its backward pass) against
``attention_core.attend``, ``FusedMoments`` (the logit statistics) against ``TermMoments``.
The layer-level checks are in ``test_fused_train.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_fused_train import Spy, assert_all_close, needs_kernel

from axial_deeplab.layers import attention_core, fused_train
from axial_deeplab.layers.attention_core import key_ranges
from axial_deeplab.layers.logit_stats import TermMoments, window_terms
from axial_deeplab.layers.relative_position import extended_index, table_size


@pytest.fixture
def spy(monkeypatch):
    spy = Spy(fused_train._fused_train)
    monkeypatch.setattr(fused_train, "_fused_train", spy)
    return spy


# (span_mode, span, L, images, lines per image, axis): the compiled pass alone on random maps of
# unit scale; lines (images x lines per image) not a multiple of 8 leave lanes to pad.
CORE_SHAPES = [
    ("global", 65, 9, 1, 1, "height"),
    ("global", 3, 10, 2, 4, "width"),  # distances clipped at the table's ends
    ("local", 5, 13, 3, 1, "height"),  # banded windows, clipped at the borders
    ("local", 3, 1, 1, 9, "width"),  # L = 1
    ("hybrid", 3, 7, 3, 6, "height"),  # 18 lines: a group with lines of two images
    ("block", 3, 14, 1, 5, "width"),  # windows of varying width
]


def core_inputs(shape, heads, dk, *, scale=1.0, seed=11):
    """A random projection map ``qkv [N, 2C, H, W]``, logit scales ``[3, G]`` (the first two
    times ``scale``), relative tables and an output gradient (dv = 2 dk, as in the layer)."""
    span_mode, span, length, images, lines, axis = shape
    dv = 2 * dk
    gen = torch.Generator().manual_seed(seed)
    hw = (length, lines) if axis == "height" else (lines, length)
    qkv = torch.randn(images, heads * (2 * dk + dv), *hw, generator=gen)
    scales = torch.rand(3, heads, generator=gen) + 0.5
    scales[:2] *= scale
    size = table_size(span, span_mode)
    tables = [torch.randn(d, size, generator=gen) for d in (dk, dk, dv)]
    grad = torch.randn(images, 2 * heads * dv, *hw, generator=gen)
    return [qkv, scales, *tables], grad


def by_lines(x: torch.Tensor, axis: str) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N lines, C, L]`` along ``axis``."""
    x = x.permute(0, 3, 1, 2) if axis == "height" else x.permute(0, 2, 1, 3)
    return x.reshape(-1, x.shape[2], x.shape[3])


def reference_core(qkv, scales, rq, rk, rv, *, shape, heads, dk):
    """The compiled pass's function by ``attention_core.attend`` on lines: ``[N, 2C, H, W]``."""
    span_mode, span, length, images, lines, axis = shape
    q, k, v = by_lines(qkv, axis).split((heads * dk, heads * dk, 2 * heads * dk), dim=1)
    q, k = (t.unflatten(1, (heads, dk)) for t in (q, k))  # [B, G, dk, L]
    v = v.unflatten(1, (heads, 2 * dk))
    s0, s1, s2 = scales[:, None, :, None, None]  # [1, G, 1, 1] each
    sv, sve = attention_core.attend(
        q * s0, k, q * s1, k * s2, v, (rq, rk, rv), span=span, span_mode=span_mode
    )
    out = torch.cat([sv, sve.permute(1, 2, 0)], dim=1)  # [B, 2C, L]
    out = out.view(images, lines, out.shape[1], length)
    return out.permute(0, 2, 3, 1) if axis == "height" else out.permute(0, 2, 1, 3)


def compiled_core(qkv, scales, rq, rk, rv, *, shape, heads, dk):
    """``fused_train.FusedAxial`` on the same arguments (tables extended as the layer does)."""
    span_mode, span, length, _, _, axis = shape
    index = extended_index(length, rq.shape[1])
    tables = [F.pad(t[:, index], (1, 1)) for t in (rq, rk, rv)]
    ranges = key_ranges(length, span, span_mode)
    lo, hi = (None, None) if ranges is None else (r.to(torch.int32) for r in ranges)
    geometry = (axis, heads, lo, hi, None)  # (no output norm)
    return fused_train.FusedAxial.apply(qkv, scales, *tables, None, None, geometry)


def core_step(core, inputs, grad, dtype, **kwargs) -> dict[str, torch.Tensor]:
    """``core`` on ``inputs`` in ``dtype``: the output and the gradients of every input."""
    leaves = [t.to(dtype).requires_grad_(True) for t in inputs]
    out = core(*leaves, **kwargs)
    out.backward(grad.to(dtype))
    names = ["qkv", "scales", "rq", "rk", "rv"]
    return {"out": out.detach()} | {f"{n} grad": t.grad for n, t in zip(names, leaves)}


@needs_kernel
@pytest.mark.parametrize("heads,dk", [(1, 1), (2, 3), (3, 4)], ids=["dk1", "dk3", "dk4"])
@pytest.mark.parametrize(
    "shape", CORE_SHAPES, ids=[f"{s[0]}{s[1]}-L{s[2]}-{s[3]}x{s[4]}-{s[5]}" for s in CORE_SHAPES]
)
def test_core_matches_float64_attention_core(shape, heads, dk, spy):
    # The output and the gradients of the map, the logit scales and the three tables, against
    # the PyTorch core run in float64 on the same (float32) values. dv of 2 and 6: not
    # multiples of 4.
    inputs, grad = core_inputs(shape, heads, dk)
    kwargs = {"shape": shape, "heads": heads, "dk": dk}
    expected = core_step(reference_core, inputs, grad, torch.float64, **kwargs)
    got = core_step(compiled_core, inputs, grad, torch.float32, **kwargs)
    assert spy.forward >= 1 and spy.backward >= 1
    assert all(t.dtype == torch.float32 for t in got.values())
    assert_all_close(got, expected, rel=2e-5)


@needs_kernel
def test_core_large_logits(spy):
    # Logits hundreds apart, whose exponentials overflow float32 unless each query's largest
    # logit is subtracted first (as PyTorch's softmax does): finite, and the float64 results.
    shape = ("global", 65, 13, 3, 8, "width")
    inputs, grad = core_inputs(shape, 2, 4, scale=300.0)
    kwargs = {"shape": shape, "heads": 2, "dk": 4}
    expected = core_step(reference_core, inputs, grad, torch.float64, **kwargs)
    got = core_step(compiled_core, inputs, grad, torch.float32, **kwargs)
    assert spy.forward >= 1 and spy.backward >= 1
    assert all(bool(t.isfinite().all()) for t in got.values())
    assert_all_close(got, expected, rel=1e-3)


@needs_kernel
@pytest.mark.parametrize("shape", CORE_SHAPES[:3] + CORE_SHAPES[4:], ids=lambda s: s[0])
def test_moments_match_term_moments(shape, spy):
    # The compiled logit statistics (sums and sums of squares of the three terms) and their
    # gradients (of the map and of the tables' window sums and Gram matrices) against
    # TermMoments in float64 on the lines.
    span_mode, span, length, images, lines, axis = shape
    heads, dk = 2, 3
    (qkv, _, rq, rk, _), _ = core_inputs(shape, heads, dk)
    index = extended_index(length, rq.shape[1])
    tables, _ = window_terms(
        rq[:, index], rk[:, index], length, key_ranges(length, span, span_mode)
    )
    coef = torch.randn(2, 3 * heads, generator=torch.Generator().manual_seed(3))

    def run(moments, dtype):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in (qkv, *tables)]
        total, squares = moments(*leaves)
        (total * coef[0].to(total.dtype) + squares * coef[1].to(total.dtype)).sum().backward()
        out = {"total": total.detach(), "squares": squares.detach()}
        return out | {f"grad {i}": t.grad.to(dtype) for i, t in enumerate(leaves)}

    def reference(x, *tables):
        q, k, _ = by_lines(x, axis).split((heads * dk, heads * dk, 2 * heads * dk), dim=1)
        return TermMoments.apply(q.unflatten(1, (heads, dk)), k.unflatten(1, (heads, dk)), *tables)

    def compiled(x, *tables):
        return fused_train.FusedMoments.apply(x, *tables, (axis, heads, dk))

    expected = run(reference, torch.float64)
    got = run(compiled, torch.float32)
    assert spy.moments >= 2  # forward and backward (a call per thread)
    assert_all_close({k: v.double() for k, v in got.items()}, expected, rel=2e-5)
