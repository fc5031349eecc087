"""AxialAttention against the naive dense reference of ``attention_reference.py`` (the paper's
eq. 4), its building blocks (relative indices, logit moments, the core's gradients), memory and
mixed precision; the execution paths (chunks, eval projection): ``test_attention_paths.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from attention_reference import DTYPE, NaiveAxialAttention, assert_agrees, make_layer

from axial_deeplab.layers import AxialAttention, attention_core
from axial_deeplab.layers.attention_core import AttentionCore, key_ranges
from axial_deeplab.layers.logit_stats import logit_moments
from axial_deeplab.layers.relative_position import pair_index

# (axis, span_mode, span, H, W, stride, stride_mode): along the axis of length L,
CASES = [
    ("height", "global", 8, 5, 4, 1, "subsample"),  # global, L < span
    ("width", "global", 6, 3, 6, 1, "subsample"),  # global, L == span (even)
    ("height", "global", 3, 9, 2, 2, "subsample"),  # global, L > span: distances clipped
    ("width", "global", 2, 3, 7, 2, "avgpool"),  # global, clipped, odd L, avg-pooled
    ("height", "local", 5, 3, 5, 1, "subsample"),  # local, L <= m // 2 + 1: no masking
    ("width", "local", 7, 2, 6, 2, "avgpool"),  # local, m // 2 + 1 < L < m
    ("height", "local", 3, 5, 3, 1, "subsample"),  # local, m < L <= 2 m: dense + mask
    ("width", "local", 3, 2, 11, 2, "subsample"),  # local, L > 2 m: banded blocks
    ("height", "local", 5, 17, 2, 1, "avgpool"),  # local, banded with a ragged last block
    ("height", "hybrid", 3, 5, 4, 1, "subsample"),  # hybrid, L <= 2 m - 1: global
    ("width", "hybrid", 3, 2, 6, 1, "subsample"),  # hybrid, 2 m - 1 < L <= 2 m: dense + mask
    ("width", "hybrid", 3, 2, 13, 2, "avgpool"),  # hybrid, L > 2 m: banded blocks
    ("height", "block", 3, 5, 4, 1, "subsample"),  # blocked, L <= 2 m - 1: global
    ("width", "block", 3, 2, 13, 1, "subsample"),  # blocked: 5-query blocks, flange 1, ragged
    ("height", "block", 5, 23, 2, 2, "avgpool"),  # blocked: 9-query blocks, flange 2
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}{c[2]}-{c[3]}x{c[4]}" for c in CASES])
def test_matches_naive_reference(case, train):
    axis, span_mode, span, h, w, stride, stride_mode = case
    layer = make_layer(
        axis=axis, span=span, span_mode=span_mode, stride=stride, stride_mode=stride_mode
    )
    x = torch.randn(2, 6, h, w, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    assert_agrees(layer, x, train)


def test_not_tied_to_resolution():
    # One layer, two input sizes (long and short axes, global span 4 clips on the first).
    layer = make_layer(axis="width", span=4, span_mode="global")
    gen = torch.Generator().manual_seed(4)
    for h, w in ((3, 9), (5, 2)):
        assert_agrees(layer, torch.randn(2, 6, h, w, dtype=DTYPE, generator=gen), train=True)


def test_running_stats_cumulative_momentum():
    # momentum=None: nn.BatchNorm's cumulative average over steps; two train steps.
    layer = make_layer(axis="height", span=3, span_mode="local")
    for bn in (layer.qkv_norm, layer.logits_norm, layer.output_norm):
        bn.momentum = None
    gen = torch.Generator().manual_seed(5)
    ref = NaiveAxialAttention(layer).train()
    layer.train()
    for _ in range(2):
        x = torch.randn(2, 6, 7, 3, dtype=DTYPE, generator=gen)
        torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=0)
    # by name: the reference holds the layer itself (as ``cfg``), whose buffers come first in
    # ref.buffers(); zipping the two lists compared each buffer with itself
    ref_buffers = dict(ref.named_buffers())
    compared = [name for name, _ in layer.named_buffers() if name.endswith(("_mean", "_var"))]
    assert len(compared) == 6, compared  # running mean and variance of the three norms
    for name, buf in layer.named_buffers():
        assert ref_buffers[name] is not buf, name
        torch.testing.assert_close(buf, ref_buffers[name], atol=1e-10, rtol=0, msg=name)
    assert int(layer.logits_norm.num_batches_tracked) == 2


def test_float32_close_to_reference():
    layer = make_layer(axis="width", span=5, span_mode="global").float()
    x = torch.randn(2, 6, 4, 9, generator=torch.Generator().manual_seed(6))
    ref = NaiveAxialAttention(layer)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-4, rtol=0)


def test_pair_index_hand_worked():
    # Queries at 1, 2; keys at 0..3; table of 3 entries (reach 1, index = clip(p - o) + 1):
    # o = 1: p - o = -1, 0, 1, 2 -> 0, 1, 2, 2;  o = 2: -2, -1, 0, 1 -> 0, 0, 1, 2.
    assert pair_index((1, 3), (0, 4), 3).tolist() == [[0, 1, 2, 2], [0, 0, 1, 2]]


def test_logit_moments_match_dense_terms():
    gen = torch.Generator().manual_seed(8)
    b, g, d, length = 3, 2, 4, 5
    q, k = (torch.randn(b, g, d, length, dtype=DTYPE, generator=gen) for _ in range(2))
    eq, ek = (torch.randn(d, 2 * length - 1, dtype=DTYPE, generator=gen) for _ in range(2))
    # Naive: R[c, o, p] = table[c, p - o + L - 1].
    idx = torch.tensor([[p - o + length - 1 for p in range(length)] for o in range(length)])
    qk = torch.einsum("bgco,bgcp->bgop", q, k)
    qr = torch.einsum("bgco,cop->bgop", q, eq[:, idx])
    kr = torch.einsum("bgcp,cop->bgop", k, ek[:, idx])
    terms = torch.cat([qk, qr, kr], dim=1)  # [B, 3G, L, L]
    var, mean = torch.var_mean(terms, dim=(0, 2, 3), correction=0)
    got_mean, got_var, count = logit_moments(q, k, eq, ek)
    assert count == b * length * length
    torch.testing.assert_close(got_mean, mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(got_var, var, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode,span,length", [("local", 3, 7), ("block", 3, 13), ("local", 5, 4)])
def test_logit_moments_over_the_pairs_the_softmax_sees(mode, span, length):
    gen = torch.Generator().manual_seed(9)
    b, g, d = 2, 2, 3
    q, k = (torch.randn(b, g, d, length, dtype=DTYPE, generator=gen) for _ in range(2))
    eq, ek = (torch.randn(d, 2 * length - 1, dtype=DTYPE, generator=gen) for _ in range(2))
    idx = torch.tensor([[p - o + length - 1 for p in range(length)] for o in range(length)])
    terms = torch.cat([
        torch.einsum("bgco,bgcp->bgop", q, k),
        torch.einsum("bgco,cop->bgop", q, eq[:, idx]),
        torch.einsum("bgcp,cop->bgop", k, ek[:, idx]),
    ], dim=1)  # fmt: skip
    # The window, written out: |p - o| <= m // 2, or blocks of 2m - 1 queries widened by m // 2.
    if mode == "local":
        seen = [[abs(p - o) <= span // 2 for p in range(length)] for o in range(length)]
    else:
        block, flange = 2 * span - 1, span // 2
        seen = [[(o // block) * block - flange <= p < (o // block + 1) * block + flange
                 for p in range(length)] for o in range(length)]  # fmt: skip
    seen = torch.tensor(seen)
    var, mean = torch.var_mean(terms[:, :, seen], dim=(0, 2), correction=0)
    ranges = key_ranges(length, span, mode)
    if bool(seen.all()):  # a window covering the axis: the all-pairs path
        assert ranges is None
    got_mean, got_var, count = logit_moments(q, k, eq, ek, ranges)
    assert count == b * int(seen.sum())
    torch.testing.assert_close(got_mean, mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(got_var, var, atol=1e-12, rtol=0)
    if ranges is not None:  # hand-written backward of the banded content term
        args = tuple(t.clone().requires_grad_(True) for t in (q, k, eq, ek))
        assert torch.autograd.gradcheck(lambda *a: logit_moments(*a, ranges)[:2], args)


def test_moments_gradcheck():
    # Hand-written backward of the BN statistics against finite differences.
    gen = torch.Generator().manual_seed(10)
    q, k = (torch.randn(2, 2, 3, 4, dtype=DTYPE, generator=gen) for _ in range(2))
    eq, ek = (torch.randn(3, 7, dtype=DTYPE, generator=gen) for _ in range(2))
    args = tuple(t.requires_grad_(True) for t in (q, k, eq, ek))
    assert torch.autograd.gradcheck(lambda *a: logit_moments(*a)[:2], args)


def test_core_gradcheck():
    # Custom backward against finite differences, rectangular block (Lo=3, Lp=4) with a mask.
    gen = torch.Generator().manual_seed(9)

    def rand(*shape):
        return torch.randn(*shape, dtype=DTYPE, generator=gen).requires_grad_(True)

    bg, dk, dv, n_q, n_k = 4, 2, 3, 3, 4
    args = (rand(bg, dk, n_q), rand(bg, dk, n_k), rand(bg, dk, n_q), rand(n_q, dk, n_k))
    args += (rand(bg, dk, n_k), rand(n_k, dk, n_q), rand(bg, dv, n_k), rand(n_q, n_k, dv))
    mask = torch.tensor([[False, False, True, True], [False] * 4, [True, False, False, False]])
    assert torch.autograd.gradcheck(lambda *a: AttentionCore.apply(*a, mask, 2), args)  # G = 2


@pytest.mark.parametrize("fused", ["0", "1"], ids=["pytorch", "compiled"])
def test_long_local_axis_uses_banded_memory(fused, monkeypatch):
    # Span 5: dense weights would be [B, G, L, L]; the banded path keeps blocks of [1, 2, 5, 9],
    # the compiled one each query's window of 5 keys for 8 lines (lanes), and the BN statistics
    # need no [L, L] table either. No tensor saved for backward may grow faster than L: doubling
    # L at most doubles the largest. The PyTorch path's largest is qkv ([1, 16, L, 1]); the
    # compiled path's, the weights of 8 lanes x 2 heads x L x 5 keys.
    monkeypatch.setenv("AXIAL_DEEPLAB_FUSED_ATTENTION", fused)
    layer = make_layer(axis="width", span=5, span_mode="local").float()
    largest = {}
    for length in (200, 400):
        x = torch.randn(1, 6, 1, length, requires_grad=True)
        sizes = []

        def pack(t):
            sizes.append(t.numel())  # noqa: B023
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer.train()(x)
        largest[length] = max(sizes)
    assert largest[400] <= 2 * largest[200]
    assert largest[200] <= (16 if fused == "0" else 8 * 2 * 5) * 200


def test_bad_input_names_the_shape():
    layer = make_layer(axis="height", span=3, span_mode="global")
    with pytest.raises(ValueError, match=r"expected input \[N, 6, H, W\], got \[2, 5, 4, 4\]"):
        layer(torch.zeros(2, 5, 4, 4, dtype=DTYPE))


@pytest.mark.parametrize(
    "change, said",
    [({"num_heads": 0}, "num_heads must be an integer >= 1, got 0"),
     ({"stride": 0}, "stride must be an integer >= 1, got 0"),
     ({"out_channels": 0}, "out_channels must be an integer >= 1, got 0")],
)  # fmt: skip
def test_bad_sizes_are_refused_when_built(change, said):
    """num_heads 0 raised ZeroDivisionError; stride 0 failed only at the first forward."""
    settings = {"in_channels": 8, "out_channels": 8, "axis": "height", "num_heads": 2, **change}
    with pytest.raises(ValueError, match=f"^{said}$"):
        AxialAttention(settings.pop("in_channels"), settings.pop("out_channels"), **settings)


@pytest.mark.parametrize("training", [True, False])
def test_autocast_runs_the_attention_in_float32(monkeypatch, training):
    """Mixed precision: projections may run in bfloat16, the logits and softmax in float32."""
    torch.manual_seed(0)
    layer = AxialAttention(32, 32, axis="height", num_heads=2, span=9, span_mode="global")
    layer.train(training)
    x = torch.randn(2, 32, 9, 7)
    reference = copy.deepcopy(layer)(x)
    seen = []
    weights_fn = attention_core.attention_weights

    def spy(q1, *args):
        seen.append(q1.dtype)
        return weights_fn(q1, *args)

    monkeypatch.setattr(attention_core, "attention_weights", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert seen and set(seen) == {torch.float32}
    assert out.dtype == torch.float32
    # bfloat16 projections (8 mantissa bits): about 1% of the output's scale.
    assert (out - reference).abs().max() < 0.03 * reference.abs().max()
    if training:
        out.square().mean().backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("fused", ["1", "0"], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("mode", ["train", "eval", "eval-grad"])
@pytest.mark.parametrize("case", CASES[2:9:3], ids=lambda c: f"{c[0]}-{c[1]}-stride{c[5]}")
def test_empty_batch(monkeypatch, fused, mode, case):
    """N = 0 (an empty shard of a batch): the shape one image would give, no error (the
    PyTorch path's chunking raised IndexError on zero lines)."""
    monkeypatch.setenv("AXIAL_DEEPLAB_FUSED_ATTENTION", fused)
    axis, span_mode, span, h, w, stride, stride_mode = case
    layer = AxialAttention(
        8,
        8,
        axis=axis,
        num_heads=2,
        span=span,
        span_mode=span_mode,
        stride=stride,
        stride_mode=stride_mode,
    ).train(mode == "train")
    with torch.no_grad():
        one = layer.eval()(torch.randn(1, 8, h, w))
    layer.train(mode == "train")
    x = torch.randn(0, 8, h, w, requires_grad=mode != "eval")
    with torch.set_grad_enabled(mode != "eval"):
        out = layer(x)
    assert out.shape == (0, *one.shape[1:])


def test_relative_table_sizes():
    from axial_deeplab.layers import table_size

    assert table_size(65, "local") == 65  # distances -32..32
    assert table_size(65, "global") == 129  # -64..64, larger ones clipped
    assert table_size(65, "hybrid") == 257  # global on axes up to 129: -128..128
    assert table_size(65, "block") == 321  # blocks of 129 widened by 32: -160..160
    with pytest.raises(ValueError, match="must be odd"):
        table_size(64, "hybrid")
    with pytest.raises(ValueError, match="span_mode must be one of"):
        table_size(65, "window")


@pytest.mark.parametrize("mode", ["hybrid", "local", "global"])
def test_compiled_inference_runs_the_graph_core(monkeypatch, mode):
    """Under torch.compile without autograd the layer runs the shape-generic attention of
    export/ (the eager core's Python plan of blocks would be unrolled), in one graph, with the
    eager layer's outputs; with autograd it keeps the eager core."""
    from axial_deeplab.layers import axial_attention

    calls = []
    graph_core = axial_attention.attend_windowed

    def counted(*args, **kwargs):
        calls.append(kwargs["span_mode"])
        return graph_core(*args, **kwargs)

    monkeypatch.setattr(axial_attention, "attend_windowed", counted)
    layer = make_layer(span=5, span_mode=mode, axis="width").eval()
    x = torch.randn(
        2, layer.in_channels, 7, 23, dtype=DTYPE
    )  # 23 > 2 * 5 - 1: hybrid runs local blocks
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        expected, got = layer(x), compiled(x)
    assert calls == [mode]
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
    calls.clear()
    layer(x)  # eager: the eager core
    assert calls == []


def test_graph_projection_equals_eager():
    """export.tracing.project (one conv per part, for graphs) equals the eager projection."""
    from axial_deeplab.export.tracing import project as graph_project
    from axial_deeplab.layers.axial_attention import project

    gen = torch.Generator().manual_seed(0)
    lines, weight = torch.randn(3, 6, 11, generator=gen), torch.randn(10, 6, generator=gen)
    for shift in (torch.randn(10, generator=gen), None):
        eager = project(lines, weight, shift, (2, 3, 5))
        graph = graph_project(lines, weight, shift, (2, 3, 5))
        assert [t.shape for t in graph] == [(3, 2, 11), (3, 3, 11), (3, 5, 11)]
        for a, b in zip(eager, graph, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    expected = torch.einsum("oc,bcl->bol", weight, lines)  # no shift: the plain product
    torch.testing.assert_close(torch.cat(eager, dim=1), expected, rtol=1e-5, atol=1e-5)
