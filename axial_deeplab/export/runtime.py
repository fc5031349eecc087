"""Running an exported file (``.pt2`` with torch.export, ``.onnx`` with ONNX Runtime) as a predictor.

:class:`ExportedPredictor` has the interface of ``engine.inference.Predictor`` that the inference
CLI uses (``predict``, ``metadata``, ``tta``), so ``tools/infer.py --backend torch-export`` and
``--backend onnxruntime`` write the same files as the eager backend. Its panoptic map, centres and
raw outputs come from the exported graph; segment scores and ids are computed from them on the host
as the eager predictor does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator

import numpy as np
import torch
from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_PATH, ARCHIVE_FORMAT_VALUE

from ..engine.inference import (
    InferenceMetadata,
    TestTimeAugmentation,
    as_metadata,
    check_backend_suffix,
    prediction_dict,
)
from ..engine.inputs import BadInputError
from ..engine.prediction_size import check_rgb_image, predict_at_evaluation_size
from .pipeline import DESCRIPTION_FILE, INPUT_NAME, MAX_SIZE, MIN_SIZE, OUTPUT_NAMES

BACKENDS = ("torch-export", "onnxruntime")


def _check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as the graph takes it: an ``[H, W, 3]`` uint8 array of a size in its range."""
    height, width = check_rgb_image(image).shape[:2]
    if not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
        hint = " (--max-size shrinks larger inputs)" if max(height, width) > MAX_SIZE else ""
        raise BadInputError(
            f"image of {height}x{width} pixels (height x width): exported models take heights and "
            f"widths from {MIN_SIZE} to {MAX_SIZE}{hint}"
        )
    return np.ascontiguousarray(image)


def pt2_layout_problem(path: str) -> str | None:
    """Why the file ``path`` is not a ``.pt2`` archive, or ``None`` when it has the layout of one:
    a zip file whose root folder holds ``archive_format`` reading ``pt2``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = names[0].split("/")[0] if names else ""
            if f"{root}/{ARCHIVE_FORMAT_PATH}" in names:
                if archive.read(f"{root}/{ARCHIVE_FORMAT_PATH}") == ARCHIVE_FORMAT_VALUE.encode():
                    return None
                return f"its {ARCHIVE_FORMAT_PATH} is not {ARCHIVE_FORMAT_VALUE!r}"
            if f"{root}/data.pkl" in names:
                return "a torch.save checkpoint"
    except zipfile.BadZipFile:
        return "not a zip file, or a truncated one"
    return "a zip file without the .pt2 layout"


class _Held(logging.Handler):
    """Keeps the records it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _held_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """Within the block, the records of logger ``name`` (and of its children that propagate to
    it) go into the yielded list instead of its handlers and parents."""
    logger = logging.getLogger(name)
    handlers, propagate = list(logger.handlers), logger.propagate
    held = _Held()
    for handler in handlers:
        logger.removeHandler(handler)
    logger.addHandler(held)
    logger.propagate = False
    try:
        yield held.records
    finally:
        logger.removeHandler(held)
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = propagate


def _load_error(exc: Exception, records: list[logging.LogRecord]) -> str:
    """The cause of a failed ``torch.export.load``: it logs the first error (with its traceback)
    and raises one that says to read the log."""
    for record in reversed(records):
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            break
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def load_program(path: str) -> tuple:
    """``(callable image -> outputs tuple, description)`` of a ``.pt2`` archive. A file that is
    not one, or that torch cannot load, raises a one-line ``ValueError`` with torch's log of the
    failure held back (a successful load passes what torch logged on)."""
    problem = pt2_layout_problem(path)
    if problem is not None:
        raise ValueError(
            f"{path}: not a .pt2 archive ({problem}; use --backend torch for .pth checkpoints)"
        )
    extra = {DESCRIPTION_FILE: ""}
    # From an open file: torch warns about paths that do not end in .pt2.
    with open(path, "rb") as file, _held_logs("torch.export") as records:
        try:
            program = torch.export.load(file, extra_files=extra)
        except Exception as exc:  # torch's deserialisers raise many types
            error = _load_error(exc, records)
            raise ValueError(f"{path}: torch.export cannot load it ({error})") from None
    for record in records:
        logging.getLogger(record.name).handle(record)
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
    check_backend_suffix(path, backend)
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
        test_size = description.get("test_size")  # absent from files exported before it was
        self.test_size = None if test_size is None else tuple(test_size)
        self.align_corners = bool(description.get("align_corners", True))

    def outputs(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """The graph's outputs by name, centres cut to the kept ones ``[M, 2]``."""
        out = dict(zip(OUTPUT_NAMES, self._run(_check_image(image)), strict=True))
        centers = out["centers"]
        out["centers"] = centers[centers[:, 0] >= 0]
        return out

    def predict(self, image: np.ndarray) -> dict:
        """The same dict as ``Predictor.predict``, from the exported graph (the image resized to
        the evaluation size on the host, and the prediction brought back, as ``Predictor``
        does)."""
        # the size is checked once resized to the evaluation size (in outputs), not before
        return predict_at_evaluation_size(
            self._predict_as_given, image, self.test_size, self.metadata,
            align_corners=self.align_corners,
        )  # fmt: skip

    def _predict_as_given(self, image: np.ndarray) -> dict:
        """:meth:`predict` at the size ``image`` has."""
        out = self.outputs(image)
        raw = {"semantic": out["semantic_prob"], "center": out["center"], "offset": out["offset"]}
        return prediction_dict(out["panoptic"], out["centers"], raw, self.metadata)
