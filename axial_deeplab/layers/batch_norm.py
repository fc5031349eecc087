"""Batch-norm bookkeeping for layers that fold a ``nn.BatchNorm*`` into their own computation.

The layer computes the batch mean/variance itself (often analytically) and normalizes by scaling
small operands; these helpers keep the module's running statistics exactly as ``nn.BatchNorm`` would
and make ``SyncBatchNorm`` modules average their statistics over the process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def uses_batch_stats(bn: _BatchNorm) -> bool:
    """Whether ``bn`` normalizes by batch statistics (train mode, or no running statistics)."""
    return bn.training or bn.running_var is None


def running_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode ``bn`` as ``x * scale + shift``; ``scale, shift [C]``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def sync_moments(
    bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch ``mean, var`` over the process group for a ``SyncBatchNorm`` (else unchanged).

    Differentiable: the all-reduce passes gradients back to every rank, as ``SyncBatchNorm`` does.
    """
    if not isinstance(bn, nn.SyncBatchNorm) or not dist.is_available() or not dist.is_initialized():
        return mean, var
    group = bn.process_group or dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return mean, var
    from torch.distributed.nn.functional import all_reduce

    local = torch.stack([mean * count, (var + mean * mean) * count])  # [2, C]
    counts = torch.full_like(mean[:1], float(count))
    total = all_reduce(torch.cat([local.flatten(), counts]), group=group)
    n = total[-1]
    mean = total[: mean.numel()] / n
    return mean, total[mean.numel() : -1] / n - mean * mean


def update_running_stats(bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Update ``bn``'s running statistics from a batch ``mean`` and biased ``var`` of ``count``
    elements per channel, as ``nn.BatchNorm`` does in train mode (unbiased variance, momentum or a
    cumulative average when ``momentum`` is None)."""
    if not bn.training or not bn.track_running_stats:
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum
        if momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)


def set_batch_norm(module: nn.Module, *, eps: float, momentum: float | None) -> nn.Module:
    """Give every batch norm in ``module`` this ``eps`` and running-stat ``momentum`` (PyTorch's
    convention: Keras' momentum 0.99 is 0.01 here); returns ``module``."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eps, m.momentum = eps, momentum
    return module


def _replace_batch_norms(module: nn.Module, make) -> nn.Module:
    """``module`` with every batch norm ``bn`` that ``make(bn)`` maps to a new module replaced by
    it (parameters and statistics copied); ``make`` returns None to keep ``bn``."""
    new = make(module) if isinstance(module, _BatchNorm) else None
    if new is not None:
        with torch.no_grad():
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _replace_batch_norms(child, make))
    return module


def batch_norm_for_devices(module: nn.Module, *, distributed: bool, device_type: str) -> nn.Module:
    """The batch norms a run needs, in place where possible; returns the module to use.

    - distributed on GPUs: every batch norm becomes a ``SyncBatchNorm`` (statistics over all GPUs,
      as in the papers' and deeplab2's training), the backbone's included;
    - distributed on CPUs: ``SyncBatchNorm`` cannot run there (PyTorch supports it on GPUs only),
      so any ``SyncBN`` of the config becomes a per-process ``BatchNorm2d``, with a notice;
    - one process: unchanged (a ``SyncBatchNorm`` then normalises by its own batch).
    """
    if not distributed:
        return module
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    def plain(bn: _BatchNorm) -> nn.Module | None:
        if not isinstance(bn, nn.SyncBatchNorm):
            return None
        return nn.BatchNorm2d(
            bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats
        )

    if any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
        print(
            f"notice: SyncBN needs GPUs; on {device_type} each process normalises by its own "
            "batch (BatchNorm2d)"
        )
        module = _replace_batch_norms(module, plain)
    return module
