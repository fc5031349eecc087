"""Bench: our Panoptic-DeepLab post-processing vs detectron2's, on CPU, 1024 x 2048, 30 instances.

Usage (detectron2's file is loaded by path from a snapshot outside this repository)::

    python bench/postprocessing.py --d2-post-processing \
        /tmp/d2/projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py

Inputs are synthetic but realistic: the targets of ``bench/targets.py``'s label (void turned into
small "sidewalk" regions), with seeded noise on the centre heatmap and the offsets. Each
implementation runs in its own subprocess so that its peak memory is its own: the peak resident
size during one call (reset just before it, Linux ``clear_refs``) less the resident size then; the median time of ``--repeats`` runs is printed side by side with the
ratios, and the panoptic maps are compared for equality.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targets import THING_IDS, ours, synthetic_label  # noqa: E402

from axial_deeplab.modeling.postprocessing import get_panoptic_segmentation  # noqa: E402

KWARGS = dict(label_divisor=1000, stuff_area=2048, void_label=-1, threshold=0.1, nms_kernel=7)


def make_inputs(path: str) -> None:
    """Write semantic [1, H, W], center [1, H, W], offsets [2, H, W] to an .npz file."""
    rng = np.random.default_rng(0)
    panoptic, segments = synthetic_label(rng)
    t = ours(panoptic, segments)
    semantic = np.where(t["sem_seg"] == 255, 1, t["sem_seg"])[None]
    center = t["center"] + rng.normal(0, 0.02, t["center"].shape).astype(np.float32)
    offset = t["offset"] + rng.normal(0, 2.0, t["offset"].shape).astype(np.float32)
    np.savez(path, semantic=semantic, center=center, offset=offset)


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the peak resident size (Linux ``clear_refs`` 5) to the current one; returns it (KiB).

    ``ru_maxrss`` cannot be reset, so a transient peak while loading the inputs would hide a
    smaller one during the call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def run_child(impl: str, inputs: str, d2_path: str, out: str, repeats: int) -> None:
    data = np.load(inputs)
    sem, ctr, off = (torch.from_numpy(data[k]) for k in ("semantic", "center", "offset"))
    if impl == "d2":
        spec = importlib.util.spec_from_file_location("d2_post", d2_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = module.get_panoptic_segmentation
    else:
        fn = get_panoptic_segmentation
    torch.set_num_threads(1)

    def call():
        return fn(sem, ctr, off, thing_ids=set(THING_IDS), top_k=200, **KWARGS)

    call()  # once untimed: lazy imports and first-call set-up are not the algorithm's memory
    before = _reset_peak_rss()
    panoptic, centers = call()
    peak_kib = _status_kib("VmHWM") - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    np.save(out + ".npy", panoptic.numpy())
    with open(out + ".json", "w") as f:
        json.dump({"time": float(np.median(times)), "peak_mib": peak_kib / 1024}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d2-post-processing", required=True, help="path of detectron2's file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["ours", "d2"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.inputs, args.d2_post_processing, args.out, args.repeats)
        return

    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        make_inputs(inputs)
        results = {}
        for impl in ("ours", "d2"):
            out = os.path.join(tmp, impl)
            cmd = [sys.executable, __file__, "--child", impl, "--inputs", inputs, "--out", out]
            cmd += ["--d2-post-processing", args.d2_post_processing, "--repeats", str(args.repeats)]
            subprocess.run(cmd, check=True)
            with open(out + ".json") as f:
                results[impl] = json.load(f)
            results[impl]["panoptic"] = np.load(out + ".npy")
    a, b = results["ours"], results["d2"]
    print("CPU, 1 thread, 1024 x 2048,", len(np.unique(a["panoptic"])), "segments in our output")
    print(f"{'':12s} {'time (s)':>10s} {'peak (MiB)':>11s}")
    for name, r in (("ours", a), ("detectron2", b)):
        print(f"{name:12s} {r['time']:10.3f} {r['peak_mib']:11.1f}")
    print(
        f"ratio        {a['time'] / b['time']:10.3f} {a['peak_mib'] / max(b['peak_mib'], 1e-9):11.3f}"
    )
    same = np.array_equal(a["panoptic"], b["panoptic"])
    print(
        "identical panoptic map:",
        same,
        "" if same else f"({(a['panoptic'] != b['panoptic']).sum()} px differ)",
    )


if __name__ == "__main__":
    main()
