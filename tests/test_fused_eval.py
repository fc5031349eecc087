"""The compiled inference path of ``AxialAttention`` (``layers/_fused_eval.c``): against the naive
dense reference of ``attention_reference.py`` on every span mode, against the PyTorch path on
layouts and sizes the kernel handles specially, and where it must step aside."""

from __future__ import annotations

import platform

import pytest
import torch
from attention_reference import NaiveAxialAttention, make_layer
from test_axial_attention import CASES
from torch.utils.flop_counter import FlopCounterMode

from axial_deeplab.layers import AxialAttention, fused_eval

X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_kernel = pytest.mark.skipif(
    not fused_eval.available(), reason="no AVX2/FMA CPU, or the kernel was not built"
)


class Spy:
    """Stands in for the compiled module and counts the kernel's calls."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def supported(self):
        return self.module.supported()

    def attend(self, *args):
        self.calls += 1
        return self.module.attend(*args)


@pytest.fixture
def spy(monkeypatch):
    spy = Spy(fused_eval._fused_eval)
    monkeypatch.setattr(fused_eval, "_fused_eval", spy)
    return spy


def randomize_norms(layer: AxialAttention, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for bn in (layer.qkv_norm, layer.logits_norm, layer.output_norm):
        bn.weight.data.uniform_(0.5, 1.5, generator=gen)
        bn.bias.data.normal_(0.0, 0.2, generator=gen)
        bn.running_mean.normal_(0.0, 0.2, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)


def both_paths(layer, x, threads, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer(x)`` fused and by the PyTorch path, on ``threads`` threads, without autograd."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            monkeypatch.setenv(fused_eval.ENV, "0")
            expected = layer(x)
            monkeypatch.setenv(fused_eval.ENV, "1")
            return layer(x), expected
    finally:
        torch.set_num_threads(previous)


def test_built_here():
    # The suite's machines are x86-64 with AVX2: a missing kernel is a broken install there.
    if not X86:
        pytest.skip(f"the kernel is x86-64 only; this is {platform.machine()}")
    assert fused_eval._fused_eval is not None, "run `make setup` (a C compiler is needed)"


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}{c[2]}-{c[3]}x{c[4]}" for c in CASES])
def test_matches_naive_reference(case, spy):
    axis, span_mode, span, h, w, stride, stride_mode = case
    layer = make_layer(
        axis=axis, span=span, span_mode=span_mode, stride=stride, stride_mode=stride_mode
    ).eval()
    randomize_norms(layer)
    ref = NaiveAxialAttention(layer).eval()  # float64
    x = torch.randn(2, 6, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(x)
        got = layer.float()(x.float())
    assert spy.calls >= 1
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)


# (C_in, C_out, heads, N, H, W, axis, span, span_mode, channels_last, threads): odd lengths (a
# phantom query), lines of two images in one group of 8, value widths that are not a multiple
# of 4, strided lines (width axis, channels-last), key windows, more threads than tasks.
SHAPES = [
    (16, 32, 4, 2, 13, 29, "height", 65, "global", False, 1),
    (16, 32, 4, 2, 13, 29, "width", 65, "global", False, 2),
    (8, 24, 4, 1, 11, 19, "width", 7, "local", False, 1),  # dk 3, dv 6
    (8, 48, 2, 3, 10, 6, "height", 5, "block", True, 2),  # dk 12, dv 24, channels-last
    (12, 16, 8, 1, 1, 9, "width", 3, "hybrid", False, 3),  # H = 1: one line
    (12, 16, 8, 1, 9, 1, "width", 3, "global", True, 1),  # L = 1
    (8, 16, 2, 2, 40, 5, "height", 9, "local", False, 2),  # banded key windows
]


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{s[6]}-{s[8]}-{s[4]}x{s[5]}" for s in SHAPES])
def test_matches_pytorch_path(shape, spy, monkeypatch):
    c_in, c_out, heads, n, h, w, axis, span, span_mode, channels_last, threads = shape
    torch.manual_seed(0)
    layer = AxialAttention(c_in, c_out, axis=axis, num_heads=heads, span=span, span_mode=span_mode)
    randomize_norms(layer.eval())
    x = torch.randn(n, c_in, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, expected = both_paths(layer, x, threads, monkeypatch)
    assert spy.calls >= 1
    scale = expected.abs().max().clamp(min=1)
    torch.testing.assert_close(got, expected, atol=2e-6 * scale, rtol=0)


def _random_case(seed: int) -> tuple[AxialAttention, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(seed)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    heads, dk = pick(1, 2, 4, 8), pick(1, 2, 3, 8, 9, 16)
    span_mode, span = pick("global", "local", "hybrid", "block"), pick(1, 3, 5, 9, 65)
    if span_mode == "global":
        span = pick(2, 4, 65)
    torch.manual_seed(seed)
    layer = AxialAttention(
        pick(3, 8, 16), 2 * heads * dk, axis=pick("height", "width"), num_heads=heads,
        span=span, span_mode=span_mode, stride=pick(1, 1, 2), stride_mode=pick("subsample", "avgpool"),
    )  # fmt: skip
    randomize_norms(layer.eval(), seed)
    n, h, w = (
        pick(1, 2, 3),
        int(torch.randint(1, 41, (1,), generator=gen)),
        int(torch.randint(1, 41, (1,), generator=gen)),
    )
    x = torch.randn(n, layer.in_channels, h + 2, w + 1, generator=gen)
    layout = pick("contiguous", "channels_last", "slice")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x = x[:, :, 1 : h + 1, :w] if layout == "slice" else x[:, :, :h, :w].contiguous()
    return layer, x, pick(1, 2)


@needs_kernel
@pytest.mark.parametrize("seed", range(40))
def test_random_layers_match_pytorch_path(seed, spy, monkeypatch):
    # Random widths, heads, span modes, strides, sizes (1-40) and layouts (contiguous,
    # channels-last, a strided slice), 1 or 2 threads, against the PyTorch path.
    layer, x, threads = _random_case(seed)
    got, expected = both_paths(layer, x, threads, monkeypatch)
    assert spy.calls >= 1
    scale = expected.abs().max().clamp(min=1)
    torch.testing.assert_close(
        got,
        expected,
        atol=2e-6 * scale,
        rtol=0,
        msg=lambda m: f"{layer}, {list(x.shape)}, {x.stride()}: {m}",
    )


@needs_kernel
@pytest.mark.parametrize("axis", ["height", "width"])
def test_nan_reaches_every_query_that_sees_it(axis, spy, monkeypatch):
    # A NaN pixel (a diverged model, a corrupt input) gives NaN in every output whose window
    # holds it, never a finite number from a softmax that skipped it. Beyond those the two paths
    # differ by construction: the PyTorch path's dense masked block spreads it (0 * NaN) along
    # the whole line, the kernel to the paired query next to the window. Nowhere a NaN the
    # PyTorch path does not also give; everywhere else the same numbers.
    torch.manual_seed(0)
    layer = AxialAttention(8, 16, axis=axis, num_heads=2, span=5, span_mode="local")
    randomize_norms(layer.eval())
    x = torch.randn(2, 8, 11, 13)
    x[1, 3, 4, 6] = float("nan")
    got, expected = both_paths(layer, x, 1, monkeypatch)
    assert spy.calls == 1
    window = got[1, :, 2:7, 6] if axis == "height" else got[1, :, 4, 4:9]  # queries 4 +- 2
    assert torch.isnan(window).all()
    assert not (torch.isnan(got) & ~torch.isnan(expected)).any()
    finite = ~torch.isnan(got) & ~torch.isnan(expected)
    assert finite.float().mean() > 0.9
    torch.testing.assert_close(got[finite], expected[finite], atol=2e-6, rtol=1e-5)

    # A NaN logit with finite values (here the key table's entry for distance +2): the queries
    # with a key 2 ahead, i.e. all but the last two along every line, in both paths.
    x = torch.randn(2, 8, 11, 13)
    layer.key_rel.data[0, 4] = float("nan")
    got, expected = both_paths(layer, x, 1, monkeypatch)
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    along = got.transpose(2, 3) if axis == "width" else got  # [N, C, L, lines]
    assert torch.isnan(along[:, :, :-2]).all() and not torch.isnan(along[:, :, -2:]).any()


def _eval_layer() -> tuple[AxialAttention, torch.Tensor]:
    torch.manual_seed(0)
    layer = AxialAttention(8, 16, axis="height", num_heads=2, span=5, span_mode="local").eval()
    randomize_norms(layer)
    return layer, torch.randn(1, 8, 7, 6)


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@needs_kernel
def test_steps_aside(spy, monkeypatch, one_thread):
    layer, x = _eval_layer()
    torch.set_num_threads(1)  # (one kernel call per layer call)
    with torch.no_grad():
        layer(x)
    assert spy.calls == 1
    layer(x)  # gradients to record (the parameters): the PyTorch path
    with torch.no_grad():
        layer.train()(x)  # batch statistics
        layer.eval()
        with FlopCounterMode(display=False) as counter:  # a dispatch mode sees every matmul
            layer(x)
        assert counter.get_total_flops() > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        monkeypatch.setenv(fused_eval.ENV, "0")
        layer(x)
    assert spy.calls == 1
    monkeypatch.delenv(fused_eval.ENV)
    with torch.inference_mode():
        layer(x)
    assert spy.calls == 2


@needs_kernel
def test_float64_and_requires_grad_input_step_aside(spy):
    layer, x = _eval_layer()
    layer.requires_grad_(False)
    out = layer(x.requires_grad_())  # the input wants a gradient
    assert out.requires_grad and spy.calls == 0
    with torch.no_grad():
        layer.double()(x.double())
    assert spy.calls == 0


def test_thread_pool_is_per_process(monkeypatch):
    # Worker threads do not survive a fork: a forked process (a DataLoader worker, say) must
    # start its own pool rather than queue work for the parent's threads and wait forever.
    # (Not run in a real fork: torch's own OpenMP hangs there with more than one thread.)
    pool = fused_eval._pool(2)
    assert fused_eval._pool(2) is pool
    monkeypatch.setattr(fused_eval.os, "getpid", lambda: -1)
    assert fused_eval._pool(2) is not pool
