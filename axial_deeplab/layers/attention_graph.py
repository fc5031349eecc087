"""Axial attention as shape-generic tensor code, for tracing with a dynamic axis length.

The eager core (``layers/attention_core.py``) plans its work in Python from the axis length: how
many query blocks, which keys each block sees, how many lines per chunk, and (``hybrid``) whether
the axis is short enough for global attention. Traced with a symbolic length, every such decision
becomes a guard that pins the length. :func:`attend_windowed` computes the same function with no
decision on the length:

- ``local`` and ``block``: the axis runs in query blocks of a fixed size ``M``, each against its
  block widened by ``R`` keys on each side (``M + 2 R`` keys). Queries and keys are gathered per
  block from the line zero-padded by constants (index tensors from ``arange``: no size is split or
  padded by a symbolic amount), at least 2 blocks (so no block count is 1 while tracing).
  ``local``: ``M = min(span, LOCAL_BLOCK)``, ``R = span // 2``, a key counting where
  ``|p - o| <= span // 2`` inside the line (blocks of 16 queries see 80 keys each for span 65,
  against 129 for blocks of 65 as in the eager core: less memory traffic, and a stage-1 layer of
  Axial-DeepLab-S / -L 23% / 13% faster in ONNX Runtime); ``block``: the mode's own geometry
  (``M = 2 span - 1``, ``R = span // 2``), every key of the widened block inside the line.
  The relative distance of key slot ``c`` to query ``a`` of a block is ``c - R - a`` in every
  block, so the relative embeddings are one position-major gather of each table
  (``[M, d, M + 2 R]``).
  The heads run in groups of :data:`HEAD_GROUP` (a fixed Python loop), so that the
  ``[lines, heads, blocks, M, M + 2 R]`` logits of one group only are alive at a time: at
  1025 x 2049 the first stage of Axial-DeepLab-L has 257 lines of 513 positions and 8 heads.
- ``hybrid``: ``torch.cond`` on ``L <= 2 span - 1`` (an ONNX ``If``): ``global`` on short axes,
  ``local`` blocks on long ones, as the eager core. (``HYBRID_COND = False``: both regimes in the
  ``block`` geometry with a mask, which computes far more logits on short axes.)
- ``global``: all ``L x L`` pairs, table indices ``clip(p - o)`` from ``arange(L)``.

Every product is a ``MatMul`` (ONNX Runtime's CPU ``Einsum`` took most of the layer's time): the
dot products batched over lines x heads (x blocks), the relative terms batched over the query (or
key) positions with position-major tables, as the eager core does with strided views.

Masked keys get ``-inf`` logits, as in the eager core (``local`` and ``block``: ``-1e30``, added
by an extra channel of the relative matmuls instead of a ``Where`` over the logits; the exponent
underflows to exactly 0 either way), so the softmax weights agree up to float round-off (the sums
run in another order). Padded queries (past the end of the line) are discarded; their softmax
rows are never empty (``-inf`` masks) or finite (``-1e30``). ``layers.axial_attention`` runs this
function instead of the eager core when it is traced without autograd (torch.export, torch.compile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .relative_position import block_geometry

HEAD_GROUP = 2  # heads whose logits are computed at once
LOCAL_BLOCK = 16  # local: queries per block (each sees the block widened by span // 2 a side)
HYBRID_COND = True  # hybrid: torch.cond between global and local (else one blocked geometry)


def block_plan(span: int, span_mode: str) -> tuple[int, int]:
    """``(M, R)``: queries per block and keys added on each side of it, for ``span_mode``."""
    if span_mode == "local":
        return min(span, LOCAL_BLOCK), span // 2
    if span_mode in ("hybrid", "block"):
        return block_geometry(span)  # 2 span - 1, span // 2
    raise ValueError(f"span_mode {span_mode!r} has no fixed window")


def _blocks_valid(length, blocks, size: int, radius: int, span: int, span_mode: str, device):
    """``[N, M, M + 2 R]`` bool: key slot ``c`` of query ``a`` of block ``n`` counts."""
    a = torch.arange(size, device=device)[None, :, None]  # [1, M, 1]
    c = torch.arange(size + 2 * radius, device=device)[None, None, :]  # [1, 1, K]
    start = torch.arange(blocks, device=device)[:, None, None] * size  # [N, 1, 1]
    query, key = start + a, start + c - radius  # [N, M, 1], [N, 1, K]
    valid = (key >= 0) & (key < length)  # [N, 1, K]
    dist = c - radius - a  # [1, M, K]
    if span_mode == "local":
        valid = valid & (dist.abs() <= span // 2)
    elif span_mode == "hybrid":
        # L <= 2 span - 1 as a tensor (a Python comparison of the symbolic L would pin it).
        short = torch.arange(length, device=device)[-1:] <= 2 * span - 2  # [1]
        valid = valid & ((dist.abs() <= span // 2) | short)
    return valid | (query >= length)  # [N, M, K]


def _blocks(x: torch.Tensor, index: torch.Tensor, radius: int, size: int) -> torch.Tensor:
    """``[B, G, L, d]`` -> ``[B, G, N, S, d]``: ``x[..., index - radius, :]`` for ``index [N, S]``
    (zero outside the line; indices into the line padded by constants, enough for the at least
    2 blocks of ``attend_windowed``, so that no size is split or padded by a symbolic amount).
    One ``Gather`` of the flattened index (not ``GatherND``)."""
    padded = F.pad(x, (0, 0, radius, 2 * size + radius))  # [B, G, L', d]
    out = padded.index_select(2, index.reshape(-1))  # [B, G, N S, d]
    return out.view(x.shape[0], x.shape[1], index.shape[0], index.shape[1], x.shape[3])


def _by_position(x: torch.Tensor) -> torch.Tensor:
    """``[B, G, N, S, d]`` -> ``[S, B G N, d]`` (rows of the matmuls batched over positions)."""
    rows = x.shape[0] * x.shape[1] * x.shape[2]
    return x.permute(3, 0, 1, 2, 4).reshape(x.shape[3], rows, x.shape[4])


def attend_windowed(q1, k, q2, k3, v, tables, *, span: int, span_mode: str) -> torch.Tensor:
    """Drop-in for ``layers.attention_core.attend`` (same arguments, same ``[B, 2C, L]``)."""
    if span_mode == "global":
        return _attend_global(q1, k, q2, k3, v, tables)
    if span_mode == "hybrid" and HYBRID_COND:
        # Global on short axes, local blocks on long ones, as the eager core: one branch runs.
        def short(*args):
            return _attend_global(*args[:5], args[5:])

        def long(*args):
            return _attend_blocks(*args[:5], args[5:], span=span, span_mode="local")

        length = q1.shape[-1]
        if isinstance(length, int):  # a known length (eager, torch.compile): no cond needed
            return (short if length <= 2 * span - 1 else long)(q1, k, q2, k3, v, *tables)
        # (Clones: the operands are often views of one projection, and cond takes no aliases.)
        operands = tuple(t.clone() for t in (q1, k, q2, k3, v, *tables))
        return torch.cond(length <= 2 * span - 1, short, long, operands)
    return _attend_blocks(q1, k, q2, k3, v, tables, span=span, span_mode=span_mode)


def _attend_blocks(q1, k, q2, k3, v, tables, *, span: int, span_mode: str) -> torch.Tensor:
    """``local``, ``hybrid`` (both regimes in the blocked geometry) and ``block``."""
    table_q, table_k, table_v = tables
    b, g, _, length = q1.shape
    size, radius = block_plan(span, span_mode)
    # At least 2 blocks (the last ones may hold padding only): the block count is then never 1
    # for any length, and nothing is specialised on it while tracing.
    blocks = torch.sym_max((length + size - 1) // size, 2)
    device = q1.device
    reach = (table_q.shape[1] - 1) // 2
    a = torch.arange(size, device=device)[:, None]
    c = torch.arange(size + 2 * radius, device=device)[None, :]
    slots = (c - radius - a).clamp(-reach, reach) + reach  # [M, K]
    rel_q, rel_k, rel_v = table_q[:, slots], table_k[:, slots], table_v[:, slots]  # [d, M, K]
    start = torch.arange(blocks, device=device)[:, None] * size  # [N, 1]
    queries = start + a[:, 0] + radius  # [N, M] in the padded line
    keys = start + c[0]  # [N, K] in the padded line (key n M - R + c)
    # Masking by matmul (no Where over the logits): keys outside the line carry an extra key
    # channel 1 that meets a query-side table channel of -1e30; local windows put -1e30 into an
    # extra query-table channel that meets a query channel 1. Either adds exactly 0 to counting
    # logits, and -1e30 (exp underflows to exactly 0, as for -inf) to the others. Padded queries
    # (discarded) may see -1e30 everywhere: a finite, uniform softmax.
    position = torch.arange(length, device=device)
    by_matmul = span_mode in ("local", "block")
    if by_matmul:
        outside = (keys - radius < 0) | (keys - radius >= length)  # [N, K]
        outside = outside.to(q1.dtype)[:, :, None]  # [N, K, 1]
        far = (c - radius - a).abs() > span // 2  # [M, K]
        if span_mode != "local":
            far = far & False
        big = torch.full((), -1e30, dtype=q1.dtype, device=device)
        far = torch.where(far, big, torch.zeros_like(big))[:, None, :]  # [M, 1, K]
    # Position-major relative tables, shared by every line, head and block:
    rel_q = table_q.t()[slots].transpose(1, 2)  # [M, dk, K]
    rel_k = table_k.t()[slots.t()].transpose(1, 2)  # [K, dk, M]
    if by_matmul:
        rel_q = torch.cat([rel_q, far], dim=1)  # [M, dk + 1, K]
        rel_k = torch.cat([rel_k, big.expand(rel_k.shape[0], 1, size)], dim=1)  # [K, dk + 1, M]
    rel_v = table_v.t()[slots]  # [M, K, dv]
    q1, k, q2, k3, v = (t.transpose(2, 3) for t in (q1, k, q2, k3, v))  # [B, G, L, d]
    outputs = []
    # Every product is a MatMul (batched over lines x heads x blocks, or over the positions of
    # a block for the relative terms, as the eager core): ONNX Runtime's Einsum was the bulk of
    # the time.
    for h0 in range(0, g, HEAD_GROUP):  # a fixed number of head groups
        h = slice(h0, min(h0 + HEAD_GROUP, g))
        q1b = _blocks(q1[:, h], queries, radius, size)  # [B, G', N, M, dk]
        kb = _blocks(k[:, h], keys, radius, size)  # [B, G', N, K, dk]
        logits = torch.matmul(q1b, kb.transpose(3, 4))  # [B, G', N, M, K]
        shape = logits.shape
        q2b = _blocks(q2[:, h], queries, radius, size)  # [B, G', N, M, dk]
        k3b = _blocks(k3[:, h], keys, radius, size)  # [B, G', N, K, dk]
        if by_matmul:
            q2b = torch.cat([q2b, torch.ones_like(q2b[..., :1])], dim=-1)  # [B, G', N, M, dk+1]
            flag = outside[None, None].expand(k3b.shape[0], k3b.shape[1], -1, -1, -1)
            k3b = torch.cat([k3b, flag], dim=-1)  # [B, G', N, K, dk + 1]
        q2o = _by_position(q2b)  # [M, B G' N, dk]
        rel = torch.matmul(q2o, rel_q)  # [M, B G' N, K]
        logits = logits + rel.view(size, shape[0], shape[1], shape[2], shape[4]).permute(
            1, 2, 3, 0, 4
        )
        k3p = _by_position(k3b)  # [K, B G' N, dk]
        rel = torch.matmul(k3p, rel_k)  # [K, B G' N, M]
        logits = logits + rel.view(shape[4], shape[0], shape[1], shape[2], size).permute(
            1, 2, 3, 4, 0
        )
        if not by_matmul:
            valid = _blocks_valid(length, blocks, size, radius, span, span_mode, device)
            logits = logits.masked_fill(~valid, float("-inf"))  # [N, M, K] valid
        weights = torch.softmax(logits, dim=-1)
        vb = _blocks(v[:, h], keys, radius, size)  # [B, G', N, K, dv]
        sv = torch.matmul(weights, vb)  # [B, G', N, M, dv]
        sve = torch.matmul(_by_position(weights), rel_v)
        sve = sve.view(size, shape[0], shape[1], shape[2], sve.shape[-1]).permute(1, 2, 3, 0, 4)
        # [B, G', N M, dv] -> the first L positions, [B, G', dv, L]
        # (A Gather: a slice to the symbolic length leaves an unbacked size in the full model.)
        outputs.append(tuple(t.flatten(2, 3)[:, :, position].transpose(2, 3) for t in (sv, sve)))
    sv = torch.cat([o[0] for o in outputs], dim=1)  # [B, G, dv, L]
    sve = torch.cat([o[1] for o in outputs], dim=1)
    return torch.cat([sv, sve], dim=1).reshape(b, -1, length)  # [B, 2 G dv, L]


def _attend_global(q1, k, q2, k3, v, tables) -> torch.Tensor:
    """Every key for every query: ``[B, 2C, L]`` (see ``attend_windowed``)."""
    table_q, table_k, table_v = tables
    b, _, _, length = q1.shape
    reach = (table_q.shape[1] - 1) // 2
    pos = torch.arange(length, device=q1.device)
    index = (pos[None, :] - pos[:, None]).clamp(-reach, reach) + reach  # [L(o), L(p)]
    q1, k, q2, k3, v = (t.transpose(2, 3) for t in (q1, k, q2, k3, v))  # [B, G, L, d]
    g = q1.shape[1]
    logits = torch.matmul(q1, k.transpose(2, 3))  # [B, G, L, L]
    # The relative terms as matmuls batched over positions (rows: lines x heads).
    q2o = q2.permute(2, 0, 1, 3).reshape(length, b * g, q2.shape[3])  # [L(o), B G, dk]
    rel = torch.matmul(q2o, table_q.t()[index].transpose(1, 2))  # [L(o), B G, L(p)]
    logits = logits + rel.view(length, b, g, length).permute(1, 2, 0, 3)
    k3p = k3.permute(2, 0, 1, 3).reshape(length, b * g, k3.shape[3])  # [L(p), B G, dk]
    rel = torch.matmul(k3p, table_k.t()[index.t()].transpose(1, 2))  # [L(p), B G, L(o)]
    logits = logits + rel.view(length, b, g, length).permute(1, 2, 3, 0)
    weights = torch.softmax(logits, dim=-1)  # [B, G, L(o), L(p)]
    sv = torch.matmul(weights, v).transpose(2, 3)  # [B, G, dv, L]
    wo = weights.permute(2, 0, 1, 3).reshape(length, b * g, length)  # [L(o), B G, L(p)]
    sve = torch.matmul(wo, table_v.t()[index])  # [L(o), B G, dv]
    sve = sve.view(length, b, g, table_v.shape[0]).permute(1, 2, 3, 0)  # [B, G, dv, L]
    return torch.cat([sv, sve], dim=1).reshape(b, -1, length)  # [B, 2 G dv, L]
