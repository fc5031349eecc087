"""``bench/export.py --post-only``: the post-processing alone, eager vs its graph, on synthetic
outputs shaped like a trained model's (see the docstring of ``bench/export.py``)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from export import CPU, REPO, Post, runners

from axial_deeplab.engine.evaluate import PostProcessing
from axial_deeplab.engine.inference import InferenceMetadata
from axial_deeplab.export.pipeline import MAX_SIZE, MIN_SIZE, PanopticPipeline
from axial_deeplab.modeling.postprocessing import find_instance_centers


def synthetic_outputs(height, width, num_classes, thing_ids, peaks, seed=0):
    """``(prob [C, H, W], center [1, H, W], offset [2, H, W])`` of a scene with ``peaks``
    instances (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, round((peaks * height / width) ** 0.5))
    cols = max(1, -(-peaks // rows))  # rows x cols cells, the first ``peaks`` hold an instance
    cell_h, cell_w = height / rows, width / cols
    yy = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    xx = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    cell_y = (yy / cell_h).long().clamp(max=rows - 1)
    cell = cell_y * cols + (xx / cell_w).long().clamp(max=cols - 1)  # [H, W] cell index
    jitter = torch.rand(rows * cols, 2, generator=gen) * 0.5 + 0.25  # centre within its cell
    cy = ((torch.arange(rows * cols) // cols) + jitter[:, 0]) * cell_h
    cx = ((torch.arange(rows * cols) % cols) + jitter[:, 1]) * cell_w
    cy, cx = cy.floor(), cx.floor()
    dy, dx = cy[cell] - yy, cx[cell] - xx  # [H, W] to the centre of the pixel's cell
    sigma = max(2.0, 0.15 * min(cell_h, cell_w))
    radius = 0.35 * min(cell_h, cell_w)
    used = (torch.arange(rows * cols) < peaks)[cell]  # [H, W]
    amplitude = torch.rand(rows * cols, generator=gen) * 0.6 + 0.3
    heat = amplitude[cell] * torch.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) * used
    heat = torch.maximum(heat, torch.rand(height, width, generator=gen) * 0.05)[None]
    things = torch.tensor(sorted(thing_ids) or [0])
    stuff = torch.tensor([c for c in range(num_classes) if c not in set(thing_ids)] or [0])
    block = 64
    blocks = torch.randint(len(stuff), (-(-height // block), -(-width // block)), generator=gen)
    semantic = stuff[blocks].repeat_interleave(block, 0).repeat_interleave(block, 1)
    semantic = semantic[:height, :width]
    instance_class = things[torch.randint(len(things), (rows * cols,), generator=gen)]
    inside = used & (dy * dy + dx * dx <= radius * radius)
    semantic = torch.where(inside, instance_class[cell], semantic)
    offset = torch.stack([dy, dx]) + torch.randn(2, height, width, generator=gen) * 0.5
    prob = torch.rand(num_classes, height, width, generator=gen) * 0.5
    prob.scatter_(0, semantic[None], 1.0)  # argmax = semantic
    return prob, heat, offset


def _post_runners(backends, path: str, pipeline: PanopticPipeline, threads: int) -> dict:
    """``--post-only``: backend name -> callable raw outputs -> panoptic numpy, but eager."""
    runs = {}
    if "onnxruntime" in backends:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(raw):
            return session.run(None, {n: t.numpy() for n, t in zip(names, raw, strict=True)})[0]

        runs["onnxruntime"] = run_onnx
    if "compile" in backends:
        compiled = torch.compile(Post(pipeline), dynamic=False)
        runs["compile"] = lambda raw: compiled(*raw)[0].numpy()
    return runs


def post_only(cases, backends, peaks_list, repeats, threads) -> None:
    """The ``--post-only`` mode (see the module docstring)."""
    if threads:
        torch.set_num_threads(threads)
    from axial_deeplab.config import load_config
    from axial_deeplab.data.metadata import metadata_for_dataset

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"threads: torch {torch.get_num_threads()}, onnxruntime "
          f"{threads or 'default (one per core)'}")  # fmt: skip
    print("columns: size, instances placed, centres kept, thing pixels, backend, post-processing "
          "ms (median of --repeats), vs eager, identical panoptic pixels vs eager")  # fmt: skip
    for size, config in cases:
        height, width = (int(v) for v in size.split("x"))
        cfg = load_config(config, CPU)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        try:
            meta = InferenceMetadata(**metadata_for_dataset(cfg.DATASETS.TEST[0]))
        except (KeyError, IndexError):
            meta = InferenceMetadata.generic(num_classes, (0, 1, 2))
        settings = PostProcessing.from_config(cfg)
        model = torch.nn.Identity()  # the network is not run
        pipeline = PanopticPipeline(
            model, metadata=meta, postprocessing=settings, num_classes=num_classes
        )
        with tempfile.TemporaryDirectory(prefix="bench_export_post_") as work:
            start = time.perf_counter()
            example = synthetic_outputs(65, 81, num_classes, meta.thing_ids, 4)
            dim = torch.export.Dim.DYNAMIC(min=MIN_SIZE, max=MAX_SIZE)
            with torch.no_grad():
                program = torch.export.export(
                    Post(pipeline), example, dynamic_shapes=({1: dim, 2: dim},) * 3
                )
            path = os.path.join(work, "post.onnx")
            torch.onnx.export(program, example, path, dynamo=True)
            name = os.path.relpath(config, REPO)
            print(f"{size} {name} (nms_kernel {settings.nms_kernel}, top_k {settings.top_k}, "
                  f"{num_classes} classes, {len(meta.thing_ids)} things): exported the "
                  f"post-processing in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
            runs = _post_runners(backends, path, pipeline, threads)
            eager_post = runners("eager", work, pipeline)[1]
            for peaks in peaks_list:
                raw = synthetic_outputs(height, width, num_classes, meta.thing_ids, peaks)
                with torch.no_grad():
                    reference = eager_post(raw)
                    outputs = {name: run(raw) for name, run in runs.items()}  # warm-up
                    times = {name: [] for name in ("eager", *runs)}
                    for _ in range(repeats):  # alternating backends, image by image
                        for name, run in (("eager", eager_post), *runs.items()):
                            start = time.perf_counter()
                            run(raw)
                            times[name].append(1000 * (time.perf_counter() - start))
                semantic = raw[0].argmax(0)
                kept = len(find_instance_centers(
                    raw[1], threshold=settings.threshold, nms_kernel=settings.nms_kernel,
                    top_k=settings.top_k,
                ))  # fmt: skip
                things = float(pipeline.is_thing[semantic].float().mean())
                eager_ms = float(np.median(times["eager"]))
                for name, values in times.items():
                    ms = float(np.median(values))
                    same = "(reference)" if name == "eager" else (
                        f"{100 * float((np.asarray(outputs[name]) == reference).mean()):.4f}%"
                    )  # fmt: skip
                    print(f"{size:>10} {peaks:4d} {kept:4d} {100 * things:5.1f}% {name:>12} "
                          f"{ms:9.1f} {ms / eager_ms:6.2f}  {same}", flush=True)  # fmt: skip
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
