"""``layers.winograd``: NNPACK's Winograd 3x3 convolution against a float64 direct one, where it
must step aside, the work share that decides whether ``inference_model`` uses it, and that
decision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from axial_deeplab.layers import winograd
from axial_deeplab.layers.winograd import WinogradConv2d
from axial_deeplab.modeling.fusion import inference_model

needs_nnpack = pytest.mark.skipif(not winograd.available(), reason="NNPACK does not run here")


@pytest.fixture
def calls(monkeypatch) -> list:
    """Counts the NNPACK calls (each image is one)."""
    seen: list = []
    nnpack = torch._nnpack_spatial_convolution

    def counting(*args):
        seen.append(args[0].shape)
        return nnpack(*args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counting)
    return seen


def make_conv(c_in: int, c_out: int, bias: bool = True, seed: int = 0) -> WinogradConv2d:
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
    conv.weight.data.normal_(0.0, (c_in * 9) ** -0.5, generator=gen)
    if bias:
        conv.bias.data.normal_(0.0, 1.0, generator=gen)
    return WinogradConv2d.from_conv(conv.requires_grad_(False))


def direct64(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=1)


@needs_nnpack
@pytest.mark.parametrize(
    "n, c_in, c_out, h, w, bias, layout",
    [
        (1, 128, 128, 64, 64, True, "nchw"),
        (1, 192, 128, 45, 47, False, "nchw"),  # sizes off the 6x6 output tiles
        (2, 128, 160, 33, 65, True, "nchw"),  # two images: a call each
        (1, 128, 128, 50, 41, True, "channels_last"),
        (3, 144, 128, 46, 46, True, "sliced"),  # a non-contiguous view
    ],
)
def test_matches_direct_convolution(calls, n, c_in, c_out, h, w, bias, layout):
    conv = make_conv(c_in, c_out, bias)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, c_in + (8 if layout == "sliced" else 0), h, w, generator=gen)
    if layout == "sliced":
        x = x[:, 8:]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    expected = direct64(conv, x)
    with torch.no_grad():
        y = conv(x)
    assert len(calls) == n and y.dtype == torch.float32 and y.shape == expected.shape
    error = (y.double() - expected).abs().max().item()
    spread = expected.std().item()
    # F(6x6, 3x3) in float32: measured 2-6e-5 of the spread here; oneDNN's direct algorithm
    # ~1e-6. The bound allows 10x the Winograd error seen, and fails on any wrong tap or tile.
    assert error <= 5e-4 * spread, (error, spread)
    direct_error = (F.conv2d(x, conv.weight, conv.bias, padding=1).double() - expected).abs().max()
    assert direct_error <= error  # the direct algorithm is the more exact: NNPACK did run


@needs_nnpack
def test_nan_stays_in_its_neighbourhood(calls):
    conv = make_conv(128, 128)
    x = torch.randn(1, 128, 48, 48)
    x[0, 5, 20, 30] = float("nan")
    with torch.no_grad():
        y = conv(x)
    assert calls
    nan = y.isnan().any(dim=1)[0]  # [H, W]
    # Winograd's tiles can spread a NaN over its whole 6x6 output tile (plus the 3x3 reach), not
    # beyond: anything farther would be a mixed-up tile.
    ys, xs = nan.nonzero(as_tuple=True)
    assert nan[19:22, 29:32].all()
    assert (ys - 20).abs().max() <= 7 and (xs - 30).abs().max() <= 7


@needs_nnpack
@pytest.mark.parametrize(
    "case",
    ["gradient", "float64", "small map", "switched off", "flop counter", "export", "empty"],
)
def test_steps_aside(calls, monkeypatch, case):
    conv = make_conv(128, 128)
    x = torch.randn(1, 128, 48, 48)
    run = conv
    if case == "gradient":
        conv.weight.requires_grad_(True)
    elif case == "float64":
        conv = conv.double()
        x = x.double()
        run = conv
    elif case == "small map":
        x = x[:, :, :40, :40]  # 1600 < MIN_PIXELS
    elif case == "switched off":
        monkeypatch.setenv(winograd.ENV, "0")
    elif case == "empty":
        x = x[:0]
    if case == "flop counter":
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            y = run(x)
        assert counter.get_total_flops() == 2 * y.numel() * 128 * 9  # seen as a direct conv
    elif case == "export":
        program = torch.export.export(run, (x,))
        y = program.module()(x)
        assert "nnpack" not in str(program.graph)
    else:
        with torch.set_grad_enabled(case == "gradient"):
            y = run(x)
    assert calls == []
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    if case == "gradient":
        y.sum().backward()
        assert conv.weight.grad is not None


def test_unavailable_without_nnpack(monkeypatch):
    """A PyTorch build without the private NNPACK functions: no Winograd, no error."""
    monkeypatch.setattr(winograd, "_AVAILABLE", None)
    monkeypatch.delattr(torch, "_nnpack_available")
    assert not winograd.available()
    model = inference_model(toy())
    assert not any(type(m) is WinogradConv2d for m in model.modules())


def test_eligible_convolutions():
    assert winograd.eligible(nn.Conv2d(128, 256, 3, padding=1))
    assert winograd.eligible(nn.Conv2d(128, 128, 3, padding=1, bias=False))
    for conv in [
        nn.Conv2d(64, 128, 3, padding=1),  # narrow
        nn.Conv2d(128, 64, 3, padding=1),
        nn.Conv2d(128, 128, 3, padding=1, stride=2),
        nn.Conv2d(128, 128, 3, padding=2, dilation=2),
        nn.Conv2d(128, 128, 3, padding=1, groups=2),
        nn.Conv2d(128, 128, 3, padding=0),
        nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(128, 128, 1),
        nn.Conv2d(128, 128, 5, padding=2),
    ]:
        assert not winograd.eligible(conv), conv


def toy(c_in: int = 3, width: int = 128) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1),  # narrow input: not eligible
        nn.BatchNorm2d(width).eval(),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),  # eligible
        nn.ReLU(),
        nn.Conv2d(width, width, 1),  # 1x1: not eligible
    )


def test_work_share_by_hand():
    model = toy()
    # Per output pixel: 3*9*128 + 128*9*128 + 128*128 multiply-adds; the middle one is eligible.
    share = 128 * 9 * 128 / (3 * 9 * 128 + 128 * 9 * 128 + 128 * 128)
    assert winograd.winograd_share(model, (64, 64)) == pytest.approx(share, rel=1e-12)
    assert winograd.winograd_share(model, (40, 40)) == 0.0  # maps under MIN_PIXELS
    assert winograd.winograd_share(toy(width=64), (64, 64)) == 0.0
    assert winograd.winograd_share(nn.Linear(3, 3)) == 0.0  # no convolutions
    assert all(p.device.type == "cpu" for p in model.parameters())  # meta only inside


def test_use_winograd_shares_parameters():
    model = toy()
    weight = model[3].weight
    assert winograd.use_winograd(model) == 1
    assert type(model[3]) is WinogradConv2d and model[3].weight is weight
    assert type(model[0]) is nn.Conv2d and type(model[5]) is nn.Conv2d
    assert set(model.state_dict()) == set(toy().state_dict())


@needs_nnpack
def test_inference_model_decides(calls, monkeypatch):
    torch.manual_seed(0)
    model = toy().eval()
    x = torch.randn(1, 3, 64, 64) * 50
    fast = inference_model(model)  # the middle conv is ~88% of the work: Winograd, NCHW
    assert sum(type(m) is WinogradConv2d for m in fast.modules()) == 1
    assert fast[0].weight.is_contiguous()  # not channels-last
    plain = inference_model(model, winograd=False)
    assert not any(type(m) is WinogradConv2d for m in plain.modules())
    assert plain[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, y = plain(x), fast(x)
    assert len(calls) == 1
    torch.testing.assert_close(y, expected, rtol=0, atol=5e-4 * expected.std().item())
    for kwargs in [dict(mixed_precision=True), dict(channels_last=False)]:  # GPU callers
        model_copy = inference_model(model, **kwargs)
        assert not any(type(m) is WinogradConv2d for m in model_copy.modules()), kwargs
    narrow = inference_model(toy(width=64))
    assert not any(type(m) is WinogradConv2d for m in narrow.modules())
    monkeypatch.setenv(winograd.ENV, "0")
    assert not any(type(m) is WinogradConv2d for m in inference_model(model).modules())
