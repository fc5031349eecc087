"""Axial attention as shape-generic tensor code, for tracing with a dynamic axis length.

The eager core (``layers/attention_core.py``) plans its work in Python from the axis length: how
many query blocks, which keys each block sees, how many lines per chunk, and (``hybrid``) whether
the axis is short enough for global attention. Traced with a symbolic length, every such decision
becomes a guard that pins the length. :func:`attend_windowed` computes the same function with no
decision on the length:

- ``local``, ``hybrid`` and ``block``: every query ``o`` looks at the fixed window of keys
  ``o - R .. o + R`` (``R`` from the span only), gathered from the zero-padded line; a key counts
  where it lies inside the line and inside the eager mode's set for ``o``:
  ``local`` ``|p - o| <= span // 2``; ``hybrid`` that, or every key when ``L <= 2 span - 1``
  (a tensor predicate on ``L``); ``block`` the query's block of ``2 span - 1`` widened by
  ``span // 2`` keys each side. The distance of window slot ``j`` is ``j - R`` for every query, so
  the relative embeddings are one ``[d, 2R + 1]`` slice of each table.
- ``global``: all ``L x L`` pairs, table indices ``clip(p - o)`` from ``arange(L)``.

Masked keys get ``-inf`` logits, as in the eager core, so the softmax weights agree up to float
round-off (the sums run in another order). ``export.tracing.traceable_model`` swaps this function
into ``layers.axial_attention`` while a model is traced.
"""

from __future__ import annotations

import torch

from ..layers.relative_position import block_geometry


def window_radius(span: int, span_mode: str) -> int:
    """``R``: the largest ``|p - o|`` a key can have in ``span_mode`` (``global``: unbounded)."""
    if span_mode == "local":
        return span // 2
    if span_mode == "hybrid":
        return 2 * span - 2  # global on axes of at most 2 span - 1 positions
    if span_mode == "block":
        query_block, flange = block_geometry(span)
        return query_block - 1 + flange
    raise ValueError(f"span_mode {span_mode!r} has no fixed window")


def _window_valid(length: torch.Tensor, radius: int, span: int, span_mode: str, device):
    """``[L, 2R + 1]`` bool: key slot ``j`` of query ``o`` (key ``p = o + j - R``) counts."""
    pos = torch.arange(length, device=device)[:, None]  # [L, 1]
    dist = torch.arange(2 * radius + 1, device=device)[None, :] - radius  # [1, 2R + 1]
    key = pos + dist  # [L, 2R + 1]
    valid = (key >= 0) & (key < length)
    if span_mode == "local":
        return valid & (dist.abs() <= span // 2)
    if span_mode == "hybrid":
        # L <= 2 span - 1 as a tensor (a Python comparison of the symbolic L would pin it).
        short = pos[-1:] <= 2 * span - 2  # [1, 1]
        return valid & ((dist.abs() <= span // 2) | short)
    query_block, flange = block_geometry(span)
    start = torch.div(pos, query_block, rounding_mode="floor") * query_block  # [L, 1]
    return valid & (key >= start - flange) & (key < start + query_block + flange)


def _windows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, G, d, L]`` -> ``[B, G, d, L, 2R + 1]``: slot ``j`` of ``o`` is ``x[..., o + j - R]``
    (zero outside the line)."""
    length = x.shape[-1]
    padded = torch.nn.functional.pad(x, (radius, radius))  # [B, G, d, L + 2R]
    index = torch.arange(length, device=x.device)[:, None] + torch.arange(
        2 * radius + 1, device=x.device
    )  # [L, 2R + 1]
    return padded[..., index]  # [B, G, d, L, 2R + 1]


def attend_windowed(q1, k, q2, k3, v, tables, *, span: int, span_mode: str) -> torch.Tensor:
    """Drop-in for ``layers.attention_core.attend`` (same arguments, same ``[B, 2C, L]``)."""
    if span_mode == "global":
        return _attend_global(q1, k, q2, k3, v, tables)
    table_q, table_k, table_v = tables
    b, g, _, length = q1.shape
    radius = window_radius(span, span_mode)
    reach = (table_q.shape[1] - 1) // 2
    slots = torch.arange(-radius, radius + 1, device=q1.device).clamp(-reach, reach) + reach
    rel_q, rel_k, rel_v = table_q[:, slots], table_k[:, slots], table_v[:, slots]  # [d, 2R + 1]
    k_win, k3_win = _windows(k, radius), _windows(k3, radius)  # [B, G, dk, L, 2R + 1]
    logits = torch.einsum("bgdo,bgdoj->bgoj", q1, k_win)  # [B, G, L, 2R + 1]
    logits = logits + torch.einsum("bgdo,dj->bgoj", q2, rel_q)
    logits = logits + torch.einsum("bgdoj,dj->bgoj", k3_win, rel_k)
    valid = _window_valid(length, radius, span, span_mode, q1.device)  # [L, 2R + 1]
    weights = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
    sv = torch.einsum("bgoj,bgdoj->bgdo", weights, _windows(v, radius))  # [B, G, dv, L]
    sve = torch.einsum("bgoj,dj->bgdo", weights, rel_v)  # [B, G, dv, L]
    return torch.cat([sv, sve], dim=1).reshape(b, -1, length)  # [B, 2 G dv, L]


def _attend_global(q1, k, q2, k3, v, tables) -> torch.Tensor:
    """Every key for every query: ``[B, 2C, L]`` (see ``attend_windowed``)."""
    table_q, table_k, table_v = tables
    b, _, _, length = q1.shape
    reach = (table_q.shape[1] - 1) // 2
    pos = torch.arange(length, device=q1.device)
    index = (pos[None, :] - pos[:, None]).clamp(-reach, reach) + reach  # [L(o), L(p)]
    logits = torch.einsum("bgdo,bgdp->bgop", q1, k)  # [B, G, L, L]
    logits = logits + torch.einsum("bgdo,dop->bgop", q2, table_q[:, index])
    logits = logits + torch.einsum("bgdp,dop->bgop", k3, table_k[:, index])
    weights = torch.softmax(logits, dim=-1)
    sv = torch.einsum("bgop,bgdp->bgdo", weights, v)  # [B, G, dv, L]
    sve = torch.einsum("bgop,dop->bgdo", weights, table_v[:, index])  # [B, G, dv, L]
    return torch.cat([sv, sve], dim=1).reshape(b, -1, length)  # [B, 2 G dv, L]
