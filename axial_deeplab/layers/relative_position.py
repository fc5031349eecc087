"""Relative positions along one axis, as pure functions.

Convention: an embedding table of ``T`` entries holds ``r_d`` for relative distances
``d = p - o`` (key position ``p`` minus query position ``o``) from ``-(T - 1) // 2`` to ``(T - 1) // 2``.
"""

from __future__ import annotations

import torch

SPAN_MODES = ("global", "local", "hybrid", "block")


def table_size(span: int, span_mode: str) -> int:
    """Number of relative embeddings a layer with this span needs.

    ``global``: distances up to ``span - 1`` each way (``2 * span - 1`` entries), larger ones clipped.
    ``local``: the ``span`` positions centred on the query, distances up to ``span // 2`` each way.
    ``hybrid``: local on axes longer than ``2 span - 1``, global on shorter ones: distances up to
    ``2 span - 2`` each way.
    ``block``: every distance within a widened query block (see ``block_geometry``).
    """
    if span_mode not in SPAN_MODES:
        raise ValueError(f"span_mode must be one of {SPAN_MODES}, got {span_mode!r}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    if span_mode == "global":
        return 2 * span - 1
    if span % 2 == 0:
        raise ValueError(f"a {span_mode} span must be odd (centred on the query), got {span}")
    if span_mode == "block":
        query_block, flange = block_geometry(span)
        return 2 * (query_block + flange) - 1
    if span_mode == "hybrid":
        return 2 * (2 * span - 1) - 1
    return span


def block_geometry(span: int) -> tuple[int, int]:
    """``(query_block, flange)`` of the blocked span mode for span ``m``: blocks of ``2 m - 1``
    queries attend to their block widened by ``m // 2`` keys on each side (clipped at the borders),
    so every query sees at least the ``m`` positions centred on it, and at most ``3 m - 2``.

    This is the local attention that deeplab2's ``AxialAttention`` describes in its docstring and
    defaults (query blocks of 129 with a memory flange of 32 for ``m = 65``) but does not implement
    (its local branch raises ``NotImplementedError``): our reading of that description, checked
    against no reference. Its relative tables span every distance within a widened block:
    ``2 (2 m - 1 + m // 2) - 1`` entries (321 for ``m = 65``).
    """
    return 2 * span - 1, span // 2


def pair_index(
    queries: tuple[int, int],
    keys: tuple[int, int],
    size: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Table index of every (query, key) pair of a block: queries at positions ``[o0, o1)``, keys at
    ``[p0, p1)``. Returns ``[o1 - o0, p1 - p0]`` int64, ``clip(p - o) + (size - 1) // 2``."""
    reach = (size - 1) // 2
    query = torch.arange(*queries, device=device)
    key = torch.arange(*keys, device=device)
    return (key[None, :] - query[:, None]).clamp(-reach, reach) + reach


def extended_index(length: int, size: int, device: torch.device | None = None) -> torch.Tensor:
    """Table index of every distance along an axis of ``length``: ``[2 * length - 1]`` int64, entry
    ``j`` for distance ``j - (length - 1)``, clipped to the table's reach."""
    reach = (size - 1) // 2
    dist = torch.arange(2 * length - 1, device=device) - (length - 1)
    return dist.clamp(-reach, reach) + reach
