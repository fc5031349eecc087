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


def logit_moments(
    q: torch.Tensor, k: torch.Tensor, eq: torch.Tensor, ek: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batch ``mean`` and biased ``var`` (each ``[3 * G]``: qk heads | qr heads | kr heads) of the
    logit terms, and the element count ``B * L * L`` each statistic is over.

    For a fixed query ``o`` the term ``qr`` sweeps the ``L`` table columns starting at ``L - 1 - o``;
    for a fixed key ``p`` the term ``kr`` sweeps those starting at ``p``.
    """
    b, _, _, length = q.shape
    count = b * length * length
    sum_q, gram_q = _window_sums(eq, length)  # [d, L(start)], [L(start), d, d]
    sum_k, gram_k = _window_sums(ek, length)
    total, squares = TermMoments.apply(q, k, sum_q.flip(-1), gram_q.flip(0), sum_k, gram_k)
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0.0)
    return mean.to(q.dtype), var.to(q.dtype), count
