"""Bench: where the time of one image goes at inference: I/O, network, post-processing.

Usage::

    python bench/latency_split.py [--configs coco/axial_deeplab_s_641.yaml@641x641
        cityscapes/axial_deeplab_l_1025x2049.yaml@1025x2049] [--repeats 2] [--device cpu]

For each config (random weights: the split does not depend on them, except post-processing,
which depends on the number of centres: with random weights up to ``top_k`` of them) at its
input size, runs what ``tools/infer.py`` runs per image, on a synthetic photo written as a PNG:

- I/O: reading the PNG (:func:`axial_deeplab.data.dataset.read_image`) and writing the
  panoptic PNG of the prediction (``write_panoptic_png``);
- network: the model's forward pass (``Predictor.raw``: normalisation, model, upsampling);
- post-processing: the rest of ``Predictor.predict`` (centres, grouping, merge, segment scores).

``--amp``: the network in mixed precision (``TEST.AMP True``). Prints the median of ``--repeats``
runs (after ``--warmup`` untimed ones, default 1) per part, in ms and in % of the total.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import cv2
import numpy as np
import torch

from axial_deeplab.config.config import load_config
from axial_deeplab.data.dataset import read_image
from axial_deeplab.data.panoptic_io import write_panoptic_png
from axial_deeplab.engine.class_names import metadata_from_config
from axial_deeplab.engine.inference import build_predictor, resolve_device

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
DEFAULT = ["coco/axial_deeplab_s_641.yaml@641x641", "cityscapes/axial_deeplab_l_1025x2049.yaml@1025x2049"]  # fmt: skip


def _photo(path: str, height: int, width: int) -> None:
    """A smooth random photo-like RGB image written as a PNG (seeded)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(0, 12, image.shape, dtype=np.uint8)
    cv2.imwrite(path, cv2.add(image, noise))


def split(
    config: str,
    size: tuple[int, int],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
    amp: bool = False,
) -> dict:
    """Median ms of I/O, network and post-processing for one image of ``size`` (``repeats`` timed
    runs after ``warmup`` untimed ones); ``amp``: with ``TEST.AMP True``."""
    cfg = load_config(os.path.join(CONFIGS, config), ["TEST.AMP", str(amp)])
    metadata, _ = metadata_from_config(cfg)
    predictor = build_predictor(cfg, metadata, device)
    network_ms: list[float] = []
    raw = predictor.raw

    def timed_raw(image: np.ndarray) -> dict:
        start = time.perf_counter()
        out = raw(image)
        if device.type == "cuda":
            torch.cuda.synchronize()
        network_ms.append(1000 * (time.perf_counter() - start))
        return out

    predictor.raw = timed_raw
    parts: dict[str, list[float]] = {"I/O": [], "network": [], "post-processing": []}
    with tempfile.TemporaryDirectory() as folder:
        photo, out = os.path.join(folder, "photo.png"), os.path.join(folder, "panoptic.png")
        _photo(photo, *size)
        for repeat in range(warmup + repeats):
            start = time.perf_counter()
            image = read_image(photo)
            read = time.perf_counter()
            prediction = predictor.predict(image)
            predicted = time.perf_counter()
            write_panoptic_png(out, prediction["segment_ids"])
            written = time.perf_counter()
            if repeat >= warmup:
                network = network_ms[-1]
                parts["I/O"].append(1000 * (read - start + written - predicted))
                parts["network"].append(network)
                parts["post-processing"].append(1000 * (predicted - read) - network)
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT, help="CONFIG@HxW under configs/")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs first (0: a single slow CPU run)"
    )
    parser.add_argument("--amp", action="store_true", help="TEST.AMP True (mixed precision)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, median of {args.repeats} runs "
          f"after {args.warmup} warm-up{', TEST.AMP True' if args.amp else ''}")  # fmt: skip
    for entry in args.configs:
        config, _, size_text = entry.partition("@")
        size = tuple(int(v) for v in size_text.split("x"))
        times = split(config, size, args.repeats, device, args.warmup, args.amp)
        total = sum(times.values())
        cells = ", ".join(
            f"{name} {ms:.0f} ms ({100 * ms / total:.1f}%)" for name, ms in times.items()
        )
        print(f"{config} at {size[0]}x{size[1]}: total {total:.0f} ms; {cells}", flush=True)


if __name__ == "__main__":
    main()
