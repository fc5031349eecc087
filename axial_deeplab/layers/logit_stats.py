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
    one diagonal ``p - o = s`` at a time: ``O(B G d L w)`` work for bands ``w`` wide and no
    ``[B, G, L, w]`` tensor kept; the backward recomputes each diagonal."""

    @staticmethod
    def forward(ctx, q, k, lo, hi):  # noqa: D102
        ctx.save_for_backward(q, k, lo, hi)
        g = q.shape[1]
        total = q.new_zeros(g, dtype=torch.float64)
        squares = q.new_zeros(g, dtype=torch.float64)
        for o0, o1, s, valid in _diagonals(lo, hi, q.shape[-1]):
            valid = valid.to(q.dtype)
            dots = (q[..., o0:o1] * k[..., o0 + s : o1 + s]).sum(2) * valid  # [B, G, n]
            total += dots.sum(dim=(0, 2), dtype=torch.float64)
            squares += (dots * dots).sum(dim=(0, 2), dtype=torch.float64)
        return total, squares

    @staticmethod
    def backward(ctx, grad_total, grad_squares):  # noqa: D102
        q, k, lo, hi = ctx.saved_tensors
        gt = grad_total.to(q.dtype)[None, :, None]  # [1, G, 1]
        gs = grad_squares.to(q.dtype)[None, :, None]  # [1, G, 1]
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k)
        for o0, o1, s, valid in _diagonals(lo, hi, q.shape[-1]):
            valid = valid.to(q.dtype)
            qs, ks = q[..., o0:o1], k[..., o0 + s : o1 + s]  # [B, G, d, n]
            dots = (qs * ks).sum(2) * valid  # [B, G, n]
            coef = ((gt + 2.0 * gs * dots) * valid).unsqueeze(2)  # [B, G, 1, n]
            grad_q[..., o0:o1] += coef * ks
            grad_k[..., o0 + s : o1 + s] += coef * qs
        return grad_q, grad_k, None, None


def _diagonals(lo: torch.Tensor, hi: torch.Tensor, length: int):
    """``(o0, o1, s, valid [n])`` for every diagonal ``p = o + s`` that meets the band
    ``lo[o] <= p < hi[o]``: queries ``[o0, o1)`` (``n = o1 - o0``) and which of them it is in."""
    pos = torch.arange(length, device=lo.device)
    for s in range(int((lo - pos).min()), int((hi - 1 - pos).max()) + 1):
        o0, o1 = max(0, -s), min(length, length - s)
        o = pos[o0:o1]
        yield o0, o1, s, (o + s >= lo[o0:o1]) & (o + s < hi[o0:o1])


def _range_sums(table: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
    """Sums and Gram matrices of the columns ``[start[i], end[i])`` of ``table [d, T]``:
    ``[d, n]`` and ``[n, d, d]`` (differences of cumulative sums)."""
    outer = torch.einsum("cj,dj->jcd", table, table)  # [T, d, d]
    grams = F.pad(outer.cumsum(0), (0, 0, 0, 0, 1, 0))  # [T + 1, d, d]
    sums = F.pad(table.cumsum(1), (1, 0))  # [d, T + 1]
    return sums[:, end] - sums[:, start], grams[end] - grams[start]


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
    if key_ranges is None:
        count = b * length * length
        sum_q, gram_q = _window_sums(eq, length)  # [d, L(start)], [L(start), d, d]
        sum_k, gram_k = _window_sums(ek, length)
        total, squares = TermMoments.apply(q, k, sum_q.flip(-1), gram_q.flip(0), sum_k, gram_k)
    else:
        lo, hi = key_ranges
        pos = torch.arange(length, device=q.device)
        count = b * int((hi - lo).sum())
        # Queries that see key p: o_lo[p] <= o < o_hi[p] (lo and hi are nondecreasing).
        o_lo = torch.searchsorted(hi, pos, right=True)
        o_hi = torch.searchsorted(lo, pos, right=True)
        sum_q, gram_q = _range_sums(eq, lo - pos + length - 1, hi - pos + length - 1)
        sum_k, gram_k = _range_sums(ek, pos - o_hi + length, pos - o_lo + length)
        total, squares = TermMoments.apply(q, k, sum_q, gram_q, sum_k, gram_k)
        band_total, band_squares = BandMoments.apply(q, k, lo, hi)
        total = torch.cat([band_total, total[g:]])
        squares = torch.cat([band_squares, squares[g:]])
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0.0)
    return mean.to(q.dtype), var.to(q.dtype), count
