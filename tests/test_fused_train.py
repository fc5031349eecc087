"""The compiled training path of ``AxialAttention`` (``layers/_fused_train.c``), which runs on
float32 CPU tensors in training and in eval mode with gradients to record: a whole step (output,
every gradient, running statistics) against the same step with the kernel off and against the
naive float64 reference, the output norm folded or not, the lane packing and the thread split,
and where it must step aside. The compiled passes alone: ``test_fused_train_core.py``."""

from __future__ import annotations

import copy
import platform

import pytest
import torch
from attention_reference import NaiveAxialAttention, make_layer
from test_axial_attention import CASES
from test_fused_eval import Spy as EvalSpy
from test_fused_eval import randomize_norms
from torch.utils.flop_counter import FlopCounterMode

from axial_deeplab.layers import AxialAttention, fused_eval, fused_train

X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_kernel = pytest.mark.skipif(
    not fused_train.available(), reason="no AVX2/FMA CPU, or the kernel was not built"
)
CASE_IDS = [f"{c[0]}-{c[1]}{c[2]}-{c[3]}x{c[4]}" for c in CASES]


class Spy:
    """Stands in for the compiled module; counts the attention's forward and backward calls and
    the logit statistics' calls (forward or backward) apart."""

    def __init__(self, module):
        self.module, self.forward, self.backward, self.moments = module, 0, 0, 0

    def supported(self):
        return self.module.supported()

    def call(self, *args):
        mode = args[-1]
        if mode == fused_train.ATTEND:
            self.forward += 1
        elif mode == fused_train.ATTEND_BACKWARD:
            self.backward += 1
        else:
            self.moments += 1
        return self.module.call(*args)


@pytest.fixture
def spy(monkeypatch):
    spy = Spy(fused_train._fused_train)
    monkeypatch.setattr(fused_train, "_fused_train", spy)
    return spy


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def step(layer: AxialAttention, x: torch.Tensor, seed: int = 7) -> dict[str, torch.Tensor]:
    """One forward and backward pass of ``layer`` on ``x`` with a random output gradient: the
    output, the input's gradient, every parameter's gradient and every buffer afterwards."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)  # (a leaf with the layout and strides of x)
    out = layer(x)
    grad = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    out.backward(grad.to(out.dtype))  # (the same numbers whatever the layer's dtype)
    result = {"output": out.detach(), "input grad": x.grad}
    for name, param in layer.named_parameters():
        result[f"{name} grad"] = torch.zeros_like(param) if param.grad is None else param.grad
    for name, buf in layer.named_buffers():
        result[name] = buf.detach().clone()
    return result


def both_paths(layer, x, monkeypatch, spy) -> tuple[dict, dict]:
    """``step`` by the kernel and by the PyTorch path, from the same parameters and buffers
    (a train step moves the running statistics)."""
    state = copy.deepcopy(layer.state_dict())
    spy.forward = spy.backward = 0
    monkeypatch.setenv(fused_eval.ENV, "0")
    expected = step(layer, x)
    assert (spy.forward, spy.backward) == (0, 0)
    layer.load_state_dict(state)
    monkeypatch.setenv(fused_eval.ENV, "1")
    got = step(layer, x)
    assert spy.forward >= 1 and spy.backward >= 1
    layer.load_state_dict(state)
    return got, expected


def assert_all_close(got: dict, expected: dict, rel: float = 1e-4, context: str = "") -> None:
    """Each tensor within ``rel`` of the largest magnitude of its expected value (float32
    round-off on sums of many terms is relative to their scale, not to each element)."""
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        have = got[name]
        assert have.shape == want.shape, name
        if not want.is_floating_point():  # num_batches_tracked
            assert torch.equal(have, want), name
            continue
        scale = float(want.abs().max())
        torch.testing.assert_close(
            have.double(),
            want.double(),
            atol=rel * scale + 1e-7,
            rtol=0,
            msg=lambda m, name=name: f"{context} {name}: {m}",
        )


def test_built_here():
    # The suite's machines are x86-64 with AVX2: a missing kernel is a broken install there.
    if not X86:
        pytest.skip(f"the kernel is x86-64 only; this is {platform.machine()}")
    assert fused_train._fused_train is not None, "run `make setup` (a C compiler is needed)"


@needs_kernel
@pytest.mark.parametrize("mode", ["train", "eval-grad"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_step_matches_pytorch_path(case, mode, spy, monkeypatch):
    # Every span mode and stride; in train mode (batch statistics, the running statistics
    # move) and in eval mode with gradients (the inference kernel steps aside, this one runs).
    axis, span_mode, span, h, w, stride, stride_mode = case
    layer = make_layer(
        axis=axis, span=span, span_mode=span_mode, stride=stride, stride_mode=stride_mode
    ).float()
    layer.train(mode == "train")
    x = torch.randn(2, 6, h, w, generator=torch.Generator().manual_seed(3))
    got, expected = both_paths(layer, x, monkeypatch, spy)
    assert_all_close(got, expected)
    # The logit norm's shift cancels in the softmax: its gradient is exactly zero either way.
    assert not got["logits_norm.bias grad"].any()
    assert not expected["logits_norm.bias grad"].any()
    if mode == "train":  # the running statistics did move (and agree, above)
        assert int(got["logits_norm.num_batches_tracked"]) == 1


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_train_step_close_to_naive_reference(case, spy):
    # The float32 kernel against the spec in float64: output, every gradient, the running
    # statistics.
    axis, span_mode, span, h, w, stride, stride_mode = case
    layer = make_layer(
        axis=axis, span=span, span_mode=span_mode, stride=stride, stride_mode=stride_mode
    )
    ref = NaiveAxialAttention(layer).train()  # float64 copies of the parameters
    x = torch.randn(2, 6, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = step(ref, x)
    got = step(layer.float().train(), x.float())
    assert spy.forward >= 1 and spy.backward >= 1
    # (the reference also lists the layer's own tensors, as cfg.*: left out)
    assert_all_close(got, {n: expected[n] for n in got}, rel=2e-4)


# (C_in, C_out, heads, N, H, W, axis, span, span_mode, layout): 1, 3, 9, 16 and 17 lines in
# all (N x the other axis; 8 to a group, the rest padded), L = 1, H = 1 and W = 1,
# channels-last and sliced inputs, dv of 2 and 6.
SHAPES = [
    (8, 16, 2, 1, 9, 1, "height", 5, "local", "contiguous"),  # 1 line
    (8, 12, 2, 3, 1, 7, "width", 3, "local", "contiguous"),  # 3 lines, H = 1, dv 6
    (8, 16, 2, 3, 10, 3, "height", 3, "block", "channels_last"),  # 9 lines
    (6, 4, 2, 2, 8, 5, "width", 4, "global", "sliced"),  # 16 lines, dk 1, dv 2, clipped
    (6, 24, 4, 1, 17, 6, "width", 65, "global", "sliced"),  # 17 lines
    (8, 16, 2, 2, 1, 5, "height", 65, "global", "contiguous"),  # L = 1
    (8, 16, 4, 3, 6, 1, "width", 3, "hybrid", "channels_last"),  # L = 1, W = 1
    (8, 8, 1, 2, 40, 3, "height", 9, "local", "contiguous"),  # banded, L = 40
]
SHAPE_IDS = [f"{s[6]}-{s[8]}-{s[3]}x{s[4]}x{s[5]}-{s[9]}" for s in SHAPES]


def shaped_case(shape, seed: int = 0) -> tuple[AxialAttention, torch.Tensor]:
    c_in, c_out, heads, n, h, w, axis, span, span_mode, layout = shape
    torch.manual_seed(seed)
    layer = AxialAttention(c_in, c_out, axis=axis, num_heads=heads, span=span, span_mode=span_mode)
    randomize_norms(layer, seed)
    x = torch.randn(n, c_in, h + 1, w + 2)
    if layout == "sliced":
        x = x[:, :, 1:, 1 : w + 1]  # dense in no layout
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
        return layer, x
    layout = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return layer, x[:, :, :h, :w].contiguous(memory_format=layout)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["train", "eval-grad"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_shapes_match_pytorch_path(shape, mode, threads, spy, monkeypatch, restore_threads):
    layer, x = shaped_case(shape)
    torch.set_num_threads(threads)
    got, expected = both_paths(layer.train(mode == "train"), x, monkeypatch, spy)
    length = x.shape[2 if layer.axis == "height" else 3]
    if mode == "train" and length == 1:
        # One key per query: the value term is the table's entry for distance 0 on every line,
        # which the output norm's batch statistics subtract, and the values' shift likewise;
        # the values reach the output norm already standardised by the projection's, whose
        # scale then has no effect either. These three gradients are zero in exact arithmetic
        # (1e-12 in float64), round-off in float32 by either path: only their smallness is
        # compared.
        bound = 1e-3 * float(expected["input grad"].abs().max())
        for name in ("value_rel grad", "qkv_norm.bias grad", "qkv_norm.weight grad"):
            assert float(got.pop(name).abs().max()) < bound, name
            assert float(expected.pop(name).abs().max()) < bound, name
    assert_all_close(got, expected, context=f"{layer}, {list(x.shape)}, {x.stride()}")


@needs_kernel
@pytest.mark.parametrize("index", [0, 2, 4], ids=[SHAPE_IDS[i] for i in (0, 2, 4)])
def test_thread_counts_agree(index, spy, restore_threads):
    # The tasks split over 1, 2 or 3 threads (each with its own table-gradient buffer, summed):
    # the same step within round-off. One line and 2 heads: more threads than tasks.
    shape = SHAPES[index]
    layer, x = shaped_case(shape)
    state = copy.deepcopy(layer.state_dict())
    results = {}
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        layer.load_state_dict(state)
        spy.forward = 0
        results[threads] = step(layer.train(), x)
        tasks = -(-x.shape[0] * x.shape[3 if layer.axis == "height" else 2] // 8) * layer.num_heads
        assert spy.forward == min(threads, tasks)
    for threads in (2, 3):
        assert_all_close(results[threads], results[1], context=f"{threads} threads")


@needs_kernel
def test_thread_table_gradients_are_all_summed(spy, restore_threads):
    # Many tasks over 3 threads: a buffer per thread, each holding part of the table gradients.
    torch.set_num_threads(1)
    layer, x = shaped_case((8, 16, 4, 4, 6, 7, "height", 3, "local", "contiguous"))
    state = copy.deepcopy(layer.state_dict())
    one = step(layer.train(), x)
    torch.set_num_threads(3)
    layer.load_state_dict(state)
    spy.backward = 0
    three = step(layer, x)
    assert spy.backward == 3  # 4 x 7 lines: 4 groups of 8, x 4 heads = 16 tasks
    assert_all_close(three, one, context="3 threads")


@needs_kernel
def test_calls_and_steps_aside(spy, monkeypatch, restore_threads):
    torch.set_num_threads(1)  # (one kernel call per pass)
    torch.manual_seed(0)
    layer = AxialAttention(8, 16, axis="height", num_heads=2, span=5, span_mode="local")
    randomize_norms(layer)
    x = torch.randn(2, 8, 7, 6)
    layer.train()(x).sum().backward()  # training: forward and backward compiled
    assert (spy.forward, spy.backward) == (1, 1)
    layer.eval()(x).sum().backward()  # eval mode with gradients to record: this kernel too
    assert (spy.forward, spy.backward) == (2, 2)

    # Eval without autograd: the inference kernel runs instead.
    eval_spy = EvalSpy(fused_eval._fused_eval)
    monkeypatch.setattr(fused_eval, "_fused_eval", eval_spy)
    with torch.no_grad():
        layer(x)
    assert eval_spy.calls == 1 and (spy.forward, spy.backward) == (2, 2)

    layer.train()
    with FlopCounterMode(display=False) as counter:  # a dispatch mode sees every matmul
        layer(x).sum().backward()
    assert counter.get_total_flops() > 0
    layer.double()(x.double()).sum().backward()  # float64
    layer.float()
    monkeypatch.setenv(fused_eval.ENV, "0")
    layer(x).sum().backward()
    assert (spy.forward, spy.backward) == (2, 2)
    monkeypatch.delenv(fused_eval.ENV)
    layer(x).sum().backward()
    assert (spy.forward, spy.backward) == (3, 3)


@needs_kernel
@pytest.mark.parametrize("axis", ["height", "width"])
def test_nan_reaches_every_query_that_sees_it(axis, spy, monkeypatch):
    # Eval mode with gradients (in train mode one NaN fills the batch statistics, so every
    # output is NaN by either path). A NaN pixel: NaN in every output whose window holds it, and
    # at most the paired query next to the window besides. The PyTorch path's dense masked
    # block spreads it (0 * NaN) along the whole line, so the kernel gives a subset of its NaNs;
    # elsewhere the same numbers.
    torch.manual_seed(0)
    layer = AxialAttention(8, 16, axis=axis, num_heads=2, span=5, span_mode="local")
    randomize_norms(layer.eval())
    x = torch.randn(2, 8, 11, 13)
    x[1, 3, 4, 6] = float("nan")
    got, expected = both_paths(layer, x, monkeypatch, spy)
    got, expected = got["output"], expected["output"]
    window = torch.zeros_like(got, dtype=torch.bool)
    if axis == "height":
        window[1, :, 2:7, 6] = True  # queries 4 +- 2 along the column
    else:
        window[1, :, 4, 4:9] = True
    # Queries run in pairs (o, o + 1) over the union of their windows, where a weight of zero
    # times the NaN value gives NaN too: the query paired with the window's edge (here 7, paired
    # with 6) may be NaN as well, nothing further.
    reach = torch.zeros_like(window)
    if axis == "height":
        reach[1, :, 2:8, 6] = True
    else:
        reach[1, :, 4, 4:10] = True
    nan = torch.isnan(got)
    assert bool(nan[window].all()) and not bool(nan[~reach].any())
    assert not (torch.isnan(got) & ~torch.isnan(expected)).any()
    finite = ~torch.isnan(expected)
    torch.testing.assert_close(got[finite], expected[finite], atol=1e-5, rtol=1e-5)

    # A NaN table entry (the key table at distance +2): the same NaNs as the PyTorch path.
    x = torch.randn(2, 8, 11, 13)
    layer.key_rel.data[0, 4] = float("nan")
    got, expected = both_paths(layer, x, monkeypatch, spy)
    assert torch.isnan(expected["output"]).any()
    assert torch.equal(torch.isnan(got["output"]), torch.isnan(expected["output"]))


@needs_kernel
@pytest.mark.parametrize("norm", ["folded", "not-affine", "offset"])
def test_output_norm(norm, spy, monkeypatch):
    # The output batch norm runs inside the compiled passes when it is an affine BatchNorm2d
    # (batch statistics summed as the outputs are written, its backward handed to the kernel),
    # else as a module on the kernel's output: both match the PyTorch path. "offset": value-table
    # entries far from zero give outputs whose batch mean is ~100 times their spread, where sums
    # of squares would lose the variance to cancellation (the kernel combines centred sums).
    layer, x = shaped_case((8, 16, 2, 3, 10, 9, "width", 5, "local", "contiguous"))
    if norm == "not-affine":
        layer.output_norm = torch.nn.BatchNorm2d(32, affine=False)
    if norm == "offset":
        layer.value_rel.data += 30.0
    got, expected = both_paths(layer.train(), x, monkeypatch, spy)
    assert_all_close(got, expected)


@needs_kernel
@pytest.mark.parametrize("length", [256, 257], ids=["dense-sums", "per-pair-sums"])
def test_long_global_axis(length, spy, monkeypatch):
    # Global attention sums its gradients over the kept W and gA up to 256 positions
    # (_fused_train.c, DENSE_MAX) and per pair of queries beyond: both match the PyTorch path.
    layer, x = shaped_case((8, 16, 2, 1, length, 2, "height", 513, "global", "contiguous"))
    got, expected = both_paths(layer.train(), x, monkeypatch, spy)
    assert_all_close(got, expected)
