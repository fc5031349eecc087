"""Map a function over batches of items with worker processes.

Batches are handed out in turn from a shared counter, so a slow or busy worker takes fewer; the
results come back in batch order whatever worker computed them. This process is one of the
workers (it starts ``workers - 1`` others and picks up their results between its own batches), so
one fewer process is started and no core waits on a collector. With ``workers=1`` (or a single
batch) everything runs here and nothing is started.
Workers are forked where the platform allows it (no re-import, no pickling of ``function`` and
``items``), else spawned.

A started worker is a process of ours, so it tunes glibc's allocator for batch work: freed memory is
kept for the next batch instead of being handed back to the system (and faulted in again page by
page), which otherwise costs about a tenth of the time of numpy-heavy batches.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_batches(
    function: Callable[[Sequence[T]], R],
    items: Sequence[T],
    *,
    batch_size: int,
    workers: int,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[function(batch) for batch in batches of items]``, computed by ``workers`` processes.

    ``on_result(batch index, result)`` is called in this process as results arrive (for a progress
    bar). An exception raised by ``function`` in any process is raised here; the other workers are
    then stopped.
    """
    num_batches = -(-len(items) // batch_size)
    results: dict[int, R] = {}

    def keep(index: int, result: R) -> None:
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    workers = max(1, min(workers, num_batches))
    if workers == 1:
        for index, result in _batches(function, items, batch_size, None):
            keep(index, result)
        return [results[i] for i in range(num_batches)]
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    counter = context.Value("q", 0)
    children: list[tuple[Any, Connection]] = []
    pending: dict[Connection, Any] = {}  # receiver -> process, for the children still working
    try:
        for _ in range(workers - 1):  # this process is the last worker
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_child, args=(function, items, batch_size, counter, sender), daemon=True
            )
            child.start()
            sender.close()
            children.append((child, receiver))
            pending[receiver] = child
        for message in _batches(function, items, batch_size, counter):
            keep(*message)
            _collect(pending, keep, block=False)  # the children's results so far
        _collect(pending, keep)
    finally:
        for child, receiver in children:
            if child.is_alive():
                child.terminate()
            child.join()
            receiver.close()
    return [results[i] for i in range(num_batches)]


def keep_freed_memory() -> None:
    """glibc only (elsewhere nothing): keep up to 256 MiB of freed memory, and serve blocks up
    to 64 MiB from it, rather than returning them to the system after every batch."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _batches(function, items, batch_size, counter):
    """Take the next batch number from ``counter`` (all of them in turn without one) and yield
    ``(batch index, function(batch))`` until the items run out."""
    index = -1
    while True:
        if counter is None:
            index += 1
        else:
            with counter.get_lock():
                index = counter.value
                counter.value += 1
        batch = items[index * batch_size : (index + 1) * batch_size]
        if not batch:
            return
        yield index, function(batch)


def _child(function, items, batch_size, counter, sender: Connection) -> None:
    """A worker: sends ``(index, result)`` per batch, then ``None``; or the exception raised."""
    keep_freed_memory()
    try:
        for message in _batches(function, items, batch_size, counter):
            sender.send(message)
        sender.send(None)
    except BaseException as err:  # noqa: BLE001 - handed to the parent, which raises it
        sender.send(err)
    finally:
        sender.close()


def _collect(
    pending: dict[Connection, Any], keep: Callable[[int, Any], None], block: bool = True
) -> None:
    """Pass on the results that ``pending`` children (receiver -> process) send, until every one
    of them has finished (``block=False``: only those already sent)."""
    while pending:
        ready = wait(list(pending), timeout=None if block else 0)
        if not ready:
            return
        for receiver in ready:
            try:
                message = receiver.recv()
            except EOFError:
                child = pending[receiver]
                child.join(timeout=10)  # its exit code
                raise RuntimeError(
                    f"worker process {child.pid} stopped (exit code {child.exitcode})"
                ) from None
            if message is None:
                del pending[receiver]
            elif isinstance(message, BaseException):
                raise message
            else:
                keep(*message)
