"""Bench: peak memory of one training step with and without gradient checkpointing.

Usage::

    python bench/gradient_checkpointing.py --variant axial_resnet_s --batch 2 --size 129 129

Builds Axial-DeepLab (``build_model`` on the default config, ``MODEL.AXIAL_RESNET.VARIANT`` and
``SPAN`` from the command line; ``--backbone-only`` for the Axial-ResNet alone) once with
``MODEL.AXIAL_RESNET.GRADIENT_CHECKPOINTING False`` and once with ``True``, each in a fresh Python
process, and runs one training step (forward, a scalar loss on every output, backward) on random
CPU images. The peak is the growth of the process's maximum resident set size (``ru_maxrss``)
during that step, over what the built model and the inputs already hold. Prints both peaks, the
saving and the step times (checkpointing recomputes each axial block's forward in backward).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_step_peak(args: argparse.Namespace) -> dict[str, float]:
    """One forward + backward in this process; memory growth (MiB) and time (s)."""
    import torch

    from axial_deeplab.config import get_cfg
    from axial_deeplab.modeling.backbone.build import build_backbone
    from axial_deeplab.modeling.build import build_model

    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.AXIAL_RESNET.VARIANT", args.variant,
            "MODEL.AXIAL_RESNET.SPAN", args.span,
            "MODEL.AXIAL_RESNET.GRADIENT_CHECKPOINTING", bool(args.checkpointing),
        ]
    )  # fmt: skip
    model = (build_backbone if args.backbone_only else build_model)(cfg).train()
    images = torch.randn(args.batch, 3, *args.size)
    before = peak_rss_mib()
    start = time.perf_counter()
    outputs = model(images)
    loss = sum(v.float().square().mean() for v in outputs.values())
    loss.backward()
    seconds = time.perf_counter() - start
    return {"growth_mib": peak_rss_mib() - before, "baseline_mib": before, "seconds": seconds}


def run_worker(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """``train_step_peak`` in a fresh interpreter, so that neither run sees the other's peak."""
    cmd = [sys.executable, __file__, "--worker", "--checkpointing", str(int(checkpointing))]
    cmd += ["--variant", args.variant, "--span", str(args.span), "--batch", str(args.batch)]
    cmd += ["--size", *map(str, args.size)] + (["--backbone-only"] if args.backbone_only else [])
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(cmd)}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="axial_resnet_s")
    parser.add_argument("--span", type=int, default=65)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(129, 129), metavar=("H", "W"))
    parser.add_argument("--backbone-only", action="store_true", help="the Axial-ResNet alone")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(train_step_peak(args)))
        return
    model = f"{args.variant} {'backbone' if args.backbone_only else 'Axial-DeepLab'}"
    print(f"{model}, span {args.span}, batch {args.batch} x 3 x {args.size[0]} x {args.size[1]}")
    runs = {flag: run_worker(args, flag) for flag in (False, True)}
    for flag, r in runs.items():
        print(
            f"  checkpointing {'on ' if flag else 'off'}: peak +{r['growth_mib']:8.1f} MiB over "
            f"{r['baseline_mib']:.1f} MiB, step {r['seconds']:.2f} s"
        )
    off, on = runs[False]["growth_mib"], runs[True]["growth_mib"]
    print(f"  saving: {off - on:.1f} MiB ({100 * (off - on) / off:.1f}% of the step's peak)")


if __name__ == "__main__":
    main()
