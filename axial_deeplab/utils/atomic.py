"""Atomic file writes: a temporary file in the same folder, then ``os.replace`` over the target.

A crash mid-write leaves the previous file (or none), never a truncated one. Temporary files are
named ``.tmp-*`` (hidden, unique per write); a process killed mid-write (``kill -9``) can leave
one behind, which :func:`remove_stale_temp_files` deletes when a run starts in that folder.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, suffix: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a fresh temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, ".txt", write)


def write_json(path: str, data: Any, indent: int | None = None) -> None:
    write_text(path, json.dumps(data, indent=indent))


def write_rgb_png(path: str, rgb: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 RGB picture as PNG."""

    import cv2  # here, not at start-up: the PQ command writes JSON only

    def write(tmp: str) -> None:
        if not cv2.imwrite(tmp, np.ascontiguousarray(rgb[..., ::-1])):
            raise OSError(f"could not write {path}")

    atomic_write(path, ".png", write)


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete the ``.tmp-*`` files directly in ``folder`` (left by a process killed mid-write);
    returns their paths. Call it only where no other process is writing into ``folder``."""
    stale = sorted(glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")))
    removed = []
    for path in stale:
        if os.path.isfile(path):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed
