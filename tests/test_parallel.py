"""``map_batches``: the worker pool of the file-based evaluations (order, errors, dead workers)."""

from __future__ import annotations

import os
import time

import pytest

from axial_deeplab.data.validation import DatasetFormatError
from axial_deeplab.evaluation.parallel import map_batches


def _square_unless_seven(batch: list[int]) -> list[int]:
    if 7 in batch:
        raise DatasetFormatError(f"bad item in {batch}")
    return [x * x for x in batch]


class _DieInWorker:
    """Exits abruptly in a worker process (never in the one that made it)."""

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, batch: list[int]) -> list[int]:
        if os.getpid() != self.parent:
            os._exit(3)  # a worker dying without a word (killed, out of memory...)
        time.sleep(0.05)  # this process works too: leave batches for the worker
        return batch


def test_map_batches_keeps_batch_order_and_raises_worker_errors():
    items = list(range(7))
    for workers in (1, 2, 3):
        assert map_batches(_square_unless_seven, items, batch_size=2, workers=workers) == [
            [0, 1], [4, 9], [16, 25], [36]
        ]  # fmt: skip
    seen = []
    map_batches(_square_unless_seven, items, batch_size=3, workers=2,
                on_result=lambda i, r: seen.append(i))  # fmt: skip
    assert sorted(seen) == [0, 1, 2]
    with pytest.raises(DatasetFormatError, match=r"bad item in \[6, 7\]"):
        map_batches(_square_unless_seven, list(range(12)), batch_size=2, workers=2)


def test_map_batches_reports_a_worker_that_died():
    with pytest.raises(RuntimeError, match=r"worker process \d+ stopped \(exit code 3\)"):
        map_batches(_DieInWorker(), list(range(40)), batch_size=1, workers=2)
