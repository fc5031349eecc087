"""Atomic file writes: a temporary file in the same folder, then ``os.replace`` over the target.

A crash mid-write leaves the previous file (or none), never a truncated one. Temporary files are
named ``.tmp-HOST-PID-NAME-*`` (hidden, unique per write); a process killed mid-write (``kill -9``)
can leave one behind. The next write of the same file from this machine deletes those whose
process is gone, and :func:`remove_stale_temp_files` deletes all of a folder's when a run starts
in it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, suffix: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a fresh temporary file beside ``path``, then rename it over ``path``.

    Ctrl-C (SIGINT) and SIGTERM arriving meanwhile are handled once the file is in place (in the
    main thread): an interrupt raised inside a writer's C++ code came out as its own error (torch's
    zip writer: "enforce fail ... unexpected pos"), and SIGTERM's default action left the
    temporary file behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    owner = _temp_owner(os.path.basename(path))
    _remove_orphans(folder, owner)
    with _signals_held():
        fd, tmp = tempfile.mkstemp(prefix=f"{owner}{os.getpid()}-", suffix=suffix, dir=folder)
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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM received in the block are raised again after it, to the handlers in
    place before (Ctrl-C's KeyboardInterrupt, a trainer's stop request, termination). Only in
    the main thread, where Python runs signal handlers; elsewhere the block runs as is."""
    held = (signal.SIGINT, signal.SIGTERM)
    in_c = any(signal.getsignal(s) is None for s in held)  # set outside Python: not restorable
    if in_c or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def _temp_owner(name: str) -> str:
    """``.tmp-HOST-NAME-``: the temporary files of writes of ``name`` from this machine (then
    the writer's pid)."""
    host = socket.gethostname().replace("-", "_")[:32] or "host"
    return f"{TEMP_PREFIX}{host}-{name[:96]}-"


def _remove_orphans(folder: str, owner: str) -> None:
    """Delete ``owner``'s temporary files (see ``_temp_owner``) whose writing process is gone:
    left by a write killed on this machine. Other machines' files (a shared filesystem) stay."""
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(owner) + "*")):
        pid = os.path.basename(tmp)[len(owner) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
