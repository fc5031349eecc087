"""Ablation: batch-norm statistics of the attention logits over the pairs the softmax sees (the
layer's choice) vs over all L x L pairs (the former behaviour), for local / hybrid / block spans.

Usage::

    python bench/logit_stats.py init                                   # one layer at init
    python bench/logit_stats.py quickstart --stats all OUTPUT_DIR out/all MODEL.AXIAL_RESNET.SPAN 9
    python bench/logit_stats.py quickstart --stats window OUTPUT_DIR out/win MODEL.AXIAL_RESNET.SPAN 9

``init`` prints, for a few axis lengths and spans, the share of pairs inside the window, the
standard deviation inside the window of each normalised logit term (qk, qr, kr; 1.0 is what batch
norm aims at) under both choices, and the relative L2 difference of the layer's outputs.
``quickstart`` runs ``python -m axial_deeplab.quickstart`` with the chosen statistics (a span of 9
makes the windows cover about a quarter of the quick start's axes; its default 33 covers them all,
where both choices are the same).
"""

from __future__ import annotations

import argparse
import os

import torch

from axial_deeplab.layers import axial_attention
from axial_deeplab.layers.attention_core import key_ranges
from axial_deeplab.layers.logit_stats import logit_moments
from axial_deeplab.layers.relative_position import pair_index

# The ablation swaps ``axial_attention.key_ranges``, which only the PyTorch path reads.
os.environ["AXIAL_DEEPLAB_FUSED_ATTENTION"] = "0"


def _all_pairs(*args, **kwargs):
    return None  # key_ranges() == None: statistics over every pair


def _terms_and_window(layer, x):
    """Dense ``[3, B, G, L, L]`` logit terms of ``layer`` on ``x`` and the ``[L, L]`` window."""
    length = x.shape[-1]
    q, k, _, _ = layer._project(x)  # [B, G, dk, L] each (train mode: batch statistics)
    g, dk = layer.num_heads, layer.key_channels
    q, k = q.view(-1, g, dk, length), k.view(-1, g, dk, length)
    idx = pair_index((0, length), (0, length), layer.query_rel.shape[1])  # [L, L]
    terms = torch.stack([
        torch.einsum("bgdo,bgdp->bgop", q, k),
        torch.einsum("bgdo,dop->bgop", q, layer.query_rel[:, idx]),
        torch.einsum("bgdp,dop->bgop", k, layer.key_rel[:, idx]),
    ])  # fmt: skip
    ranges = key_ranges(length, layer.span, layer.span_mode)
    p = torch.arange(length)
    if ranges is None:
        return terms, torch.ones(length, length, dtype=torch.bool), (q, k)
    return terms, (p >= ranges[0][:, None]) & (p < ranges[1][:, None]), (q, k)


def init_check() -> None:
    torch.manual_seed(0)
    cases = [(257, 65, "local"), (129, 65, "local"), (257, 65, "hybrid"), (257, 65, "block"),
             (32, 9, "local")]  # fmt: skip
    for length, span, mode in cases:
        layer = axial_attention.AxialAttention(64, 64, axis="width", span=span, span_mode=mode)
        layer.train()
        x = torch.randn(2, 64, 4, length)
        stds, outs = {}, {}
        for name in ("window", "all"):
            axial_attention.key_ranges = key_ranges if name == "window" else _all_pairs
            outs[name] = layer(x).detach()
            with torch.no_grad():
                terms, window, (q, k) = _terms_and_window(layer, x)
                moments = lambda *args: logit_moments(q, k, *args)  # noqa: B023, E731
                scales = layer._logit_scales(length, moments).view(3, 1, -1, 1, 1)
                stds[name] = [
                    round(float(v), 3) for v in (terms * scales)[..., window].std((1, 2, 3))
                ]
        axial_attention.key_ranges = key_ranges
        diff = float((outs["all"] - outs["window"]).norm() / outs["window"].norm())
        print(f"L={length} m={span} {mode}: {float(window.float().mean()):.0%} of the pairs in the "
              f"window; in-window std of the normalised qk/qr/kr terms: window {stds['window']}, "
              f"all pairs {stds['all']}; outputs differ by {diff:.3f} (relative L2)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("init", "quickstart"))
    parser.add_argument("--stats", choices=("window", "all"), default="window")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="quick-start KEY VALUE overrides")
    args = parser.parse_args()
    if args.what == "init":
        init_check()
        return
    if args.stats == "all":
        axial_attention.key_ranges = _all_pairs
    from axial_deeplab import quickstart

    quickstart.main(args.opts)


if __name__ == "__main__":
    main()
