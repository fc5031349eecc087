"""Measure parity of our converted models with deeplab2 on reference folders.

The folders come from ``tools/parity/deeplab2_reference.py`` (full size: not committed; tiny:
``tests/fixtures/deeplab2/tiny``). For every zoo model found there, converts the checkpoint onto
our config, runs both on the same input and prints parameters, max |difference| of each output
(absolute and relative to the output's std) and the panoptic agreement after post-processing with
deeplab2's settings, from our outputs and (last column) from deeplab2's raw outputs. Cells are
max |difference| (relative to the output's std). Runs without TensorFlow (the built-in checkpoint
reader)::

    python tools/parity/check_deeplab2.py --references /tmp/dl2_ref/full --json parity.json
"""

from __future__ import annotations

import argparse
import json
import os

from axial_deeplab.checkpoint.deeplab2_parity import check_blocks, check_reference
from axial_deeplab.checkpoint.zoo import ZOO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--references", required=True, help="folder of <KEY>/ reference folders")
    parser.add_argument("--keys", nargs="*", help="zoo keys (default: every one found)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--float64", action="store_true", help="also run our model in float64 (round-off scale)"
    )
    parser.add_argument(
        "--blocks",
        metavar="DIR",
        help="block by block instead: DIR/<KEY>/ from deeplab2_reference.py --dump-blocks",
    )
    args = parser.parse_args()
    results = blocks_main(args) if args.blocks else zoo_main(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def zoo_main(args: argparse.Namespace) -> list[dict]:
    """Per model: whole-model outputs and panoptic maps against the reference's."""
    results = []
    print(
        "| model | params ours / deeplab2 | semantic | center | offset | panoptic | post-processing |"
    )
    print("|---|---|---|---|---|---|---|")
    for model in ZOO:
        folder = os.path.join(args.references, model.key)
        if (args.keys and model.key not in args.keys) or not os.path.isdir(folder):
            continue
        r = check_reference(
            folder, model.config, threads=args.threads or None, float64=args.float64 or None
        )
        r.pop("report")
        results.append(r)
        cells = [
            f"{d['max_abs']:.1e} ({d['max_rel']:.1e})"
            for name in ("semantic_logits", "center_heatmap", "offset_map")
            for key, d in r["differences"].items()
            if key.startswith(name)
        ]
        agree = [
            "identical" if p["identical"] else f"{p['fraction_differing']:.2%} px differ"
            for p in (r["panoptic"], r["panoptic_postprocessing"])
        ]
        print(
            f"| {model.key} | {r['parameters']:,} / {r['reference_parameters']:,} | "
            f"{' | '.join(cells)} | {agree[0]} ({r['panoptic']['segments']} segments) | "
            f"{agree[1]} |",
            flush=True,
        )
    return results


def blocks_main(args: argparse.Namespace) -> list[dict]:
    """Per model: every encoder module on deeplab2's own input, and the heads on its encoder
    outputs; prints the worst module and each output, as max |diff| / std (and RMS / std)."""
    results = []
    print("| model | modules | worst module: max (RMS) rel | semantic | center | offset |")
    print("|---|---|---|---|---|---|")
    for model in ZOO:
        folder = os.path.join(args.references, model.key)
        blocks_dir = os.path.join(args.blocks, model.key)
        if (args.keys and model.key not in args.keys) or not os.path.isdir(blocks_dir):
            continue
        r = check_blocks(folder, blocks_dir, model.config, threads=args.threads or None)
        results.append(r)
        worst = max(r["blocks"], key=lambda b: b["max_rel"])
        cells = [f"{d['max_rel']:.1e} ({d['rms_rel']:.1e})" for d in r["heads"].values()]
        print(
            f"| {model.key} | {len(r['blocks'])} | {worst['name']}: {worst['max_rel']:.1e} "
            f"({worst['rms_rel']:.1e}) | {' | '.join(cells)} |",
            flush=True,
        )
    return results


if __name__ == "__main__":
    main()
