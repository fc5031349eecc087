"""Bench: eager vs torch.compile vs ONNX Runtime, per image on the CPU, network and post-processing apart.

Usage::

    python bench/export.py [--weights CKPT] [--config-file CFG] [--sizes 641x641 1025x2049]
                           [--repeats 3]

The model is ``--weights`` (a checkpoint carrying its config) or, without it, the quick-start config
(``configs/quickstart/synthetic_axial.yaml``) with seeded random weights. The parent process writes
the weights and two ONNX graphs with dynamic height and width (the network: uint8 image -> softmax
probabilities, centre heatmap, offsets; the post-processing: those -> panoptic map, centres), then
runs each backend at each size in its own subprocess:

- ``eager``: the model under ``torch.no_grad()`` and the eager post-processing
  (``modeling/postprocessing.py``), as ``tools/infer.py`` runs them;
- ``compile``: ``torch.compile`` of the network and of the fixed-shape post-processing
  (``export/postprocessing.py``), compiled for the size before timing;
- ``onnxruntime``: the two ONNX graphs in ONNX Runtime sessions (CPU provider, default threads).

Each child times ``--repeats`` images after one warm-up run (median wall-clock ms of the network, of
the post-processing and of both) and reports its peak resident memory growth over the loaded
state (``VmHWM`` reset through ``/proc/self/clear_refs`` after the warm-up, minus ``VmRSS`` then).
The panoptic maps of every backend are compared with eager's.
"""

from __future__ import annotations

import argparse
import hashlib
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
from axial_deeplab.modeling.postprocessing import get_panoptic_segmentation  # noqa: E402

BACKENDS = ("eager", "compile", "onnxruntime")
DEFAULT_CONFIG = os.path.join(REPO, "configs", "quickstart", "synthetic_axial.yaml")


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


def prepare(args, work: str) -> None:
    """Weights, setup and the two ONNX graphs into ``work``."""
    from axial_deeplab.export.cli import build_pipeline
    from axial_deeplab.export.pipeline import example_image

    if args.weights:
        pipeline = build_pipeline(args.weights, args.config_file)
        config, opts = args.config_file, []
        if not config:  # the checkpoint's own config
            from axial_deeplab.checkpoint.io import load_checkpoint_file

            config = os.path.join(work, "config.yaml")
            with open(config, "w", encoding="utf-8") as f:
                f.write(load_checkpoint_file(args.weights).config_yaml)
    else:
        from axial_deeplab.config import load_config
        from axial_deeplab.modeling.build import build_model

        config, opts = args.config_file or DEFAULT_CONFIG, []
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
             "postprocessing": description["postprocessing"]}  # fmt: skip
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
    torch.onnx.export(net, (image,), os.path.join(work, "net.onnx"), dynamo=True)
    torch.onnx.export(post, raw, os.path.join(work, "post.onnx"), dynamo=True)


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
    with torch.no_grad():
        panoptic = post(network(image))  # warm-up (and compilation)
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # reset VmHWM to the current VmRSS
        base = _memory_kib("VmRSS:")
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
    digest = hashlib.sha256(np.ascontiguousarray(panoptic, dtype=np.int64).tobytes()).hexdigest()
    print(json.dumps({"network_ms": net_ms, "post_ms": post_ms, "total_ms": total,
                      "peak_mib": peak, "panoptic_sha256": digest,
                      "segments": int(len(np.unique(panoptic)))}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="", help="checkpoint (default: random weights)")
    parser.add_argument("--config-file", default="", help="config (default: the checkpoint's)")
    parser.add_argument("--sizes", nargs="+", default=["641x641", "1025x2049"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "--child", nargs=3, metavar=("BACKEND", "WORK", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeats)
        return
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        prepare(args, work)
        print(
            f"exported the network and the post-processing in {time.perf_counter() - start:.0f} s"
        )
        print(f"{'size':>10} {'backend':>12} {'network ms':>11} {'post ms':>8} {'total ms':>9} "
              f"{'vs eager':>8} {'peak MiB':>9}  panoptic")  # fmt: skip
        for size in args.sizes:
            results = {}
            for backend in args.backends:
                cmd = [sys.executable, __file__, "--child", backend, work, size,
                       "--repeats", str(args.repeats)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    print(f"{size:>10} {backend:>12} failed: {done.stderr.strip()[-400:]}")
                    continue
                results[backend] = r = json.loads(done.stdout.strip().splitlines()[-1])
                ref = results.get("eager", r)
                same = "= eager" if r["panoptic_sha256"] == ref["panoptic_sha256"] else "DIFFERS"
                print(f"{size:>10} {backend:>12} {r['network_ms']:11.1f} {r['post_ms']:8.1f} "
                      f"{r['total_ms']:9.1f} {r['total_ms'] / ref['total_ms']:8.2f} "
                      f"{r['peak_mib']:9.1f}  {same} ({r['segments']} labels)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
