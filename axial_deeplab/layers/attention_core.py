"""The memory-lean core of position-sensitive axial attention, as pure functions.

For one block of ``Lo`` queries and ``Lp`` keys of ``B`` lines times ``G`` heads (flattened to ``BG``),
with the batch-norm scales already folded into the small operands::

    A[o, p] = q1_o . k_p + q2_o . rq[o, :, p] + k3_p . rk[p, :, o]     (masked: -inf)
    W = softmax_p(A)
    sv[o] = sum_p W[o, p] v_p,    sve[o] = sum_p W[o, p] rv[o, p]

where ``rq[o, :, p]``, ``rk[p, :, o]`` and ``rv[o, p]`` are the relative embeddings of distance
``p - o`` (small ``[L, d, L]`` tables shared by the batch and the heads). The relative terms are
matmuls batched over the position ``o`` (or ``p``) that index strided views of the ``[BG, Lo, Lp]``
tensors, so nothing of size ``BG x L x L`` is gathered or copied for them.

``AttentionCore`` saves only its small inputs and the softmax weights ``W`` and recomputes the rest in
its backward, so a layer keeps one ``[BG, Lo, Lp]`` tensor for the backward pass; everything else
runs in cache-sized chunks of lines.
"""

from __future__ import annotations

import torch

from .relative_position import block_geometry, pair_index


def by_position(x: torch.Tensor) -> torch.Tensor:
    """``[BG, d, L]`` -> ``[L, BG, d]`` (a contiguous copy; the operands are small), as one 2-D
    transpose of ``[BG d, L]`` (a view of the lines, sliced along ``L`` or not)."""
    bg, d, length = x.shape
    return x.flatten(0, 1).t().contiguous().view(length, bg, d)  # [L, BG, d]


# Lines are processed in chunks of about this many logits (2 MiB in float32), so that the
# temporaries of a chunk stay in cache and are reused instead of being freshly allocated...
CHUNK_LOGITS = 1 << 19
# ...but of at least this many lines while a chunk stays under CHUNK_LOGITS_MAX logits: the
# relative terms are matmuls batched over positions whose rows are the chunk's lines x heads, and
# a few rows waste most of a matmul (a 129-long axis, 8 heads: 3 lines, 24 rows; the layer ran
# 2.2x faster with 16).
CHUNK_LINES = 16
CHUNK_LOGITS_MAX = 1 << 22


def line_chunks(lines: int, per_line: int) -> list[tuple[int, int]]:
    """``[(l0, l1), ...]`` covering ``range(lines)`` with about ``CHUNK_LOGITS / per_line`` each,
    at least ``CHUNK_LINES`` as long as that stays under ``CHUNK_LOGITS_MAX`` logits."""
    per_line = max(per_line, 1)
    step = max(1, CHUNK_LOGITS // per_line, min(CHUNK_LINES, CHUNK_LOGITS_MAX // per_line))
    return [(start, min(start + step, lines)) for start in range(0, lines, step)]


def attention_weights(q1, k, q2_o, rq, k3_p, rk, mask, out, logits, scratch):
    """Softmax weights of one chunk of ``BG'`` lines x heads, written to ``out [BG', Lo, Lp]``.

    ``q2_o [Lo, BG', dk]`` and ``k3_p [Lp, BG', dk]`` are position-major; ``logits`` and
    ``scratch`` are flat buffers of at least ``Lo * BG' * Lp`` elements (other shapes: see
    ``AttentionCore``).
    """
    n_q, bg, n_k = rq.shape[0], q1.shape[0], rk.shape[0]
    logits, scratch = logits[: out.numel()], scratch[: out.numel()]
    logits = torch.bmm(q1.transpose(1, 2), k, out=logits.view(bg, n_q, n_k))  # [BG', Lo, Lp]
    rel = torch.bmm(q2_o, rq, out=scratch.view(n_q, bg, n_k))  # [Lo, BG', Lp]
    logits.permute(1, 0, 2).add_(rel)
    rel = torch.bmm(k3_p, rk, out=scratch.view(n_k, bg, n_q))  # [Lp, BG', Lo]
    logits.permute(2, 0, 1).add_(rel)
    if mask is not None:
        logits.masked_fill_(mask, float("-inf"))
    # Out of place: on CPU the in-place softmax is about 1.7x slower than into another buffer.
    return torch.softmax(logits, dim=-1, out=out)  # [BG', Lo, Lp]


def attend_values(weights, v, rv, sv, sve, scratch):
    """``sum_p W v`` into ``sv [B'G, dv, Lo]`` and ``sum_p W rv`` into ``sve [Lo, B'G, dv]``, of
    ``weights [B'G, Lo, Lp]``: each in the layout its matmul writes, so nothing is transposed.

    ``sve`` is usually one chunk's slice of a larger ``[Lo, BG, dv]``: the matmul then goes to
    the flat buffer ``scratch`` (at least ``sve.numel()`` elements) and is copied over, because
    a matmul into a non-contiguous output runs as a loop of single products on the CPU (3 ms of
    a 65 x 65 pair's 75 ms on one thread, and not spread over threads)."""
    torch.bmm(v, weights.transpose(1, 2), out=sv)  # [B'G, dv, Lo]
    if sve.is_contiguous():
        torch.bmm(weights.permute(1, 0, 2), rv, out=sve)  # [Lo, B'G, dv]
    else:
        sve.copy_(torch.bmm(weights.permute(1, 0, 2), rv, out=scratch[: sve.numel()].view_as(sve)))


def attend_chunks(q1, k, q2_o, rq, k3_p, rk, v, rv, mask, heads, weights=None):
    """``(sv [BG, dv, Lo], sve [Lo, BG, dv])`` (shapes: see ``AttentionCore``, with ``q2_o [Lo,
    BG, dk]`` and ``k3_p [Lp, BG, dk]`` position-major), in chunks of lines (``line_chunks``).

    ``weights``: ``[BG, Lo, Lp]`` to keep every chunk's softmax weights in (for a backward pass);
    None: one chunk-sized buffer is reused.
    """
    bg, _, n_q = q1.shape
    n_k, b = k.shape[2], bg // heads
    sv, sve = q1.new_empty(bg, v.shape[1], n_q), q1.new_empty(n_q, bg, v.shape[1])
    chunks = line_chunks(b, heads * n_q * n_k)
    rows = (chunks[0][1] - chunks[0][0]) * heads  # lines x heads of the largest chunk
    size = rows * n_q * n_k
    logits, scratch = q1.new_empty(size), q1.new_empty(rows * n_q * max(n_k, v.shape[1]))
    reused = q1.new_empty(size) if weights is None else None
    for l0, l1 in chunks:
        c = slice(l0 * heads, l1 * heads)
        n = (l1 - l0) * heads
        w = reused[: n * n_q * n_k].view(n, n_q, n_k) if weights is None else weights[c]
        attention_weights(q1[c], k[c], q2_o[:, c], rq, k3_p[:, c], rk, mask, w, logits, scratch)
        attend_values(w, v[c], rv, sv[c], sve[:, c], scratch)
    return sv, sve


class AttentionCore(torch.autograd.Function):
    """``(q1, k, q2, rq, k3, rk, v, rv, mask, heads) -> (sv, sve)``, saving only ``W`` besides
    the inputs.

    Shapes: ``q1, q2 [BG, dk, Lo]``, ``k, k3 [BG, dk, Lp]``, ``v [BG, dv, Lp]``, ``rq [Lo, dk, Lp]``,
    ``rk [Lp, dk, Lo]``, ``rv [Lo, Lp, dv]``, ``mask`` bool ``[Lo, Lp]`` or None, ``heads`` = G;
    ``sv [BG, dv, Lo]`` is ``sum_p W v`` and ``sve [Lo, BG, dv]`` (position-major) ``sum_p W rv``.
    Work runs in chunks of lines (``line_chunks``). Without autograd, ``core`` skips it and keeps
    no weights.
    """

    @staticmethod
    def forward(ctx, q1, k, q2, rq, k3, rk, v, rv, mask, heads):  # noqa: D102
        q2_o, k3_p = by_position(q2), by_position(k3)  # [Lo, BG, dk], [Lp, BG, dk]
        weights = q1.new_empty(q1.shape[0], q1.shape[2], k.shape[2])  # [BG, Lo, Lp]
        sv, sve = attend_chunks(q1, k, q2_o, rq, k3_p, rk, v, rv, mask, heads, weights)
        ctx.heads = heads
        ctx.save_for_backward(q1, k, q2_o, rq, k3_p, rk, v, rv, weights)
        return sv, sve

    @staticmethod
    def backward(ctx, grad_sv_all, grad_sve_all):  # noqa: D102
        q1, k, q2_o, rq, k3_p, rk, v, rv, weights = ctx.saved_tensors
        heads = ctx.heads
        bg, n_q, n_k = weights.shape
        grads = [torch.empty_like(t) for t in (q1, k, q2_o, k3_p, v)]
        grad_q1, grad_k, grad_q2_o, grad_k3_p, grad_v = grads
        # (In-place baddbmm_ falls back to a per-matrix loop on CPU: bmm then add instead.)
        grad_rq, grad_rk, grad_rv = (torch.zeros_like(t) for t in (rq, rk, rv))
        chunks = line_chunks(bg // heads, heads * n_q * n_k)
        size = (chunks[0][1] - chunks[0][0]) * heads * n_q * n_k
        work, scratch = q1.new_empty(size), q1.new_empty(size)
        for l0, l1 in chunks:
            c = slice(l0 * heads, l1 * heads)
            w, n = weights[c], (l1 - l0) * heads
            grad_sv = grad_sv_all[c]  # [BG', dv, Lo]
            grad_sve = grad_sve_all[:, c]  # [Lo, BG', dv]
            # Through the values.
            grad_w = torch.bmm(grad_sv.transpose(1, 2), v[c], out=work[: w.numel()].view_as(w))
            rel = torch.bmm(
                grad_sve, rv.transpose(1, 2), out=scratch[: w.numel()].view(n_q, n, n_k)
            )
            grad_w.permute(1, 0, 2).add_(rel)  # [BG', Lo, Lp]
            torch.bmm(grad_sv, w, out=grad_v[c])  # [BG', dv, Lp]
            grad_rv += torch.bmm(w.permute(1, 2, 0), grad_sve)  # [Lo, Lp, dv]
            # Softmax, in place: dA = W * (dW - sum_p W dW).
            grad_a = torch.ops.aten._softmax_backward_data.out(
                grad_w, w, -1, w.dtype, grad_input=grad_w
            )  # [BG', Lo, Lp]
            torch.bmm(k[c], grad_a.transpose(1, 2), out=grad_q1[c])  # [BG', dk, Lo]
            torch.bmm(q1[c], grad_a, out=grad_k[c])  # [BG', dk, Lp]
            grad_a_o = grad_a.permute(1, 0, 2)  # [Lo, BG', Lp]
            grad_q2_o[:, c] = torch.bmm(grad_a_o, rq.transpose(1, 2))  # [Lo, BG', dk]
            grad_rq += torch.bmm(q2_o[:, c].transpose(1, 2), grad_a_o)  # [Lo, dk, Lp]
            # [BG', Lo, Lp] -> [Lp, BG', Lo] as a 2-D transpose of [BG' * Lo, Lp].
            scratch[: w.numel()].view(n_k, -1).copy_(grad_a.view(-1, n_k).t())
            grad_a_p = scratch[: w.numel()].view(n_k, n, n_q)  # [Lp, BG', Lo]
            grad_k3_p[:, c] = torch.bmm(grad_a_p, rk.transpose(1, 2))  # [Lp, BG', dk]
            grad_rk += torch.bmm(k3_p[:, c].transpose(1, 2), grad_a_p)  # [Lp, dk, Lo]
        grad_q2 = grad_q2_o.permute(1, 2, 0)  # [BG, dk, Lo]
        grad_k3 = grad_k3_p.permute(1, 2, 0)  # [BG, dk, Lp]
        grads = (grad_q1, grad_k, grad_q2, grad_rq, grad_k3, grad_rk, grad_v, grad_rv)
        return (*grads, None, None)


def core(q1, k, q2, rq, k3, rk, v, rv, mask, heads):
    """``AttentionCore`` where autograd needs it, else the same chunks without saved weights."""
    inputs = (q1, k, q2, rq, k3, rk, v, rv)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return AttentionCore.apply(*inputs, mask, heads)
    q2_o, k3_p = by_position(q2), by_position(k3)  # [Lo, BG, dk], [Lp, BG, dk]
    return attend_chunks(q1, k, q2_o, rq, k3_p, rk, v, rv, mask, heads)


def attend(
    q1: torch.Tensor,
    k: torch.Tensor,
    q2: torch.Tensor,
    k3: torch.Tensor,
    v: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    span: int,
    span_mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention along the last axis of ``q1, q2 [B, G, dk, L]``, ``k, k3 [B, G, dk, L]``,
    ``v [B, G, dv, L]``; returns ``sum_p W v`` ``[B, C, L]`` (``C = G dv`` channels, head-major)
    and ``sum_p W rv`` ``[L, B, C]`` (position-major, as its matmul writes it).

    ``tables`` are the relative tables ``(query [dk, T], key [dk, T], value [dv, T])`` indexed by
    clipped distance ``p - o``. ``span_mode``: ``"global"`` (the whole axis), ``"local"`` (the ``span``
    positions centred on each query), ``"hybrid"`` (local on axes longer than ``2 span - 1``, else
    global) or ``"block"`` (query blocks widened by a flange, see
    ``relative_position.block_geometry``). A local span on an axis longer than ``2 m`` runs in
    query blocks of ``m`` against their ``2 m - 1`` keys (the block widened by ``m // 2`` on each
    side, clipped at the borders), so memory is ``O(L m)`` instead of
    ``O(L^2)``; the blocked mode likewise runs block by block.
    """
    outputs = [
        _attend_block(q1, k, q2, k3, v, tables, queries, keys, local)
        for queries, keys, local in plan_blocks(q1.shape[-1], span, span_mode)
    ]
    if len(outputs) == 1:
        return outputs[0]
    sv, sve = zip(*outputs)
    return torch.cat(sv, dim=2), torch.cat(sve, dim=0)  # [B, C, L], [L, B, C]


Block = tuple[tuple[int, int], tuple[int, int], "int | None"]


def plan_blocks(length: int, span: int, span_mode: str) -> list[Block]:
    """How ``attend`` splits an axis of ``length``: ``[((o0, o1), (p0, p1), local), ...]``, queries
    ``[o0, o1)`` against keys ``[p0, p1)``, ``local`` the window to mask (None: every key counts).
    """
    if span_mode == "hybrid":
        span_mode = "global" if length <= 2 * span - 1 else "local"
    local = span if span_mode == "local" else None
    if span_mode == "local" and length > 2 * span:
        step, reach = span, span // 2
    elif span_mode == "block" and length > block_geometry(span)[0]:
        step, reach = block_geometry(span)
    else:
        return [((0, length), (0, length), local)]
    return [
        (
            (start, min(start + step, length)),
            (max(0, start - reach), min(length, start + step + reach)),
            local,
        )
        for start in range(0, length, step)
    ]


def key_ranges(length: int, span: int, span_mode: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The keys each query's softmax sees: ``(lo, hi)``, int64 ``[L]`` on the CPU, keys
    ``lo[o] <= p < hi[o]`` (the local window clipped at the borders, or the widened block), as
    ``plan_blocks`` and ``window_mask`` attend; None when every query sees the whole axis."""
    cpu = torch.device("cpu")  # planned on the CPU whatever the default device (even "meta")
    lo = torch.empty(length, dtype=torch.int64, device=cpu)
    hi = torch.empty(length, dtype=torch.int64, device=cpu)
    for (o0, o1), (p0, p1), local in plan_blocks(length, span, span_mode):
        o = torch.arange(o0, o1, device=cpu)
        reach = length if local is None else local // 2
        lo[o0:o1] = (o - reach).clamp(min=p0)
        hi[o0:o1] = (o + reach + 1).clamp(max=p1)
    if bool((lo == 0).all()) and bool((hi == length).all()):
        return None
    return lo, hi


def window_mask(queries, keys, span, device) -> torch.Tensor | None:
    """``[Lo, Lp]`` bool, True where key ``p`` lies outside query ``o``'s local window (None if
    every key of the block is inside every window, or for a global span)."""
    (o0, o1), (p0, p1) = queries, keys
    if span is None or max(p1 - 1 - o0, o1 - 1 - p0) <= span // 2:
        return None
    dist = torch.arange(p0, p1, device=device) - torch.arange(o0, o1, device=device)[:, None]
    return dist.abs() > span // 2


def _attend_block(q1, k, q2, k3, v, tables, queries, keys, span):
    """``AttentionCore`` on queries ``[o0, o1)`` against keys ``[p0, p1)`` (see ``attend``)."""
    (o0, o1), (p0, p1) = queries, keys
    table_q, table_k, table_v = tables
    b, g, dk, _ = q1.shape
    index = pair_index(queries, keys, table_q.shape[1], device=q1.device)  # [Lo, Lp]
    mask = window_mask(queries, keys, span, q1.device)

    def lines(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        x = x if (lo, hi) == (0, x.shape[-1]) else x[..., lo:hi]
        return x.reshape(b * g, x.shape[2], hi - lo)  # [BG, d, L']

    sv, sve = core(
        lines(q1, o0, o1),
        lines(k, p0, p1),
        lines(q2, o0, o1),
        table_q[:, index].permute(1, 0, 2).contiguous(),  # [Lo, dk, Lp]
        lines(k3, p0, p1),
        table_k[:, index].permute(2, 0, 1).contiguous(),  # [Lp, dk, Lo]
        lines(v, p0, p1),
        table_v[:, index].permute(1, 2, 0).contiguous(),  # [Lo, Lp, dv]
        mask,
        g,
    )
    return sv.view(b, -1, o1 - o0), sve.view(o1 - o0, b, -1)  # [B, C, Lo], [Lo, B, C]
