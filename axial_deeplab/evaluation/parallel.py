"""Map a function over batches of items with forked worker processes.

Batches are handed out in turn from a counter shared by all workers, so a slow or busy worker
takes fewer; the results come back in batch order whatever worker computed them. This process is
one of the workers (it forks ``workers - 1`` others and picks up their results between its own
batches), so one fewer process is started and no core waits on a collector. With ``workers=1``
(or a single batch), or where the platform has no ``fork`` (Windows), everything runs here.
Workers are forked (no re-import, no pickling of ``function`` and ``items``) with ``os.fork``
and pipes rather than :mod:`multiprocessing`, whose import (sockets, subprocess, tempfile...)
costs about 10 ms of a command's start-up.

A started worker is a process of ours, so it tunes glibc's allocator for batch work
(``utils.host_memory.keep_freed_memory``): freed memory is kept for the next batch instead of
being handed back to the system (and faulted in again page by page), which otherwise costs about
a tenth of the time of numpy-heavy batches.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import select
import signal
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..utils.host_memory import keep_freed_memory

T = TypeVar("T")
R = TypeVar("R")
_FRAME = struct.Struct("<Q")  # the byte length of each pickled message on a worker's pipe


def shrinking_batch_sizes(num_items: int, batch_size: int, workers: int) -> list[int]:
    """Sizes of consecutive batches of ``num_items`` items for ``workers`` processes:
    ``batch_size`` while many items remain, then a ``1 / (2 workers)`` share of what remains, down
    to single items, so that the workers run out of work at nearly the same time (with equal
    batches, one waits for the other's last batch: half a batch on average). One worker: equal
    batches."""
    if workers <= 1:
        full, rest = divmod(num_items, batch_size)
        return [batch_size] * full + ([rest] if rest else [])
    sizes, left = [], num_items
    while left:
        sizes.append(max(1, min(batch_size, -(-left // (2 * workers)))))
        left -= sizes[-1]
    return sizes


def map_batches(
    function: Callable[[Sequence[T]], R],
    items: Sequence[T],
    *,
    batch_size: int | Sequence[int],
    workers: int,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[function(batch) for batch in batches of items]``, computed by ``workers`` processes.

    ``batch_size``: one size for all batches (the last one takes what is left), or the sizes of
    the consecutive batches (summing to ``len(items)``; see :func:`shrinking_batch_sizes`).
    ``on_result(batch index, result)`` is called in this process as results arrive (for a progress
    bar). An exception raised by ``function`` in any process is raised here; the other workers are
    then stopped.
    """
    if isinstance(batch_size, int):
        batch_size = shrinking_batch_sizes(len(items), batch_size, 1)
    if sum(batch_size) != len(items) or min(batch_size, default=1) < 1:
        raise ValueError(f"batch sizes {list(batch_size)} do not split {len(items)} items")
    bounds = [0, *itertools.accumulate(batch_size)]  # [batches + 1] first item of each batch
    num_batches = len(batch_size)
    results: dict[int, R] = {}

    def keep(index: int, result: R) -> None:
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    workers = max(1, min(workers, num_batches)) if hasattr(os, "fork") else 1
    if workers == 1:
        for index, result in _batches(function, items, bounds, None):
            keep(index, result)
        return [results[i] for i in range(num_batches)]
    counter = _SharedCounter()
    pending: dict[int, int] = {}  # read end of a worker's pipe -> its process id
    try:
        for _ in range(workers - 1):  # this process is the last worker
            receiver, sender = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(receiver)
                _child(function, items, bounds, counter, sender)  # never returns
            os.close(sender)
            pending[receiver] = pid
        for message in _batches(function, items, bounds, counter):
            keep(*message)
            _collect(pending, keep, block=False)  # the workers' results so far
        _collect(pending, keep)
    finally:
        for receiver, pid in pending.items():  # workers still running: an error stopped us
            os.close(receiver)
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        counter.close()
    return [results[i] for i in range(num_batches)]


class _SharedCounter:
    """The next batch number, in memory shared by forked processes, behind a lock that is a
    token byte in a pipe (taken by reading it, given back by writing it)."""

    def __init__(self):
        self._memory = mmap.mmap(-1, 8)  # anonymous and shared with forked children
        self._lock_read, self._lock_write = os.pipe()
        os.write(self._lock_write, b"\0")

    def take(self) -> int:
        """The current value, incremented for the next caller."""
        os.read(self._lock_read, 1)
        try:
            (value,) = _FRAME.unpack_from(self._memory)
            _FRAME.pack_into(self._memory, 0, value + 1)
        finally:
            os.write(self._lock_write, b"\0")
        return value

    def close(self) -> None:
        os.close(self._lock_read)
        os.close(self._lock_write)
        self._memory.close()


def _batches(function, items, bounds: list[int], counter: _SharedCounter | None) -> Iterator:
    """Take the next batch number from ``counter`` (all of them in turn without one) and yield
    ``(batch index, function(batch))`` until the batches (``items[bounds[i] : bounds[i + 1]]``)
    run out."""
    index = -1
    while True:
        index = index + 1 if counter is None else counter.take()
        if index + 1 >= len(bounds):
            return
        yield index, function(items[bounds[index] : bounds[index + 1]])


def _child(function, items, bounds: list[int], counter: _SharedCounter, sender: int) -> None:
    """A forked worker: sends ``(index, result)`` per batch, then ``None``, or the exception
    raised; then exits without returning to the caller's code."""
    code = 0
    try:
        keep_freed_memory()
        with os.fdopen(sender, "wb") as pipe:
            try:
                for message in _batches(function, items, bounds, counter):
                    _send(pipe, message)
                _send(pipe, None)
            except BaseException as err:  # noqa: BLE001 - handed to the parent, which raises it
                _send(pipe, err)
    except BaseException:  # noqa: BLE001 - the pipe is gone (the parent stopped): just exit
        code = 1
    finally:
        os._exit(code)


def _send(pipe, message: Any) -> None:
    """Write one message to a worker's pipe: its pickle's length, then the pickle."""
    try:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an exception that cannot be pickled: its text
        data = pickle.dumps(RuntimeError(f"{type(message).__name__}: {message}"))
    pipe.write(_FRAME.pack(len(data)) + data)
    pipe.flush()


def _receive(receiver: int) -> tuple[bool, Any]:
    """``(True, message)`` read from a worker's pipe; ``(False, None)`` at its end."""
    header = _read_exactly(receiver, _FRAME.size)
    if header is None:
        return False, None
    data = _read_exactly(receiver, _FRAME.unpack(header)[0])
    return (False, None) if data is None else (True, pickle.loads(data))


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None if it ends first."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _collect(pending: dict[int, int], keep: Callable[[int, Any], None], block: bool = True) -> None:
    """Pass on the results that ``pending`` workers (pipe -> process id) send, until every one
    of them has finished (``block=False``: only those already sent)."""
    while pending:
        ready, _, _ = select.select(list(pending), [], [], None if block else 0)
        if not ready:
            return
        for receiver in ready:
            complete, message = _receive(receiver)
            if not complete:
                pid = pending.pop(receiver)
                os.close(receiver)
                _, status = os.waitpid(pid, 0)
                raise RuntimeError(
                    f"worker process {pid} stopped (exit code {os.waitstatus_to_exitcode(status)})"
                )
            if message is None:
                pid = pending.pop(receiver)
                os.close(receiver)
                os.waitpid(pid, 0)
            elif isinstance(message, BaseException):
                raise message
            else:
                keep(*message)
