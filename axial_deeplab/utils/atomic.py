"""Atomic file writes: a temporary file in the same folder, then ``os.replace`` over the target.

A crash mid-write leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np


def write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, data: Any, indent: int | None = None) -> None:
    write_text(path, json.dumps(data, indent=indent))


def write_rgb_png(path: str, rgb: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 RGB picture as PNG."""
    tmp = f"{path}.tmp.png"
    if not cv2.imwrite(tmp, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)
