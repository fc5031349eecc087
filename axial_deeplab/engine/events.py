"""Training logs: a metrics JSON-lines file and optional TensorBoard scalars/images."""

from __future__ import annotations

import json
import os
from typing import Any

import torch


class EventWriter:
    """Appends one JSON object per logged step to ``metrics.json`` and mirrors scalars to TensorBoard.

    TensorBoard is optional (``pip install tensorboard``); without it only the JSON file is written.
    """

    def __init__(self, output_dir: str, *, tensorboard: bool = True) -> None:
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
                self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        record = {"iteration": iteration, **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, iteration)

    def write_images(self, iteration: int, images: dict[str, torch.Tensor]) -> None:
        """``images``: name -> ``[3, H, W]`` float in [0, 1] or uint8."""
        if self._tb is not None:
            for key, image in images.items():
                self._tb.add_image(key, image, iteration)

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
