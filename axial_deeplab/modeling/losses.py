"""Panoptic-DeepLab losses as pure functions plus a small callable holding the weights.

Normalisation (as bowenc0221/panoptic-deeplab, the authors' PyTorch re-implementation):

- semantic: per-pixel cross entropy times ``sem_seg_weights`` (ignored pixels contribute 0),
  then the mean of the ``k = max(1, int(top_k_percent * N * H * W))`` largest values over the
  whole batch (hard pixel mining of TF DeepLab; ignored pixels stay in the pool as zeros, so ``k``
  does not depend on how many pixels are ignored). ``top_k_percent = 1`` is the plain mean.
- centre: ``sum(w * (pred - target)^2) / sum(w)`` with ``w`` the ``[N, 1, H, W]`` centre weights.
- offset: ``sum(w * |pred - target|) / (2 * sum(w))``, the mean over both ``(dy, dx)`` components
  of the weighted pixels (the weights expanded to the two channels). detectron2's
  re-implementation divides by ``sum(w)`` only, i.e. gives twice this value.
- centre and offset are 0 (with a gradient path) when their weights sum to 0.

The total is ``semantic_weight * semantic + 200 * center + 0.01 * offset`` by default.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def hard_pixel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    ignore_label: int = 255,
    top_k_percent: float = 0.2,
) -> torch.Tensor:
    """Mean of the top ``top_k_percent`` weighted per-pixel cross entropies.

    ``logits`` ``[N, K, H, W]``, ``target`` ``[N, H, W]`` int64, ``weights`` ``[N, H, W]``.
    """
    if not 0.0 < top_k_percent <= 1.0:
        raise ValueError(f"top_k_percent must lie in (0, 1], got {top_k_percent}")
    pixel = F.cross_entropy(logits, target.long(), ignore_index=ignore_label, reduction="none")
    if weights is not None:
        pixel = pixel * weights
    pixel = pixel.reshape(-1)  # [N*H*W]
    if top_k_percent == 1.0:
        return pixel.mean()
    k = max(1, int(top_k_percent * pixel.numel()))
    return torch.topk(pixel, k, sorted=False).values.mean()


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w (pred - target)^2) / sum(w)`` over ``[N, C, H, W]`` with ``w`` expanded to ``C``."""
    w = weights.expand_as(pred)
    loss = (w * (pred - target) ** 2).sum()
    total = w.sum()
    return loss / total if total > 0 else loss * 0.0


def weighted_l1(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w |pred - target|) / sum(w)`` over ``[N, C, H, W]`` with ``w`` expanded to ``C``."""
    w = weights.expand_as(pred)
    loss = (w * (pred - target).abs()).sum()
    total = w.sum()
    return loss / total if total > 0 else loss * 0.0


class PanopticDeepLabLoss:
    """``(outputs, targets) -> {"loss_sem_seg", "loss_center", "loss_offset"}`` (already weighted).

    ``outputs`` as returned by ``PanopticDeepLab.forward``; ``targets`` batched as produced by
    ``PanopticTargetGenerator``: ``sem_seg`` ``[N, H, W]``, ``sem_seg_weights`` ``[N, H, W]``,
    ``center`` / ``center_weights`` / ``offset_weights`` ``[N, 1, H, W]``, ``offset``
    ``[N, 2, H, W]``.
    """

    def __init__(
        self,
        *,
        semantic_weight: float = 1.0,
        center_weight: float = 200.0,
        offset_weight: float = 0.01,
        top_k_percent: float = 0.2,
        ignore_label: int = 255,
    ) -> None:
        self.semantic_weight = semantic_weight
        self.center_weight = center_weight
        self.offset_weight = offset_weight
        self.top_k_percent = top_k_percent
        self.ignore_label = ignore_label

    def __call__(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        semantic = hard_pixel_cross_entropy(
            outputs["semantic"],
            targets["sem_seg"],
            targets.get("sem_seg_weights"),
            ignore_label=self.ignore_label,
            top_k_percent=self.top_k_percent,
        )
        center = weighted_mse(outputs["center"], targets["center"], targets["center_weights"])
        offset = weighted_l1(outputs["offset"], targets["offset"], targets["offset_weights"])
        return {
            "loss_sem_seg": self.semantic_weight * semantic,
            "loss_center": self.center_weight * center,
            "loss_offset": self.offset_weight * offset,
        }
