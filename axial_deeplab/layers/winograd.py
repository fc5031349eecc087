"""Winograd 3x3 convolutions for CPU inference, through NNPACK (part of PyTorch's CPU build).

A stride-1 3x3 convolution computed by Winograd's minimal filtering F(6x6, 3x3) multiplies 8x8
transformed input tiles by transformed 8x8 kernels: 64 multiplies per 36 outputs and input-output
channel pair instead of 324, plus the tiles' transforms (additions). PyTorch sends CPU
convolutions to oneDNN, whose direct algorithm does all 324; NNPACK's kernels ship in the same
wheel (``torch._nnpack_spatial_convolution``). On 2 cores of the AVX2 VM (2026-12-03, one image,
float32) they ran the wide 3x3 convolutions of Axial-SWideRNet-(1,1,1) at 1025 x 2049 2.2-3.2x
faster (e.g. 256 -> 256 channels on 257 x 513: 369 against 1041 ms); below ~128 channels or
~2000 pixels oneDNN was as fast or faster, and with more than one image NNPACK's batched mode was
slower than a call per image.

The price is round-off: the transforms grow float32 errors to ~1e-4 of the output's spread,
against ~1e-6 for the direct algorithm (``tests/test_winograd.py`` bounds it). Predictions only:
``modeling.fusion.inference_model`` swaps these in where they carry most of a model's convolution
work (``pays_off``) and runs that model on NCHW memory, the layout NNPACK reads (a channels-last
map costs a copy each way).

``WinogradConv2d`` steps aside (``nn.Conv2d.forward`` runs) for gradients, other dtypes or
devices, maps under ``MIN_PIXELS``, under compile/export/tracing, dispatch modes and autocast
(``fused_eval.intercepted``), where NNPACK does not initialise (a CPU without AVX2), and when
``AXIAL_DEEPLAB_WINOGRAD=0``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .fused_eval import intercepted

ENV = "AXIAL_DEEPLAB_WINOGRAD"
MIN_CHANNELS = 128  # input and output channels (measured: narrower ones ran as fast on oneDNN)
MIN_PIXELS = 2048  # H x W per call (measured: 256 channels on 17 x 33 ran slower)
_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether NNPACK initialises on this CPU and ``$AXIAL_DEEPLAB_WINOGRAD`` is not ``0``."""
    global _AVAILABLE
    if os.environ.get(ENV, "1") == "0":
        return False
    if _AVAILABLE is None:
        # Private PyTorch functions: a build without them runs the direct convolutions. The
        # first call also initialises NNPACK, which _nnpack_spatial_convolution does not do
        # by itself (it fails on every call until then).
        check = getattr(torch, "_nnpack_available", None)
        _AVAILABLE = bool(
            check is not None and hasattr(torch, "_nnpack_spatial_convolution") and check()
        )
    return _AVAILABLE


def eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3 convolution NNPACK computes by Winograd: stride 1, no
    dilation or groups, zero padding 1, at least ``MIN_CHANNELS`` in and out."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding == (1, 1)
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, padding 1) that computes by NNPACK's Winograd algorithm
    where that applies (see the module's docstring), one image at a time; outputs are NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.applies(x):
            return super().forward(x)
        weight = self.weight.contiguous()
        images = [
            torch._nnpack_spatial_convolution(image, weight, self.bias, [1, 1], [1, 1])
            for image in x.contiguous().split(1)
        ]  # [1, C_out, H, W] each
        return images[0] if len(images) == 1 else torch.cat(images)

    def applies(self, x: torch.Tensor) -> bool:
        """Whether this call may run through NNPACK."""
        if not (type(x) is torch.Tensor and x.dim() == 4 and x.device.type == "cpu"):
            return False
        if x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return False
        if x.shape[2] * x.shape[3] < MIN_PIXELS or x.shape[0] == 0 or intercepted():
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        return available()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        """A ``WinogradConv2d`` sharing ``conv``'s parameters."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            3,
            padding=1,
            bias=conv.bias is not None,
            device="meta",
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new


def use_winograd(model: nn.Module) -> int:
    """Replace every ``eligible`` convolution of ``model`` by a ``WinogradConv2d`` sharing its
    parameters, in place; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child):
                setattr(parent, name, WinogradConv2d.from_conv(child))
                replaced += 1
    return replaced


def winograd_share(model: nn.Module, size: tuple[int, int] = (257, 513)) -> float:
    """The fraction of ``model``'s convolution multiply-adds, on one ``[1, C, H, W]`` image of
    ``size``, in ``eligible`` convolutions on maps of at least ``MIN_PIXELS``. Computed on meta
    tensors (nothing runs); ``C`` is the first convolution's input channels. 0.0 when the
    model cannot run so (the share is a speed estimate, never needed for a correct result)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return 0.0
    work = {"all": 0, "winograd": 0}

    def count(conv: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        macs = output.numel() * conv.weight[0].numel()  # [N, C_out, H, W] x C_in/g kh kw
        work["all"] += macs
        if eligible(conv) and inputs[0].shape[2] * inputs[0].shape[3] >= MIN_PIXELS:
            work["winograd"] += macs

    hooks = [conv.register_forward_hook(count) for conv in convs]
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    image = torch.empty(1, convs[0].in_channels, *size, device="meta")
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (image,))
    except Exception:  # a model that cannot run on meta tensors, or on one such image
        return 0.0
    finally:
        for hook in hooks:
            hook.remove()
    return work["winograd"] / max(work["all"], 1)


def pays_off(model: nn.Module, share: float = 0.5) -> bool:
    """Whether ``use_winograd`` is worth it for ``model`` on this machine: NNPACK is available
    and eligible convolutions carry at least ``share`` of the convolution work. The bar is set
    by two converted deeplab2 models at 1025 x 2049 on 2 cores (2026-12-03): Axial-SWideRNet-(1,1,1)
    (~75% of its convolution work) ran 23.7 s instead of 34 s with NNPACK and NCHW memory, the
    MaX-DeepLab-S backbone (~15%) 8.6-9.8 s instead of 7.5 s."""
    return available() and winograd_share(model) >= share
