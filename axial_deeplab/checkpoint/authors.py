"""Map state dicts of the authors' PyTorch Axial-ResNet (csrhddlam/axial-deeplab) onto ours.

Their ``AxialAttention`` layer stores (``C`` = width, ``G`` heads, ``gp = C / G``, ``K`` = kernel size):

- ``qkv_transform.weight [2C, C_in, 1]``: per head ``g`` the channels ``[q (gp/2) | k (gp/2) | v (gp)]``.
- ``bn_qkv.*  [2C]``: same channel order.
- ``bn_similarity.* [3G]``: ``[qk heads | qr heads | kr heads]``, the order we use.
- ``bn_output.* [2C]``: interleaved, channel ``2 * c + t`` with ``t = 0`` for ``sum w*v`` and ``1`` for
  ``sum w*rv``.
- ``relative [2 * gp, 2K - 1]``: rows ``[q (gp/2) | k (gp/2) | v (gp)]``. Their query and value terms
  index it by ``o - p`` and their key term by ``p - o``; we index every table by ``p - o``, so the
  query and value tables are flipped.
- ``flatten_index``: a buffer we recompute, dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def qkv_permutation(width: int, num_heads: int) -> torch.Tensor:
    """``perm[i]`` = the authors' qkv channel that becomes our channel ``i`` (``[q | k | v]`` order)."""
    gp = width // num_heads
    dk = gp // 2
    head = torch.arange(num_heads)[:, None] * 2 * gp  # [G, 1]
    q = (head + torch.arange(dk)).flatten()
    k = (head + dk + torch.arange(dk)).flatten()
    v = (head + 2 * dk + torch.arange(gp)).flatten()
    return torch.cat([q, k, v])


def output_permutation(width: int) -> torch.Tensor:
    """``perm[i]`` = the authors' output-BN channel that becomes our channel ``i``."""
    channel = torch.arange(width)
    return torch.cat([2 * channel, 2 * channel + 1])


def _take_bn(src: Mapping[str, torch.Tensor], prefix: str, perm: torch.Tensor | None) -> dict:
    out = {}
    for suffix in BN_SUFFIXES:
        value = src[f"{prefix}.{suffix}"]
        out[suffix] = value if perm is None or value.dim() == 0 else value[perm]
    return out


def convert_attention_layer(
    src: Mapping[str, torch.Tensor], num_heads: int = 8
) -> dict[str, torch.Tensor]:
    """Convert one authors' ``AxialAttention`` state dict (keys without prefix) to ours."""
    weight = src["qkv_transform.weight"]
    width = weight.shape[0] // 2
    gp = width // num_heads
    dk = gp // 2
    qkv_perm = qkv_permutation(width, num_heads)
    out: dict[str, torch.Tensor] = {"qkv_proj.weight": weight[qkv_perm][..., None].clone()}
    for ours, theirs, perm in (
        ("qkv_norm", "bn_qkv", qkv_perm),
        ("logits_norm", "bn_similarity", None),
        ("output_norm", "bn_output", output_permutation(width)),
    ):
        for suffix, value in _take_bn(src, theirs, perm).items():
            out[f"{ours}.{suffix}"] = value.clone()
    relative = src["relative"]
    q_rel, k_rel, v_rel = torch.split(relative, [dk, dk, gp], dim=0)
    out["query_rel"] = q_rel.flip(-1).clone()
    out["key_rel"] = k_rel.clone()
    out["value_rel"] = v_rel.flip(-1).clone()
    return out
