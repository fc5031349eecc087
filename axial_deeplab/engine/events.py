"""Training logs: a metrics JSON-lines file and optional TensorBoard scalars/images."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..utils.atomic import write_text


class EventWriter:
    """Appends one JSON object per logged step to ``metrics.json`` and mirrors scalars to TensorBoard.

    TensorBoard is optional (``pip install tensorboard``); without it only the JSON file is written.
    """

    def __init__(self, output_dir: str, *, tensorboard: bool = True, start: int = 0) -> None:
        """``start``: the iteration a resumed run continues from; TensorBoard's points after it,
        left by the interrupted run, are dropped (``metrics.json`` is cut back by
        :func:`truncate_metrics`)."""
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, "metrics.json")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = None
            else:
                self._tb = SummaryWriter(
                    os.path.join(output_dir, "tensorboard"), purge_step=start + 1 if start else None
                )

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        record = {"iteration": iteration, **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, iteration)

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def write_images(self, iteration: int, images: dict[str, np.ndarray]) -> None:
        """``images``: tag -> ``[H, W, 3]`` uint8 RGB picture (TensorBoard only)."""
        if self._tb is not None:
            for tag, image in images.items():
                if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                    raise ValueError(
                        f"{tag}: expected [H, W, 3] uint8, got {image.shape} {image.dtype}"
                    )
                self._tb.add_image(tag, image, iteration, dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """All records of a ``metrics.json`` file (skips a torn last line after a crash)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: str, last_iteration: int) -> int:
    """Rewrite ``metrics.json`` (atomically) without the records after ``last_iteration`` and
    without a torn last line: what a run resumed from ``last_iteration`` (0: a new run) would
    otherwise log twice. Returns the number of records dropped; no file, nothing to do."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
            iteration = int(record.get("iteration", 0))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue  # a torn or foreign line
        if iteration <= last_iteration:
            kept.append(line)
    if len(kept) != len(lines):
        write_text(path, "".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)
