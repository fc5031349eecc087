"""Benchmark: file-based PQ on seeded synthetic PNG pairs, against hotcoco and the COCO API.

    python bench/panoptic_eval.py [--num-images 200] [--height 480 --width 640] [--repeats 7]
        [--encodings ours pil] [--settings command fresh warm] [--panopticapi DIR]
        [--tools axial_deeplab hotcoco ...]

Generates ``--num-images`` ground-truth / prediction pairs (640x480 by default) with a seeded
generator into a temporary folder, once per PNG encoding: "ours" (our writer, OpenCV: Sub rows)
and "pil" (PIL's default encoder, as panopticapi's converters and so the official COCO and
Cityscapes PNGs write them: adaptive Sub/Up/Paeth rows). It runs every evaluator ``--repeats``
times, alternating them within each repeat so that load changes on a shared machine hit all
alike, checks that every evaluator's numbers equal ours to 1e-9 (All / Things / Stuff and per
class) and prints, per evaluator, the best and median wall-clock time, the median CPU time (all
threads and worker processes: steadier than wall time on a busy machine) and the ratios of our
medians to its.

Three settings, as timings depend on the process's state: "command", the whole command as a
user runs it, interpreter start-up and imports included (ours: ``python -m
axial_deeplab.evaluation.panoptic``; hotcoco: a ``python -c`` calling its ``pq_compute``;
panopticapi: the same with its ``pq_compute``); "fresh", each call in a new Python process
with only the call timed; "warm", every call in this process after the generation. Before the
first two, our package's bytecode is written (``compileall``), as an installed package has it.
Tools that are not installed are skipped with a note: ``pip install hotcoco`` (a Rust implementation),
``pip install cityscapesscripts``; panopticapi is not on PyPI: pass ``--panopticapi`` a folder
holding its source (the ``panopticapi`` package).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from axial_deeplab.data.panoptic_io import id2rgb, write_panoptic_png
from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files
from axial_deeplab.evaluation.synthetic import (
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)


def write_pil_png(path: str, ids: np.ndarray) -> None:
    """A panoptic PNG written by PIL with default settings, as panopticapi's converters do."""
    from PIL import Image

    Image.fromarray(id2rgb(ids)).save(path)


def generate(
    folder: str, num_images: int, height: int, width: int, seed: int, encoding: str = "ours"
) -> None:
    """Write ``gt/``, ``pred/``, ``gt.json`` and ``pred.json`` (COCO panoptic format); PNGs
    by our writer (``encoding="ours"``) or by PIL (``"pil"``)."""
    write = write_panoptic_png if encoding == "ours" else write_pil_png
    rng = np.random.default_rng(seed)
    categories = synthetic_categories(num_things=12, num_stuff=8)
    for sub in ("gt", "pred"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    images, gt_anns, pred_anns = [], [], []
    for i in range(num_images):
        gt, gt_segments = synthetic_ground_truth(rng, categories, height, width)
        pred, pred_segments = synthetic_prediction(rng, categories, gt, gt_segments)
        name = f"{i:06d}.png"
        write(os.path.join(folder, "gt", name), gt)
        write(os.path.join(folder, "pred", name), pred)
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "height": height, "width": width})
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": gt_segments})
        pred_anns.append({"image_id": i, "file_name": name, "segments_info": pred_segments})
    for name, anns in (("gt", gt_anns), ("pred", pred_anns)):
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": categories}, f)


def _evaluators(folder: str, args: argparse.Namespace) -> dict[str, Callable[[], dict]]:
    """name -> a call returning panopticapi-style results, for the tools that are installed."""
    gt_json, pred_json = os.path.join(folder, "gt.json"), os.path.join(folder, "pred.json")
    gt_dir, pred_dir = os.path.join(folder, "gt"), os.path.join(folder, "pred")
    tools = {
        "axial_deeplab": lambda: evaluate_panoptic_files(
            gt_json, gt_dir, pred_json, pred_dir, workers=args.workers, progress=False
        )
    }
    try:
        from hotcoco.panoptic import pq_compute as hotcoco_pq

        tools["hotcoco"] = lambda: hotcoco_pq(gt_json, pred_json, gt_dir, pred_dir)
    except ImportError:
        print("hotcoco not installed (pip install hotcoco): skipped")
    if args.panopticapi:
        sys.path.insert(0, args.panopticapi)
        from panopticapi.evaluation import pq_compute as coco_pq

        tools["panopticapi"] = lambda: coco_pq(gt_json, pred_json, gt_dir, pred_dir)
    else:
        print("panopticapi not given (--panopticapi SRC_DIR): skipped")
    try:
        from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

        out = os.path.join(folder, "cityscapes_results.json")
        tools["cityscapesscripts"] = lambda: evaluatePanoptic(
            gt_json, gt_dir, pred_json, pred_dir, out
        )
    except ImportError:
        print("cityscapesscripts not installed (pip install cityscapesscripts): skipped")
    return tools


def _max_difference(ours: dict, theirs: dict) -> float:
    """Largest |difference| over All/Things/Stuff and per-class PQ, SQ, RQ (inf if n differs)."""
    worst = 0.0
    for group in ("All", "Things", "Stuff"):
        if "n" in theirs[group] and theirs[group]["n"] != ours[group]["n"]:
            return float("inf")
        worst = max(worst, *(abs(ours[group][k] - theirs[group][k]) for k in ("pq", "sq", "rq")))
    for cat_id, entry in ours["per_class"].items():
        other = theirs["per_class"].get(cat_id, theirs["per_class"].get(str(cat_id)))
        worst = max(worst, *(abs(entry[k] - other[k]) for k in ("pq", "sq", "rq")))
    return worst


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for worker processes
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(run: Callable[[], dict]) -> tuple[float, float, dict]:
    """``(wall seconds, CPU seconds, results)`` of one call, its printing silenced."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()):
        results = run()
    return time.perf_counter() - start, _cpu_seconds() - cpu, results


def _run_fresh(name: str, folder: str, args: argparse.Namespace) -> tuple[float, float, dict]:
    """Time one evaluator in a new Python process; returns (wall s, CPU s, results)."""
    command = [sys.executable, __file__, "--run-one", name, "--folder", folder]
    if args.panopticapi:
        command += ["--panopticapi", args.panopticapi]
    if args.workers:
        command += ["--workers", str(args.workers)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    return answer["seconds"], answer["cpu"], answer["results"]


_CALLS = {  # the command a user types, as Python code, for the tools without our CLI
    "hotcoco": "from hotcoco.panoptic import pq_compute as f",
    "panopticapi": "from panopticapi.evaluation import pq_compute as f",
}


def _run_command(name: str, folder: str, args: argparse.Namespace) -> tuple[float, float, dict]:
    """Time a tool's whole command-line call (start-up included); returns (wall s, CPU s of the
    command and its children, results read back from its output)."""
    gt_json, pred_json = os.path.join(folder, "gt.json"), os.path.join(folder, "pred.json")
    gt_dir, pred_dir = os.path.join(folder, "gt"), os.path.join(folder, "pred")
    out = os.path.join(folder, f"{name}_results.json")
    env = dict(os.environ)
    if name == "axial_deeplab":
        command = [sys.executable, "-m", "axial_deeplab.evaluation.panoptic", "--gt-json", gt_json,
                   "--gt-dir", gt_dir, "--pred-json", pred_json, "--pred-dir", pred_dir,
                   "--output", out]  # fmt: skip
        if args.workers:
            command += ["--workers", str(args.workers)]
    else:
        if name == "panopticapi":
            env["PYTHONPATH"] = os.pathsep.join([args.panopticapi, env.get("PYTHONPATH", "")])
        code = (f"import json; {_CALLS[name]}; r = f({gt_json!r}, {pred_json!r}, {gt_dir!r}, "
                f"{pred_dir!r}); json.dump(r, open({out!r}, 'w'), default=float)")  # fmt: skip
        command = [sys.executable, "-c", code]
    cpu = _cpu_seconds()
    start = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    seconds = time.perf_counter() - start
    with open(out) as f:
        return seconds, _cpu_seconds() - cpu, json.load(f)


def _run_one(args: argparse.Namespace) -> None:
    """The child side of :func:`_run_fresh`: one timed call, a JSON line on stdout."""
    seconds, cpu, results = _timed(_evaluators(args.folder, args)[args.run_one])
    print(json.dumps({"seconds": seconds, "cpu": cpu, "results": results}, default=float))


def _report(title: str, times: dict[str, list[tuple[float, float]]], results: dict) -> None:
    """One line per evaluator: best and median wall s, median CPU s, ours / its medians."""
    median = {
        name: [statistics.median(t[i] for t in runs) for i in (0, 1)]
        for name, runs in times.items()
    }  # fmt: skip
    ours = median["axial_deeplab"]
    print(f"{title}\n{'evaluator':18s} {'best s':>7s} {'median s':>9s} {'cpu s':>7s} "
          f"{'ours/it wall':>13s} {'ours/it cpu':>12s} {'max |diff|':>11s}")  # fmt: skip
    for name, runs in times.items():
        diff = _max_difference(results["axial_deeplab"], results[name])
        wall, cpu = median[name]
        print(f"{name:18s} {min(t[0] for t in runs):7.3f} {wall:9.3f} {cpu:7.3f} "
              f"{ours[0] / wall:13.2f} {ours[1] / cpu:12.2f} {diff:11.1e}")  # fmt: skip
        if diff > 1e-9:
            raise SystemExit(f"{name} disagrees with ours by {diff}")


_TITLES = {
    "command": "the whole command, start-up included",
    "fresh": "a new process per call, the call timed",
    "warm": "calls in the generating process",
}


def _bench_encoding(folder: str, encoding: str, args: argparse.Namespace) -> dict:
    """Generate the PNGs in one encoding, time every tool in every setting; the last results."""
    start = time.perf_counter()
    generate(folder, args.num_images, args.height, args.width, args.seed, encoding)
    print(f"\n== {encoding}-encoded PNGs: {args.num_images} pairs of {args.width}x{args.height} "
          f"generated in {time.perf_counter() - start:.1f} s (seed {args.seed}); "
          f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    tools = _evaluators(folder, args)
    if args.tools:  # ours always: the others are compared with it
        wanted = {"axial_deeplab", *args.tools}
        tools = {name: run for name, run in tools.items() if name in wanted}
    runners = {"command": _run_command, "fresh": _run_fresh}
    for setting in args.settings:
        times: dict[str, list[tuple[float, float]]] = {}
        results: dict[str, dict] = {}
        if setting == "command":  # cityscapesscripts has no PNG-folder command of this shape
            tools = {name: run for name, run in tools.items() if name != "cityscapesscripts"}
        for repeat in range(args.repeats):  # interleaved: load changes hit every tool alike
            order = list(tools) if repeat % 2 == 0 else list(tools)[::-1]
            for name in order:
                if setting in runners:
                    seconds, cpu, results[name] = runners[setting](name, folder, args)
                else:
                    seconds, cpu, answer = _timed(tools[name])
                    results[name] = json.loads(json.dumps(answer, default=float))
                times.setdefault(name, []).append((seconds, cpu))
        _report(f"-- {encoding} PNGs, {setting}: {_TITLES[setting]}", times, results)
    return results


def _compile_package() -> None:
    """Write our package's bytecode (``__pycache__``, git-ignored), as ``pip install`` does for an
    installed package (hotcoco's is): from a source checkout on a machine that sets
    ``PYTHONDONTWRITEBYTECODE`` (these do), every command would compile our modules again, ~13 ms
    of a 0.1 s start-up that no installed copy pays."""
    import compileall

    import axial_deeplab

    folder = os.path.dirname(axial_deeplab.__file__)
    if not compileall.compile_dir(folder, quiet=1):
        print(f"could not write the bytecode of {folder}: commands compile it at each start")
    else:
        print(f"bytecode of {folder} written, as an installed package has it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, default=None, help="ours; default: all CPUs")
    parser.add_argument("--panopticapi", help="folder holding panopticapi's source")
    parser.add_argument("--tools", nargs="+", help="evaluators to time (default: all installed)")
    parser.add_argument(
        "--settings", nargs="+", default=["command", "warm"], choices=["command", "fresh", "warm"]
    )
    parser.add_argument("--encodings", nargs="+", default=["ours", "pil"], choices=["ours", "pil"])
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return _run_one(args)
    if {"command", "fresh"} & set(args.settings):
        _compile_package()
    for encoding in args.encodings:
        with tempfile.TemporaryDirectory() as folder:
            results = _bench_encoding(folder, encoding, args)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (this benchmark included)")
    ours = results["axial_deeplab"]["All"]
    print(f"PQ {100 * ours['pq']:.3f}  SQ {100 * ours['sq']:.3f}  RQ {100 * ours['rq']:.3f}  "
          f"over {ours['n']} classes; numbers equal to 1e-9 for every evaluator")  # fmt: skip


if __name__ == "__main__":
    main()
