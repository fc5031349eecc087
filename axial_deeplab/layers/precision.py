"""Mixed precision for inference: the network's convolutions and matmuls in a 16-bit float, the
parts that need float32 kept there.

``MixedPrecision`` runs a model under ``torch.autocast``: bfloat16 on CPUs (a CPU with
AVX512-BF16 or AMX multiplies bfloat16 about twice as fast as float32), float16 on GPUs. Parts
whose precision matters call ``autocast_enabled`` and run in float32: the axial attention's
core (logits, softmax, logit batch norm, value products: ``layers.axial_attention``), and the
heads' final 1x1 convolutions (``modeling.heads``), so that offsets of hundreds of pixels keep
sub-pixel precision.
The model's outputs come back in float32, so post-processing is the same code. Training's
``SOLVER.AMP`` autocasts to the same ``autocast_dtype``.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda"; False for devices without
    autocast, e.g. "meta")."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_dtype(device_type: str) -> torch.dtype:
    """The 16-bit float of ``MixedPrecision`` on ``device_type``: float16 on GPUs, else bfloat16
    (CPUs have no fast float16, and bfloat16 keeps float32's range)."""
    return torch.float16 if device_type == "cuda" else torch.bfloat16


def autocast_name(device_type: str) -> str:
    """``"bfloat16"`` or ``"float16"``: ``autocast_dtype`` in words, for logs."""
    return str(autocast_dtype(device_type)).removeprefix("torch.")


@functools.cache  # a fact of the machine; asked on every forward of the detectron2 plugin
def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); without it
    bfloat16 is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


class MixedPrecision(nn.Module):
    """``model`` run under autocast (``autocast_dtype`` of the input's device), its outputs (a
    tensor, or a dict of tensors) returned in float32.

    ``model`` is the wrapped module, so the state dict gains a ``model.`` prefix: wrap the copy
    used for inference (``modeling.fusion.inference_model(..., mixed_precision=True)``), not the
    model that is trained or saved.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """``model(images)`` under autocast; float outputs back to float32."""
        return autocast_call(self.model, images)


def autocast_call(function, images: torch.Tensor):
    """``function(images)`` under autocast (``autocast_dtype`` of the images' device), its
    outputs (a tensor, or a dict of tensors) back in float32."""
    device = images.device.type
    with torch.autocast(device, dtype=autocast_dtype(device)):
        outputs = function(images)
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return {key: value.float() for key, value in outputs.items()}


def warn_if_slow(device: torch.device) -> None:
    """Warn when mixed precision is asked for on a CPU that emulates bfloat16 (slower than
    float32 there, and less precise)."""
    if device.type == "cpu" and not cpu_has_fast_bfloat16():
        warnings.warn(
            "TEST.AMP: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so mixed "
            "precision runs emulated, slower than float32; set TEST.AMP False",
            stacklevel=3,
        )
