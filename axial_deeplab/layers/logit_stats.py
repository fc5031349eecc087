"""Batch statistics of the three attention-logit terms without forming the ``[B, G, L, L]`` terms.

For ``q, k [B, G, dk, L]`` and relative tables ``eq, ek [dk, 2L - 1]`` (column ``j`` = distance
``p - o = j - (L - 1)``) the terms are::

    qk[o, p] = q_o . k_p,    qr[o, p] = q_o . eq[p - o],    kr[o, p] = k_p . ek[p - o]

Their sums over ``(B, o, p)`` and sums of squares reduce to small Gram matrices, e.g.
``sum (q_o . k_p)^2 = sum_b <q q^T, k k^T>``: ``O(B G L dk^2)`` work instead of ``O(B G L^2 dk)``.
``TermMoments`` is differentiable (hand-written backward), so batch norm's gradient through the
variance flows back to ``q``, ``k`` and the tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _window_sums(table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over every window of ``length`` consecutive columns of ``table [d, 2L - 1]``.

    Returns ``sums [d, L(s)]`` (``sum_t table[:, s + t]``) and ``grams [L(s), d, d]``
    (``sum_t table[:, s + t] table[:, s + t]^T``), by differences of cumulative sums: ``O(L d^2)``.
    """
    outer = torch.einsum("cj,dj->jcd", table, table)  # [2L - 1, d, d]
    grams = F.pad(outer.cumsum(0), (0, 0, 0, 0, 1, 0))  # [2L, d, d]
    sums = F.pad(table.cumsum(1), (1, 0))  # [d, 2L]
    return sums[:, length:] - sums[:, :length], grams[length:] - grams[:length]


class TermMoments(torch.autograd.Function):
    """Per-head sums and sums of squares of the three logit terms, ``(total, squares)``, each
    ``[3 * G]`` (qk heads | qr heads | kr heads), accumulated in float64.

    Inputs: ``q, k [B, G, d, L]``; for the query (key) side the window sums ``sum_q [d, L]`` and
    window Gram matrices ``gram_q [L, d, d]`` of the relative table seen by query ``o`` (key ``p``),
    see ``_window_sums``. The backward is written out (it is a few small matmuls).
    """

    @staticmethod
    def forward(ctx, q, k, sum_q, gram_q, sum_k, gram_k):  # noqa: D102
        b, g, d, length = q.shape
        flat_q, flat_k = q.reshape(b * g, d, length), k.reshape(b * g, d, length)  # [BG, d, L]
        q_sum, k_sum = q.sum(-1), k.sum(-1)  # [B, G, d]
        qq = torch.bmm(flat_q, flat_q.transpose(1, 2)).view(b, g, d, d)  # [B, G, d, d]
        kk = torch.bmm(flat_k, flat_k.transpose(1, 2)).view(b, g, d, d)  # [B, G, d, d]
        q_pos = flat_q.permute(2, 0, 1).contiguous()  # [L, BG, d]
        k_pos = flat_k.permute(2, 0, 1).contiguous()  # [L, BG, d]
        mq = torch.bmm(q_pos, gram_q)  # [L, BG, d]: gram_q[o] q_o (gram symmetric)
        mk = torch.bmm(k_pos, gram_k)  # [L, BG, d]
        f64 = torch.float64
        total = torch.cat(
            [
                (q_sum * k_sum).sum(dim=(0, 2), dtype=f64),
                torch.einsum("bgco,co->g", q, sum_q).to(f64),
                torch.einsum("bgcp,cp->g", k, sum_k).to(f64),
            ]
        )
        squares = torch.cat(
            [
                (qq * kk).sum(dim=(0, 2, 3), dtype=f64),
                (q_pos * mq).view(length, b, g, d).sum(dim=(0, 1, 3), dtype=f64),
                (k_pos * mk).view(length, b, g, d).sum(dim=(0, 1, 3), dtype=f64),
            ]
        )
        ctx.save_for_backward(q, k, sum_q, sum_k, qq, kk, q_pos, k_pos, mq, mk)
        return total, squares

    @staticmethod
    def backward(ctx, grad_total, grad_squares):  # noqa: D102
        q, k, sum_q, sum_k, qq, kk, q_pos, k_pos, mq, mk = ctx.saved_tensors
        b, g, d, length = q.shape
        gt = grad_total.to(q.dtype).view(3, 1, g, 1, 1)  # [3, 1, G, 1, 1]
        gs = grad_squares.to(q.dtype).view(3, 1, g, 1, 1)  # [3, 1, G, 1, 1]

        def by_head(pos: torch.Tensor) -> torch.Tensor:  # [L, BG, d] -> [B, G, d, L]
            return pos.view(length, b, g, d).permute(1, 2, 3, 0)

        grad_q = (
            gt[0] * k.sum(-1, keepdim=True)
            + gt[1] * sum_q
            + 2.0 * gs[0] * torch.matmul(kk, q)
            + 2.0 * gs[1] * by_head(mq)
        )  # [B, G, d, L]
        grad_k = (
            gt[0] * q.sum(-1, keepdim=True)
            + gt[2] * sum_k
            + 2.0 * gs[0] * torch.matmul(qq, k)
            + 2.0 * gs[2] * by_head(mk)
        )  # [B, G, d, L]
        grad_sum_q = (gt[1] * q).sum(dim=(0, 1))  # [d, L]
        grad_sum_k = (gt[2] * k).sum(dim=(0, 1))  # [d, L]
        scale_q = gs[1].view(1, 1, g, 1).expand(1, b, g, 1).reshape(1, b * g, 1)  # [1, BG, 1]
        scale_k = gs[2].view(1, 1, g, 1).expand(1, b, g, 1).reshape(1, b * g, 1)  # [1, BG, 1]
        grad_gram_q = torch.bmm(q_pos.transpose(1, 2), q_pos * scale_q)  # [L, d, d]
        grad_gram_k = torch.bmm(k_pos.transpose(1, 2), k_pos * scale_k)  # [L, d, d]
        return grad_q, grad_k, grad_sum_q, grad_gram_q, grad_sum_k, grad_gram_k


class BandMoments(torch.autograd.Function):
    """Per-head sum and sum of squares, ``(total, squares)`` each ``[G]`` in float64, of the content
    term ``q_o . k_p`` over the pairs with ``lo[o] <= p < hi[o]`` (a band around the diagonal),
    in chunks of ``BAND_CHUNK`` queries against the keys their band reaches: ``O(B G d L w)`` work
    for bands ``w`` wide and only one chunk's ``[B, G, n, w]`` logits at a time; the backward
    recomputes them."""

    @staticmethod
    def forward(ctx, q, k, lo, hi):  # noqa: D102
        ctx.save_for_backward(q, k, lo, hi)
        g = q.shape[1]
        total = q.new_zeros(g, dtype=torch.float64)
        squares = q.new_zeros(g, dtype=torch.float64)
        for (o0, o1), (p0, p1), inside in _band_chunks(lo, hi, q):
            dots = (q[..., o0:o1].transpose(2, 3) @ k[..., p0:p1]).mul_(inside)  # [B, G, n, w]
            total += dots.sum(dim=(0, 2, 3)).double()
            squares += dots.square_().sum(dim=(0, 2, 3)).double()
        return total, squares

    @staticmethod
    def backward(ctx, grad_total, grad_squares):  # noqa: D102
        q, k, lo, hi = ctx.saved_tensors
        gt = grad_total.to(q.dtype)[None, :, None, None]  # [1, G, 1, 1]
        gs = grad_squares.to(q.dtype)[None, :, None, None]  # [1, G, 1, 1]
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        for (o0, o1), (p0, p1), inside in _band_chunks(lo, hi, q):
            qs, ks = q[..., o0:o1], k[..., p0:p1]  # [B, G, d, n], [B, G, d, w]
            dots = qs.transpose(2, 3) @ ks  # [B, G, n, w] (zero outside the band below)
            coef = dots.mul_(2.0 * gs).add_(gt).mul_(inside)  # [B, G, n, w]
            grad_q[..., o0:o1] += ks @ coef.transpose(2, 3)  # [B, G, d, n]
            grad_k[..., p0:p1] += qs @ coef  # [B, G, d, w]
        return grad_q, grad_k, None, None


BAND_CHUNK = 16  # queries per chunk of BandMoments (fastest of 8-128 on CPU for m = 65, L = 257)


def _band_chunks(lo: torch.Tensor, hi: torch.Tensor, like: torch.Tensor):
    """``((o0, o1), (p0, p1), inside [n, w])``: chunks of queries ``[o0, o1)``, the keys
    ``[p0, p1)`` their bands reach (``lo``, ``hi`` nondecreasing, on the CPU) and which pairs are
    in a band (on ``like``'s device, in its dtype)."""
    length = lo.shape[0]
    for o0 in range(0, length, BAND_CHUNK):
        o1 = min(o0 + BAND_CHUNK, length)
        p0, p1 = int(lo[o0]), int(hi[o1 - 1])
        p = torch.arange(p0, p1, device=lo.device)
        inside = (p >= lo[o0:o1, None]) & (p < hi[o0:o1, None])  # [n, w]
        yield (o0, o1), (p0, p1), inside.to(device=like.device, dtype=like.dtype)


def _range_sums(table: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
    """Sums and Gram matrices of the columns ``[start[i], end[i])`` of ``table [d, T]``:
    ``[d, n]`` and ``[n, d, d]`` (differences of cumulative sums)."""
    outer = torch.einsum("cj,dj->jcd", table, table)  # [T, d, d]
    grams = F.pad(outer.cumsum(0), (0, 0, 0, 0, 1, 0))  # [T + 1, d, d]
    sums = F.pad(table.cumsum(1), (1, 0))  # [d, T + 1]
    return sums[:, end] - sums[:, start], grams[end] - grams[start]


def window_terms(
    eq: torch.Tensor, ek: torch.Tensor, length: int, key_ranges=None
) -> tuple[tuple[torch.Tensor, ...], int]:
    """``TermMoments``'s table inputs ``(sum_q, gram_q, sum_k, gram_k)`` for an axis of ``length``
    (see ``logit_moments``), and the number of (query, key) pairs per line."""
    if key_ranges is None:
        sum_q, gram_q = _window_sums(eq, length)  # [d, L(start)], [L(start), d, d]
        sum_k, gram_k = _window_sums(ek, length)
        return (sum_q.flip(-1), gram_q.flip(0), sum_k, gram_k), length * length
    lo, hi = key_ranges
    pos = torch.arange(length, device=lo.device)  # index arithmetic on the CPU
    # Queries that see key p: o_lo[p] <= o < o_hi[p] (lo and hi are nondecreasing).
    o_lo = torch.searchsorted(hi, pos, right=True)
    o_hi = torch.searchsorted(lo, pos, right=True)
    sum_q, gram_q = _range_sums(eq, lo - pos + length - 1, hi - pos + length - 1)
    sum_k, gram_k = _range_sums(ek, pos - o_hi + length, pos - o_lo + length)
    return (sum_q, gram_q, sum_k, gram_k), int((hi - lo).sum())


def moments(
    total: torch.Tensor, squares: torch.Tensor, count: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(mean, biased var, count)`` from sums and sums of squares over ``count`` elements."""
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0.0)
    return mean.to(dtype), var.to(dtype), count


def logit_moments(
    q: torch.Tensor,
    k: torch.Tensor,
    eq: torch.Tensor,
    ek: torch.Tensor,
    key_ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batch ``mean`` and biased ``var`` (each ``[3 * G]``: qk heads | qr heads | kr heads) of the
    logit terms, and the element count each statistic is over.

    ``key_ranges``: ``(lo, hi)``, int64 ``[L]`` each, nondecreasing: query ``o`` sees the keys
    ``lo[o] <= p < hi[o]`` (its local window or widened block), and the statistics are over those
    pairs only, the logits the softmax sees; None: every pair (``count = B L^2``). For a fixed
    query ``o`` the term ``qr`` sweeps table columns ``p - o + L - 1``; for a fixed key ``p`` the
    term ``kr`` sweeps columns ``p - o + L - 1`` over the queries that see ``p``.
    """
    b, g, _, length = q.shape
    tables, pairs = window_terms(eq, ek, length, key_ranges)
    total, squares = TermMoments.apply(q, k, *tables)
    if key_ranges is not None:
        total, squares = with_band(total, squares, q, k, key_ranges)
    return moments(total, squares, b * pairs, q.dtype)


def with_band(total, squares, q, k, key_ranges):
    """``total, squares`` with their ``qk`` heads replaced by ``BandMoments`` over the pairs
    inside the windows (``TermMoments`` sums that term over every pair)."""
    g = q.shape[1]
    band_total, band_squares = BandMoments.apply(q, k, *key_ranges)
    return torch.cat([band_total, total[g:]]), torch.cat([band_squares, squares[g:]])
