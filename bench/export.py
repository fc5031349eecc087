"""Bench: eager vs torch.compile vs ONNX Runtime, per image on the CPU, network and post-processing apart.

Usage::

    python bench/export.py [--cases 641x641=CFG 1025x2049=CFG] [--weights CKPT] [--repeats 1]
                           [--rounds 1] [--exports DIR] [--compile-timeout 1800] [--onnx-optimize]
    python bench/export.py --post-only [--peaks 20 200] [--repeats 5] [--backends eager onnxruntime]

Each case is an image size with the config of the model run at that size; the default cases are
the issue's: 641x641 with Axial-DeepLab-S on COCO (``configs/coco/axial_deeplab_s_641.yaml``) and
1025x2049 with Axial-DeepLab-L on Cityscapes (``configs/cityscapes/axial_deeplab_l_1025x2049.yaml``),
with seeded random weights (or ``--weights``, a checkpoint carrying its config, for every case).
Per case the parent process writes the weights and two ONNX graphs with dynamic height and width
(the network: uint8 image -> softmax probabilities, centre heatmap, offsets; the
post-processing: those -> panoptic map, centres), then runs each backend in its own subprocess:

- ``eager``: the model under ``torch.no_grad()`` and the eager post-processing
  (``modeling/postprocessing.py``), as ``tools/infer.py`` runs them;
- ``compile``: ``torch.compile`` of the network and of the fixed-shape post-processing
  (``export/postprocessing.py``), compiled for the size during the warm-up run; a child still
  compiling after ``--compile-timeout`` seconds is stopped and reported with the time spent;
- ``onnxruntime``: the two ONNX graphs in ONNX Runtime sessions (CPU provider, default threads,
  memory arena and graph optimisation level); the graphs are written without the exporter's own
  optimisation pass unless ``--onnx-optimize`` (it took over 15 minutes on the full models here).

Each child runs one warm-up image (compilation included), then times ``--repeats`` images (median
wall-clock ms of the network, of the post-processing and of both). ``--rounds N`` runs the eager
and ONNX Runtime children N times in alternation (eager, onnxruntime, eager, ...; compile once), so
that load changes on a shared machine hit both, and adds a row per backend with the medians over
the rounds; its ratio is the median of the per-round ratios to eager. ``--exports DIR`` keeps the
weights and graphs of each case in ``DIR/HxW`` and reuses them when the case's config and weights
are the same (an export takes minutes). ``peak MiB``: the highest
resident memory during the timed runs over the resident memory once the model (or session) was
loaded, before the warm-up (``VmHWM`` reset through ``/proc/self/clear_refs`` after the warm-up),
so that memory a backend keeps from the warm-up (ONNX Runtime's arena) counts. ``warm-up s``: the
first run (with compilation). Every backend's network outputs and panoptic map are compared with
eager's: the largest absolute difference of the probabilities, the heatmap and the offsets, and
the fraction of panoptic pixels equal to eager's. A child that dies is reported with its exit
status (``-9``: killed, e.g. by the kernel for memory). The load average is printed before and
after (the machine may be shared: compare backends within one run).

``--post-only``: the post-processing alone, without the network (whose export takes minutes), on
synthetic outputs shaped like a trained model's. Per case: the config's post-processing settings
and its data set's classes (``DATASETS.TEST[0]``: COCO 133 classes, things 0..79; Cityscapes 19,
things 11..18), and one scene per ``--peaks`` value: that many instances on a jittered grid, each
a disc of one thing class around its centre (a Gaussian peak in the heatmap, offsets pointing to
it) on blocks of stuff classes; the semantic input is probabilities whose argmax is that map (the
argmax is part of the timed post-processing, as in the full bench). Only the post-processing graph
is exported. The backends run in this process, alternating image by image (median of
``--repeats``), with ``--threads`` threads each if given (on a loaded machine, one thread avoids
the waits of multi-threaded regions on a descheduled thread, which hit eager's many small
operations most); the panoptic maps are compared with eager's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from axial_deeplab.engine.evaluate import VOID_LABEL, PostProcessing  # noqa: E402
from axial_deeplab.engine.inference import InferenceMetadata  # noqa: E402
from axial_deeplab.export.pipeline import MAX_SIZE, MIN_SIZE, PanopticPipeline  # noqa: E402
from axial_deeplab.export.tracing import traceable_model  # noqa: E402
from axial_deeplab.modeling.postprocessing import (  # noqa: E402
    get_panoptic_segmentation,
)

BACKENDS = ("eager", "compile", "onnxruntime")
DEFAULT_CASES = (
    "641x641=configs/coco/axial_deeplab_s_641.yaml",
    "1025x2049=configs/cityscapes/axial_deeplab_l_1025x2049.yaml",
)
CPU = ["MODEL.DEVICE", "cpu"]


class Network(torch.nn.Module):
    def __init__(self, pipeline: PanopticPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, image):
        return self.pipeline.network(image)


class Post(Network):
    def forward(self, prob, center, offset):
        return self.pipeline.panoptic(prob, center, offset)


def build(work: str) -> PanopticPipeline:
    """The pipeline of ``work/model.pth`` and ``work/setup.json`` (written by the parent)."""
    from axial_deeplab.config import load_config
    from axial_deeplab.modeling.build import build_model

    with open(os.path.join(work, "setup.json"), encoding="utf-8") as f:
        setup = json.load(f)
    cfg = load_config(setup["config"], setup["opts"])
    model = build_model(cfg)
    model.load_state_dict(torch.load(os.path.join(work, "model.pth"), weights_only=True))
    meta = InferenceMetadata(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in setup["metadata"].items() if k != "class_colors"})  # fmt: skip
    return PanopticPipeline(
        model,
        metadata=meta,
        postprocessing=PostProcessing(**setup["postprocessing"]),
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
    )


def prepare(weights: str, config: str, work: str, optimize: bool) -> None:
    """Weights, setup and the two ONNX graphs of one case into ``work``."""
    case = [weights, config]  # (config may be replaced by the checkpoint's below)
    from axial_deeplab.export.cli import build_pipeline
    from axial_deeplab.export.pipeline import example_image

    if weights:
        pipeline = build_pipeline(weights, config, CPU)
        opts = CPU
        if not config:  # the checkpoint's own config
            from axial_deeplab.checkpoint.io import load_checkpoint_file

            config = os.path.join(work, "config.yaml")
            with open(config, "w", encoding="utf-8") as f:
                f.write(load_checkpoint_file(weights).config_yaml)
    else:
        from axial_deeplab.config import load_config
        from axial_deeplab.modeling.build import build_model

        opts = CPU
        cfg = load_config(config, opts)
        torch.manual_seed(0)
        pipeline = PanopticPipeline(
            build_model(cfg),
            metadata=InferenceMetadata.generic(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (0, 1, 2)),
            postprocessing=PostProcessing.from_config(cfg),
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        )
    torch.save(pipeline.model.state_dict(), os.path.join(work, "model.pth"))
    description = pipeline.description()
    setup = {"config": config, "opts": opts, "metadata": description["metadata"],
             "postprocessing": description["postprocessing"], "case": case}  # fmt: skip
    with open(os.path.join(work, "setup.json"), "w", encoding="utf-8") as f:
        json.dump(setup, f)
    dim = torch.export.Dim.DYNAMIC(min=MIN_SIZE, max=MAX_SIZE)
    image = example_image()
    with torch.no_grad(), traceable_model():
        net = torch.export.export(Network(pipeline), (image,), dynamic_shapes=({0: dim, 1: dim},))
        raw = pipeline.network(image)
        post = torch.export.export(
            Post(pipeline),
            raw,
            dynamic_shapes=({1: dim, 2: dim}, {1: dim, 2: dim}, {1: dim, 2: dim}),
        )
    for program, example, name in ((net, (image,), "net"), (post, raw, "post")):
        path = os.path.join(work, f"{name}.onnx")
        torch.onnx.export(program, example, path, dynamo=True, optimize=optimize)


def _memory_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def runners(backend: str, work: str, pipeline: PanopticPipeline):
    """``(network, post)`` callables for ``backend``: image -> raw, raw -> panoptic numpy."""
    if backend == "onnxruntime":
        import onnxruntime

        options = {"providers": ["CPUExecutionProvider"]}
        net = onnxruntime.InferenceSession(os.path.join(work, "net.onnx"), **options)
        post = onnxruntime.InferenceSession(os.path.join(work, "post.onnx"), **options)
        post_names = [i.name for i in post.get_inputs()]
        return (
            lambda image: net.run(None, {net.get_inputs()[0].name: image.numpy()}),
            lambda raw: post.run(None, dict(zip(post_names, raw, strict=True)))[0],
        )
    if backend == "compile":
        net = torch.compile(Network(pipeline), dynamic=False)
        post = torch.compile(Post(pipeline), dynamic=False)
        return (lambda image: net(image), lambda raw: post(*raw)[0].numpy())
    meta, settings = pipeline.metadata, pipeline.postprocessing

    def eager_post(raw):
        prob, center, offset = raw
        panoptic, _ = get_panoptic_segmentation(
            prob.argmax(0, keepdim=True), center, offset, thing_ids=meta.thing_ids,
            label_divisor=meta.label_divisor, stuff_area=settings.stuff_area,
            void_label=VOID_LABEL, threshold=settings.threshold,
            nms_kernel=settings.nms_kernel, top_k=settings.top_k,
        )  # fmt: skip
        return panoptic[0].numpy()

    return (lambda image: pipeline.network(image), eager_post)


def child(backend: str, work: str, size: str, repeats: int) -> None:
    height, width = (int(v) for v in size.split("x"))
    pipeline = build(work).eval()
    network, post = runners(backend, work, pipeline)
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen)
    times: dict[str, list[float]] = {"network": [], "post": []}
    base = _memory_kib("VmRSS:")  # loaded, before the first run
    with torch.no_grad():
        start = time.perf_counter()
        raw = network(image)
        panoptic = post(raw)  # warm-up (and compilation)
        warmup = time.perf_counter() - start
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset VmHWM to the current VmRSS
        for _ in range(repeats):
            start = time.perf_counter()
            raw = network(image)
            middle = time.perf_counter()
            panoptic = post(raw)
            times["network"].append(middle - start)
            times["post"].append(time.perf_counter() - middle)
    peak = (_memory_kib("VmHWM:") - base) / 1024
    net_ms, post_ms = (1000 * float(np.median(v)) for v in times.values())
    total = 1000 * float(np.median(np.add(times["network"], times["post"])))
    outputs = {
        name: np.asarray(t) for name, t in zip(("prob", "center", "offset"), raw, strict=True)
    }
    np.savez(os.path.join(work, f"{backend}.npz"), panoptic=np.asarray(panoptic), **outputs)
    print(json.dumps({"network_ms": net_ms, "post_ms": post_ms, "total_ms": total,
                      "peak_mib": peak, "warmup_s": warmup,
                      "segments": int(len(np.unique(panoptic)))}))  # fmt: skip


def compare(work: str, backend: str) -> str:
    """``backend``'s outputs against eager's: max |diff| of the network outputs, panoptic pixels."""
    with (
        np.load(os.path.join(work, "eager.npz")) as ref,
        np.load(os.path.join(work, f"{backend}.npz")) as got,
    ):
        diffs = [float(np.abs(got[k] - ref[k]).max()) for k in ("prob", "center", "offset")]
        same = float((got["panoptic"] == ref["panoptic"]).mean())
    if backend == "eager":
        return "(reference)"
    return f"{100 * same:.4f}% | {diffs[0]:.1e} {diffs[1]:.1e} {diffs[2]:.1e}"


def run_child(backend: str, work: str, size: str, repeats: int, timeout: float | None):
    """``(result dict, None)`` or ``(None, why it failed)``."""
    cmd = [sys.executable, __file__, "--child", backend, work, size, "--repeats", str(repeats)]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"stopped after {time.perf_counter() - start:.0f} s (--compile-timeout)"
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["empty stderr"]
        return None, (
            f"exit status {done.returncode} after {time.perf_counter() - start:.0f} s: "
            f"{tail[0][-200:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="", help="checkpoint (default: random weights)")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(DEFAULT_CASES),
        metavar="HxW=CONFIG",
        help="sizes and the config of each (with --weights: HxW alone, the checkpoint's config)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--rounds", type=int, default=1, help="eager and onnxruntime children, alternating"
    )
    parser.add_argument("--exports", default="", help="keep and reuse each case's exports here")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "--compile-timeout", type=float, default=1800.0, help="seconds for a compile child"
    )
    parser.add_argument(
        "--onnx-optimize",
        action="store_true",
        help="the ONNX exporter's own graph optimisation (slow on the full models; ONNX Runtime "
        "optimises the graph when it loads it either way)",
    )
    parser.add_argument(
        "--post-only",
        action="store_true",
        help="the post-processing alone, on synthetic outputs (no network export)",
    )
    parser.add_argument(
        "--peaks",
        nargs="+",
        type=int,
        default=[20, 200],
        help="--post-only: instances per synthetic scene, one scene per value",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="--post-only: threads of torch and of ONNX Runtime (default: their own defaults)",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("BACKEND", "WORK", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeats)
        return
    if "eager" not in args.backends:
        parser.error("--backends: eager is the reference and must be run")
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"--rounds and --repeats: expected >= 1, got {args.rounds} and {args.repeats}")
    if args.exports and os.path.exists(args.exports) and not os.path.isdir(args.exports):
        parser.error(f"--exports: {args.exports} exists and is not a folder")
    backends = ["eager", *(b for b in args.backends if b != "eager")]
    cases = []
    for case in args.cases:
        size, _, config = case.partition("=")
        try:
            height, width = (int(v) for v in size.split("x"))
        except ValueError:
            parser.error(f"--cases: expected HxW=CONFIG, got {case!r}")
        if not MIN_SIZE <= min(height, width) <= max(height, width) <= MAX_SIZE:
            parser.error(f"--cases: {size} outside {MIN_SIZE}..{MAX_SIZE}")
        if not config and not args.weights:
            parser.error(f"--cases: {case!r} names no config (HxW=CONFIG)")
        cases.append((size, config and os.path.join(REPO, config)))
    if args.post_only:
        if args.weights:
            parser.error("--post-only runs no network: --weights does not apply")
        from export_post import post_only  # (the --post-only mode lives there)

        post_only(cases, backends, args.peaks, args.repeats, args.threads)
        return
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("columns: network / post-processing / total ms (median of --repeats), total vs eager, "
          "peak MiB, warm-up s, then vs eager: identical panoptic pixels | max |diff| of "
          "probabilities, centre heatmap, offsets")  # fmt: skip
    for size, config in cases:
        with contextlib.ExitStack() as stack:
            if args.exports:
                work = os.path.join(args.exports, size)
                os.makedirs(work, exist_ok=True)
            else:
                work = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_export_"))
            name = os.path.relpath(config, REPO) if config else args.weights
            if _prepared(work, args.weights, config):
                print(f"{size} {name}: the network and post-processing exported in {work}")
            else:
                start = time.perf_counter()
                prepare(args.weights, config, work, args.onnx_optimize)
                print(f"{size} {name}: exported the network and the post-processing in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
            run_case(work, size, backends, args)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _prepared(work: str, weights: str, config: str) -> bool:
    """``work`` holds the exports of this case (``--exports``): same config and weights."""
    try:
        with open(os.path.join(work, "setup.json"), encoding="utf-8") as f:
            setup = json.load(f)
    except FileNotFoundError:
        return False
    names = ("model.pth", "net.onnx", "post.onnx")
    files = all(os.path.isfile(os.path.join(work, n)) for n in names)
    return files and setup.get("case") == [weights, config]


def _row(size: str, backend: str, r: dict, ratio: float, tail: str) -> str:
    return (f"{size:>10} {backend:>12} {r['network_ms']:11.1f} {r['post_ms']:8.1f} "
            f"{r['total_ms']:9.1f} {ratio:6.2f} {r['peak_mib']:8.1f} {r['warmup_s']:7.1f}  "
            f"{tail}")  # fmt: skip


def run_case(work: str, size: str, backends: list[str], args: argparse.Namespace) -> None:
    """Every backend's child on one prepared case, ``--rounds`` times (compile once)."""
    results: dict[str, list[dict]] = {b: [] for b in backends}
    ratios: dict[str, list[float]] = {b: [] for b in backends}
    for index in range(args.rounds):
        eager = None
        for backend in backends:
            if backend == "compile" and index:
                continue
            timeout = args.compile_timeout if backend == "compile" else None
            r, why = run_child(backend, work, size, args.repeats, timeout)
            if r is None:
                print(f"{size:>10} {backend:>12} failed: {why}", flush=True)
                if backend == "eager":
                    return
                continue
            eager = eager or r
            results[backend].append(r)
            ratios[backend].append(r["total_ms"] / eager["total_ms"])
            label = f"{backend}" if args.rounds == 1 else f"{backend} {index + 1}"
            print(_row(size, label, r, ratios[backend][-1], compare(work, backend)), flush=True)
            if backend != "eager":
                os.remove(os.path.join(work, f"{backend}.npz"))
    if args.rounds > 1:
        for backend in backends:
            if results[backend]:
                median = {k: float(np.median([r[k] for r in results[backend]]))
                          for k in results[backend][0] if k != "segments"}  # fmt: skip
                print(_row(size, f"{backend} median", median, float(np.median(ratios[backend])),
                           f"over {len(results[backend])} rounds"), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
