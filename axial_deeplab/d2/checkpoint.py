"""detectron2's ``DetectionCheckpointer`` without code execution from weight files.

detectron2 reads ``MODEL.WEIGHTS`` ending in ``.pkl`` with ``pickle.load``, which runs whatever
code the file names. :class:`SafeDetectionCheckpointer` reads ``.pkl`` files with
:class:`axial_deeplab.checkpoint.detectron2.SafeUnpickler` (numpy arrays in plain containers: the
model zoo's and Caffe2's formats) and every other file with ``torch.load(weights_only=True)``; a
file that needs more is refused with a message naming it. ``allow_pickle=True`` (the
``--unsafe-load-pickle-weights`` flag of ``tools/d2_train_net.py``) restores detectron2's own
loading, for files the user trusts.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from axial_deeplab.checkpoint.detectron2 import SafeUnpickler

UNSAFE_FLAG = "--unsafe-load-pickle-weights"


def _refused(filename: str, exc: Exception) -> ValueError:
    reason = " ".join(str(exc).split())
    return ValueError(
        f"{filename}: refused to load: it needs more than weights ({reason}); loading it could run "
        f"code it contains. If you trust the file, pass {UNSAFE_FLAG}"
    )


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` loading weights only (see the module docstring)."""

    def __init__(self, *args: Any, allow_pickle: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_pickle = allow_pickle

    def _load_file(self, filename: str) -> dict[str, Any]:
        if self.allow_pickle or not filename.endswith(".pkl"):
            return super()._load_file(filename)
        with open(filename, "rb") as f:
            try:
                data = SafeUnpickler(f, encoding="latin1").load()
            except pickle.UnpicklingError as exc:
                raise _refused(filename, exc) from None
        if not isinstance(data, dict):
            raise ValueError(f"{filename}: expected a dict of weights, got {type(data).__name__}")
        if "model" in data and "__author__" in data:  # detectron2 model zoo format
            return data
        blobs = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo format
        weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f: str) -> Any:
        try:
            return torch.load(f, map_location="cpu", weights_only=not self.allow_pickle)
        except pickle.UnpicklingError as exc:
            raise _refused(f, exc) from None
