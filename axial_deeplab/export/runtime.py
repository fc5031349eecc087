"""Running an exported file (``.pt2`` with torch.export, ``.onnx`` with ONNX Runtime) as a predictor.

:class:`ExportedPredictor` has the interface of ``engine.inference.Predictor`` that the inference
CLI uses (``predict``, ``metadata``, ``tta``), so ``tools/infer.py --backend torch-export`` and
``--backend onnxruntime`` write the same files as the eager backend. Its panoptic map, centres and
raw outputs come from the exported graph; segment scores and ids are computed from them on the host
as the eager predictor does.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..engine.inference import (
    InferenceMetadata,
    TestTimeAugmentation,
    as_metadata,
    prediction_dict,
)
from .pipeline import DESCRIPTION_FILE, INPUT_NAME, OUTPUT_NAMES

BACKENDS = ("torch-export", "onnxruntime")


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image: expected an [H, W, 3] RGB array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels (0-255), got {image.dtype}")
    return np.ascontiguousarray(image)


def load_program(path: str) -> tuple:
    """``(callable image -> outputs tuple, description)`` of a ``.pt2`` archive."""
    extra = {DESCRIPTION_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a torch.export archive ({exc})") from None
    if not extra[DESCRIPTION_FILE]:
        raise ValueError(f"{path}: no {DESCRIPTION_FILE} inside; export it with tools/export.py")
    module = program.module()

    def run(image: np.ndarray) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(module(torch.from_numpy(image)))

    return run, json.loads(extra[DESCRIPTION_FILE])


def load_onnx(path: str) -> tuple:
    """``(callable image -> outputs list, description)`` of an ``.onnx`` file (ONNX Runtime, CPU)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "--backend onnxruntime needs onnxruntime: pip install -e '.[export]'"
        ) from None
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({exc})") from None
    props = session.get_modelmeta().custom_metadata_map
    if "axial_deeplab" not in props:
        raise ValueError(f"{path}: no axial_deeplab description; export it with tools/export.py")

    def run(image: np.ndarray) -> list[torch.Tensor]:
        outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
        return [torch.from_numpy(o) for o in outputs]

    return run, json.loads(props["axial_deeplab"])


def load_exported(path: str, backend: str) -> tuple:
    """``(run, description)`` of an exported file for ``backend`` (one of :data:`BACKENDS`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported file not found: {path}")
    if backend == "torch-export":
        return load_program(path)
    if backend == "onnxruntime":
        return load_onnx(path)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class ExportedPredictor:
    """Panoptic prediction of one image with an exported file (see the module docstring)."""

    def __init__(self, path: str, backend: str) -> None:
        self._run, description = load_exported(path, backend)
        self.metadata: InferenceMetadata = as_metadata(description["metadata"])
        self.description = description
        self.tta = TestTimeAugmentation()  # the graph holds one plain pass

    def outputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """The graph's outputs by name, centres cut to the kept ones ``[M, 2]``."""
        out = dict(zip(OUTPUT_NAMES, self._run(_check_image(image)), strict=True))
        centers = out["centers"]
        out["centers"] = centers[centers[:, 0] >= 0]
        return out

    def predict(self, image: np.ndarray) -> dict:
        """The same dict as ``Predictor.predict``, from the exported graph."""
        out = self.outputs(image)
        raw = {"semantic": out["semantic_prob"], "center": out["center"], "offset": out["offset"]}
        return prediction_dict(out["panoptic"], out["centers"], raw, self.metadata)
