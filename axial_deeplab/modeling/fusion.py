"""Inference rewrites of a model that keep its function: batch norms folded into the convolutions
that feed them, and channels-last memory for the convolutions.

In eval mode a batch norm is the per-channel affine map ``y = (x - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``; after a convolution ``x = W * u + b`` it folds into it as
``W' = W s``, ``b' = (b - mean) s + beta``. That removes a pass over every such activation, and
oneDNN (the CPU convolutions) runs faster on channels-last tensors, which it otherwise reorders on
every call: the forward pass of Axial-DeepLab with the MaX-DeepLab-S backbone at 1025 x 2049 (a
converted deeplab2 checkpoint) on 2 CPU cores took 10.6 s instead of 13.3-14.1 s (2026-12-01, the
copy and the model alternating in one process). Outputs change by float round-off only.

``inference_model`` is what the evaluation and inference paths run; training never sees it. They
ask for channels-last memory on the CPU only, where it was measured; on GPUs it pays off mainly
under mixed precision.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..layers.precision import MixedPrecision
from ..layers.winograd import pays_off as winograd_pays_off
from ..layers.winograd import use_winograd
from .backbone.axial_blocks import AxialBlock

# Modules whose ``forward`` applies the named norm to the named conv's output and uses that output
# nowhere else: ``type -> ((conv attribute, norm attribute), ...)``. Inside an ``nn.Sequential`` a
# conv directly followed by a norm is such a pair by construction and needs no entry.
CONV_NORM_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    AxialBlock: (("reduce", "reduce_norm"), ("expand", "expand_norm")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
}


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm`` (applied to ``conv``'s output) is an eval-mode batch norm with running
    statistics over ``conv``'s output channels."""
    return (
        type(conv) is nn.Conv2d
        and isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm))
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.num_features == conv.out_channels
    )


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Make ``conv`` compute ``norm(conv(x))`` (eval mode), in place; ``norm`` is then redundant."""
    scale = torch.rsqrt(norm.running_var + norm.eps)  # [C_out]
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    if norm.bias is not None:
        bias = bias + norm.bias
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))  # [C_out, C_in/g, kh, kw]
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution into it, in place,
    replacing the norm by ``nn.Identity``; returns how many were folded.

    Pairs: a ``Conv2d`` followed by a batch norm inside an ``nn.Sequential``, and the attribute
    pairs of ``CONV_NORM_PAIRS``. Norms in training mode (batch statistics) are left alone.
    """
    folded = 0
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = module._modules[first], module._modules[second]
                if foldable(conv, norm):
                    fold_norm_into_conv(conv, norm)
                    module._modules[second] = nn.Identity()
                    folded += 1
        for conv_name, norm_name in CONV_NORM_PAIRS.get(type(module), ()):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if foldable(conv, norm):
                fold_norm_into_conv(conv, norm)
                setattr(module, norm_name, nn.Identity())
                folded += 1
    return folded


def inference_model(
    model: nn.Module,
    *,
    channels_last: bool = True,
    mixed_precision: bool = False,
    winograd: bool | None = None,
) -> nn.Module:
    """An eval-mode copy of ``model`` for inference: batch norms folded (``fold_batch_norms``),
    parameters frozen and, with ``channels_last``, convolution weights in channels-last memory
    (a model with a ``channels_last`` attribute, as ``PanopticDeepLab``, also runs its
    activations so); with ``mixed_precision``, wrapped in ``layers.precision.MixedPrecision``
    (bfloat16 on CPUs, float16 on GPUs; float32 outputs). ``model`` itself is not changed.

    ``winograd``: compute the wide 3x3 convolutions by NNPACK's Winograd algorithm on the CPU
    (``layers.winograd``; float32 only, round-off ~1e-4 of the outputs' spread); the model then
    runs on NCHW memory whatever ``channels_last`` says. ``None``: where it pays off
    (``winograd.pays_off``), in float32 and only when ``channels_last`` is asked for, which
    the evaluation and inference paths do on the CPU only."""
    fused = copy.deepcopy(model).eval()
    fused.requires_grad_(False)
    fold_batch_norms(fused)
    if winograd is None:
        winograd = channels_last and not mixed_precision and winograd_pays_off(fused)
    if winograd and use_winograd(fused):
        channels_last = False
    if channels_last:
        fused.to(memory_format=torch.channels_last)
        if hasattr(fused, "channels_last"):
            fused.channels_last = True
    return MixedPrecision(fused) if mixed_precision else fused
