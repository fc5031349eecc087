"""Benchmark: our AxialAttention height+width pair against the authors' PyTorch layer pair (CPU).

    python bench/axial_attention.py --authors-repo /tmp/authors

The authors' code (csrhddlam/axial-deeplab, ``lib/models/axialnet.py``, class ``AxialAttention``,
``width=False`` then ``width=True``) is imported from ``--authors-repo`` (default: env
``AXIAL_AUTHORS_REPO``), never from this repository. Their weights are random with random BN
statistics and affine parameters, and are converted to ours with
``axial_deeplab.checkpoint.authors.convert_attention_layer``, so both pairs compute the same function.

Reported per mode (``train``: forward + backward of ``(pair(x) * g).sum()`` in train mode, input
requiring grad; ``eval``: forward under ``torch.no_grad()`` in eval mode):

- time: median over ``--repeats`` runs after ``--warmup`` runs, ours and theirs alternating (who
  goes first alternates too), both with the same ``torch.set_num_threads``; wall-clock ms, and the
  process CPU time (all threads), which is less sensitive to other jobs on a shared machine. The
  ratio is the median of the per-repeat ratios (the two runs of a repeat are adjacent in time, so
  load changes mostly cancel), with its quartiles as the spread;
- allocator: glibc's defaults, or with ``--keep-freed-memory`` the process keeps freed memory
  for reuse (``mallopt``, ``utils.host_memory.keep_freed_memory``). The authors' layer
  allocates ``[B, 3G, L, L]`` tensors of ~50 MB each call; with glibc's defaults whether those
  come back as fresh pages (page faults) depends on the process's allocation history, which
  moved their time by up to 2x between runs (ours works in reused chunk buffers and barely
  changes), so the ratio swung from run to run. With the option, 1 thread: quartiles within
  +-0.01 (2026-11-30); 2 threads: one run's train steps took ~20x longer for both layers, not
  understood (so it is not the default);
- max |ours - theirs| of the output (train and eval, from the same initial state);
- peak memory: each (implementation, mode) runs in a fresh subprocess that builds the layers and the
  input, resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``), reads the
  resident set size ``VmRSS``, runs ``--memory-steps`` steps and reads the high-water mark ``VmHWM``
  (Linux ``/proc/self/status``); the difference is the peak memory the steps needed on top of the
  model and input, as the process saw it (allocator caches and the gradients of the step included).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from axial_deeplab.checkpoint.authors import convert_attention_layer
from axial_deeplab.layers import AxialAttention
from axial_deeplab.utils.host_memory import keep_freed_memory
from axial_deeplab.utils.model_stats import matmul_peak

PAIR = ("ours", "theirs")
GOAL = 0.35  # issue 14's target, ours / theirs


def import_authors(repo: str) -> types.ModuleType:
    """``lib/models/axialnet.py`` of the authors' checkout, without running ``lib/__init__``."""
    models = Path(repo) / "lib" / "models"
    if not (models / "axialnet.py").is_file():
        raise FileNotFoundError(f"--authors-repo {repo}: no lib/models/axialnet.py there")
    package = types.ModuleType("authors_models")
    package.__path__ = [str(models)]
    sys.modules["authors_models"] = package
    return importlib.import_module("authors_models.axialnet")


def randomize_norms(module: nn.Module, gen: torch.Generator) -> None:
    """Random BN affine parameters and running statistics (so eval mode is not an identity)."""
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.weight.data.uniform_(0.5, 1.5, generator=gen)
            bn.bias.data.normal_(0.0, 0.2, generator=gen)
            bn.running_mean.normal_(0.0, 0.2, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)


def build_pairs(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """(ours, theirs): height then width attention, the same weights."""
    authors = import_authors(args.authors_repo)
    torch.manual_seed(0)
    c, k = args.channels, args.span
    theirs = nn.Sequential(
        authors.AxialAttention(c, c, groups=8, kernel_size=k),
        authors.AxialAttention(c, c, groups=8, kernel_size=k, width=True),
    )
    randomize_norms(theirs, torch.Generator().manual_seed(1))
    ours = nn.Sequential(
        AxialAttention(c, c, axis="height", span=k, span_mode="global"),
        AxialAttention(c, c, axis="width", span=k, span_mode="global"),
    )
    for mine, their in zip(ours, theirs):
        mine.load_state_dict(convert_attention_layer(their.state_dict()))
    return ours, theirs


def make_step(model: nn.Module, mode: str, x: torch.Tensor, grad: torch.Tensor):
    """A closure running one ``train`` (fwd + bwd) or ``eval`` (no-grad fwd) step."""
    model.train(mode == "train")

    def step() -> None:
        if mode == "train":
            model(x).backward(grad)
        else:
            with torch.no_grad():
                model(x)

    return step


def inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.randn(shape, generator=gen).requires_grad_(True)
    return x, torch.randn(shape, generator=gen)


def output_difference(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, mode: str) -> float:
    ours.train(mode == "train")
    theirs.train(mode == "train")
    with torch.no_grad():
        return (ours(x) - theirs(x)).abs().max().item()


def time_modes(args: argparse.Namespace) -> dict:
    ours, theirs = build_pairs(args)
    x, grad = inputs(args)
    diffs = {mode: output_difference(ours, theirs, x, mode) for mode in ("train", "eval")}
    results = {}
    for mode in ("train", "eval"):
        steps = {"ours": make_step(ours, mode, x, grad), "theirs": make_step(theirs, mode, x, grad)}
        wall: dict[str, list[float]] = {"ours": [], "theirs": []}
        cpu: dict[str, list[float]] = {"ours": [], "theirs": []}
        for i in range(args.warmup + args.repeats):
            for name in PAIR if i % 2 == 0 else PAIR[::-1]:  # who goes first alternates
                start, start_cpu = time.perf_counter(), time.process_time()
                steps[name]()
                if i >= args.warmup:
                    wall[name].append(1e3 * (time.perf_counter() - start))
                    cpu[name].append(1e3 * (time.process_time() - start_cpu))
        results[mode] = {name: statistics.median(t) for name, t in wall.items()}
        results[mode].update({f"{name} cpu": statistics.median(t) for name, t in cpu.items()})
        # Paired ratios: each repeat's two runs are adjacent in time, so a load change on a
        # shared machine mostly cancels in their ratio; its median and quartiles are reported.
        for kind, table in (("wall", wall), ("cpu", cpu)):
            ratios = sorted(a / b for a, b in zip(table["ours"], table["theirs"]))
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            results[mode][f"{kind} ratio"] = (quartiles[0], statistics.median(ratios), quartiles[2])
        results[mode]["diff"] = diffs[mode]
    return results


def arithmetic_floor(args: argparse.Namespace, times: dict, earlier_peak: float) -> dict:
    """Per mode: the matrix-product work of one step (``torch.utils.flop_counter``, counted on a
    real step of each layer; the smaller count, as both compute the same function), this
    machine's float32 matmul rate (``matmul_peak``, 2048^3, the bench's threads; the better of
    ``earlier_peak``, measured before the timed runs, and one now) and what
    follows: the fastest any float32 implementation could run the step, and the share of that
    rate a layer must sustain to take ``GOAL`` x the authors' time."""
    ours, theirs = build_pairs(args)
    x, grad = inputs(args)
    peak = max(matmul_peak(2048, repeats=5), earlier_peak)
    floors = {}
    for mode in ("train", "eval"):
        counts = []
        for model in (ours, theirs):
            with FlopCounterMode(display=False) as counter:
                make_step(model, mode, x, grad)()
            counts.append(counter.get_total_flops())
        flop, row = min(counts), times[mode]
        floors[mode] = {
            "flop": flop,
            "floor_ms": 1e3 * flop / peak,
            "floor_ratio": 1e3 * flop / peak / row["theirs"],
            "share_of_peak": {name: 1e3 * flop / peak / row[name] for name in PAIR},
            "share_of_peak_at_goal": flop / peak / (GOAL * row["theirs"] / 1e3),
        }
    return {"matmul_peak_flop_per_s": peak, "modes": floors}


def _status_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(args: argparse.Namespace) -> None:
    """Print the peak RSS growth (MiB) of ``--memory-steps`` steps of one implementation/mode."""
    ours, theirs = build_pairs(args)
    model = ours if args.child_impl == "ours" else theirs
    x, grad = inputs(args)
    step = make_step(model, args.child_mode, x, grad)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    for _ in range(args.memory_steps):
        step()
        x.grad = None
        model.zero_grad(set_to_none=True)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024.0}))


def memory_modes(args: argparse.Namespace) -> dict:
    results: dict[str, dict[str, float]] = {"train": {}, "eval": {}}
    for mode in results:
        for impl in ("ours", "theirs"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child-impl", impl]
            cmd += ["--child-mode", mode]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[mode][impl] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-repo", default=os.environ.get("AXIAL_AUTHORS_REPO"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=65, help="H = W (their layer needs = span)")
    parser.add_argument("--span", type=int, default=65, help="global span = their kernel_size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the arithmetic floor (matmul work / peak)"
    )
    parser.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="glibc keeps freed memory for reuse (no page faults for either layer)",
    )
    parser.add_argument("--child-impl", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", choices=("train", "eval"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.authors_repo:
        parser.error("pass --authors-repo (or set AXIAL_AUTHORS_REPO) to the authors' checkout")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    if args.child_impl:
        memory_child(args)
        return
    peak_before = 0.0 if args.no_floor else matmul_peak(2048, repeats=5)
    times = time_modes(args)
    memory = None if args.no_memory else memory_modes(args)
    print(
        f"AxialAttention height+width pair, N={args.batch}, C={args.channels}, "
        f"{args.size}x{args.size}, global span {args.span}, {args.threads} thread(s), "
        f"median of {args.repeats}, "
        f"{'freed memory kept' if args.keep_freed_memory else 'glibc malloc defaults'}"
    )
    print(
        "mode   ours ms  theirs ms  ratio [q1-q3]    | cpu ms ours  theirs  ratio [q1-q3]    "
        "| max|diff|  peak MiB ours  theirs"
    )
    for mode, row in times.items():
        peak = ("-", "-") if memory is None else tuple(f"{memory[mode][i]:.1f}" for i in PAIR)
        wall, cpu = row["wall ratio"], row["cpu ratio"]
        print(
            f"{mode:<5} {row['ours']:8.1f} {row['theirs']:10.1f} {wall[1]:6.2f} [{wall[0]:.2f}-"
            f"{wall[2]:.2f}] | {row['ours cpu']:11.1f} {row['theirs cpu']:7.1f} {cpu[1]:6.2f} "
            f"[{cpu[0]:.2f}-{cpu[2]:.2f}] | {row['diff']:9.2e}  {peak[0]:>13}  {peak[1]:>6}"
        )
    print("ratio: median of the per-repeat ratios ours/theirs (runs adjacent in time), [quartiles]")
    if args.no_floor:
        return
    floor = arithmetic_floor(args, times, peak_before)
    print(
        f"arithmetic floor (matmul work / this machine's float32 matmul peak now, "
        f"{floor['matmul_peak_flop_per_s'] / 1e9:.0f} GFLOP/s on {args.threads} thread(s)):"
    )
    for mode, f in floor["modes"].items():
        share = f["share_of_peak"]
        print(
            f"  {mode:<5} {f['flop'] / 1e9:.2f} GFLOP -> >= {f['floor_ms']:.1f} ms = "
            f"{f['floor_ratio']:.2f}x theirs; runs at {share['ours']:.0%} (ours) and "
            f"{share['theirs']:.0%} (theirs) of that peak; {GOAL}x theirs needs "
            f"{f['share_of_peak_at_goal']:.0%}"
        )


if __name__ == "__main__":
    main()
