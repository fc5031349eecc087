"""What the demo page asks of the model, without HTTP: load a checkpoint once, then predict one
photo with given post-processing settings and return pictures, segments and timing as JSON.

A thin layer over :mod:`axial_deeplab.engine.inference` and :mod:`axial_deeplab.utils.visualize`
(the same predictor and pictures as ``tools/infer.py``); no model code of its own.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from ..data.images import ImageDecodeError, decode_image_bytes
from ..engine.evaluate import PostProcessing
from ..engine.infer_net import render, shrink
from ..engine.inference import Predictor
from ..engine.predictor_setup import config_from_args, predictor_from_config, read_checkpoint_info

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SHARED_SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# slider name -> (PostProcessing field, type, lowest, highest)
SETTINGS = {
    "threshold": ("threshold", float, 0.0, 1.0),
    "nms_kernel": ("nms_kernel", int, 1, 51),
    "top_k": ("top_k", int, 1, 1000),
    "stuff_area": ("stuff_area", int, 0, 1_000_000),
}


class DemoError(ValueError):
    """A bad request (the page shows the message)."""


def _png_data_url(picture: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
    if not ok:
        raise RuntimeError("cannot encode a PNG")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


# An upload's decode holds about 6 bytes a pixel (BGR, then RGB) before it is shrunk to
# --max-size: a 100-megapixel photo is accepted, a small PNG declaring 400 megapixels (a
# decompression bomb: 48 KB for 2.3 GB) is not; and two uploads at most are decoded at once.
MAX_UPLOAD_PIXELS = 100_000_000
_DECODES = threading.BoundedSemaphore(2)


def decode_image(data: bytes) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of encoded image bytes (JPEG, PNG, ...), with the checks of
    :func:`.data.images.decode_image_bytes` (truncation, oversized headers) and at most
    :data:`MAX_UPLOAD_PIXELS` pixels (read from the header; for formats other than PNG and JPEG,
    by Pillow); DemoError if bad."""
    size = _header_size_by_pillow(data)
    if size is not None and size[0] * size[1] > MAX_UPLOAD_PIXELS:
        raise DemoError(
            f"the upload: {size[1]}x{size[0]} pixels, more than the {MAX_UPLOAD_PIXELS} this "
            "demo decodes"
        )
    try:
        with _DECODES:
            image = decode_image_bytes(data, "the upload", max_pixels=MAX_UPLOAD_PIXELS)
            return np.ascontiguousarray(image[..., ::-1])
    except ImageDecodeError as exc:
        raise DemoError(str(exc)) from None


def _header_size_by_pillow(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of a GIF, TIFF, BMP, WebP... read from its header by Pillow (which
    decodes nothing yet); None for PNG and JPEG (checked by ``decode_image_bytes``) or when
    Pillow cannot tell."""
    if data.startswith((b"\x89PNG", b"\xff\xd8")):
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not Pillow's format: OpenCV decides
        return None
    return height, width


class DemoModel:
    """A checkpoint's predictor (config and class names from the checkpoint, as ``tools/infer.py``
    reads them) and the sample photos offered by the page."""

    def __init__(self, predictor: Predictor, samples: dict[str, Path], max_size: int) -> None:
        self.predictor = predictor
        self.samples = samples
        self.max_size = max_size
        self.defaults = predictor.postprocessing
        self._lock = threading.Lock()  # one prediction at a time: the model is not re-entrant

    @classmethod
    def load(cls, args: argparse.Namespace) -> DemoModel:
        """From ``--weights`` (and optionally ``--config-file``, ``--class-names``, ``--device``,
        ``KEY VALUE`` overrides) as parsed by :func:`.server.parse_args`."""
        stored_config, stored_metadata = read_checkpoint_info(args)
        cfg = config_from_args(args, stored_config)
        predictor = predictor_from_config(args, cfg, stored_metadata)
        folders = default_sample_folders(cfg) if args.samples is None else args.samples
        return cls(predictor, find_samples(folders), args.max_size)

    def settings(self, values: dict) -> PostProcessing:
        """The default post-processing with the request's slider values (checked)."""
        changes = {}
        for name, value in values.items():
            if name not in SETTINGS:
                raise DemoError(f"unknown setting {name!r}; known: {sorted(SETTINGS)}")
            field, kind, low, high = SETTINGS[name]
            try:
                number = kind(value)
            except (TypeError, ValueError):
                raise DemoError(
                    f"setting {name}: expected a {kind.__name__}, got {value!r}"
                ) from None
            if not low <= number <= high:
                raise DemoError(f"setting {name}: {number} outside [{low}, {high}]")
            changes[field] = number
        try:  # PostProcessing's own checks (e.g. an odd NMS kernel)
            return dataclasses.replace(self.defaults, **changes)
        except ValueError as exc:
            raise DemoError(f"settings: {exc}") from None

    def predict(self, image: np.ndarray, settings: dict | None = None) -> dict:
        """Pictures (PNG data URLs), segments and timing of one photo (see the module doc)."""
        post = self.settings(settings or {})
        image = shrink(image, self.max_size)
        with self._lock:
            self.predictor.postprocessing = post
            start = time.perf_counter()
            prediction = self.predictor.predict(image)
            predicted = time.perf_counter()
        meta = self.predictor.metadata
        panels = render(image, prediction, meta)  # the pictures infer.py writes
        strip = panels.pop("legend")
        pictures = {key: _png_data_url(p) for key, p in zip(PANEL_KEYS, panels.values())}
        pictures["legend"] = _png_data_url(strip)
        drawn = time.perf_counter()
        segments = [
            {"id": s["id"], "class": s["category_name"], "isthing": bool(s["isthing"]),
             "area": int(s["area"]), "score": round(float(s["score"]), 3)}
            for s in sorted(prediction["segments_info"], key=lambda s: -s["area"])
        ]  # fmt: skip
        return {
            "size": list(image.shape[:2]),
            "pictures": pictures,
            "segments": segments,
            "settings": dataclasses.asdict(post),
            "timing_ms": {
                "predict": round(1000 * (predicted - start), 1),
                "draw": round(1000 * (drawn - predicted), 1),
            },
        }


PANEL_KEYS = ("overlay", "semantic", "centers", "offsets")  # prediction_panels' order, no GT


def default_sample_folders(cfg) -> list[str]:
    """The COCO sample photos of ``../shared/data`` and, for a model trained on synthetic scenes
    (the quick start's), the held-out scenes of its ``DATASETS.SYNTHETIC_DIR``."""
    folders = [str(SHARED_SAMPLES / "coco_panoptic_sample" / "images")]
    if cfg.DATASETS.SYNTHETIC_DIR:
        folders.append(os.path.join(cfg.DATASETS.SYNTHETIC_DIR, "coco", "images", "val"))
    return folders


def find_samples(folders: list[str]) -> dict[str, Path]:
    """``name -> path`` of the images in ``folders`` (not recursive), sorted by name."""
    samples: dict[str, Path] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            print(f"notice: sample folder {folder} not found; no samples from it")
            continue
        for path in sorted(Path(folder).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.setdefault(path.name, path)
    return samples
