"""``map_batches``: the worker pool of the file-based evaluations (order, errors, dead workers)."""

from __future__ import annotations

import os
import time

import pytest

from axial_deeplab.data.validation import DatasetFormatError
from axial_deeplab.evaluation.parallel import map_batches, shrinking_batch_sizes


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


def test_shrinking_batch_sizes_split_every_item_and_end_with_single_items():
    # 40 items, batches of at most 8 for 2 workers: each batch takes ceil(left / 4) up to 8, so
    # 8, 8, 6 (24 left), 5 (18), 4 (13), 3 (9), 2 (6), 1, 1, 1, 1 (the last 4, one by one).
    assert shrinking_batch_sizes(40, 8, 2) == [8, 8, 6, 5, 4, 3, 2, 1, 1, 1, 1]
    for num_items, batch_size, workers in [(200, 8, 2), (50, 6, 2), (7, 3, 5), (1, 8, 2)]:
        sizes = shrinking_batch_sizes(num_items, batch_size, workers)
        assert sum(sizes) == num_items and max(sizes) <= batch_size
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1
    assert shrinking_batch_sizes(7, 2, 1) == [2, 2, 2, 1]  # one worker: equal batches
    assert shrinking_batch_sizes(0, 8, 2) == []


def test_map_batches_with_batch_sizes_keeps_order():
    items = list(range(10))
    for workers in (1, 2):
        assert map_batches(_square_unless_seven, items[:7], batch_size=[3, 2, 1, 1],
                           workers=workers) == [[0, 1, 4], [9, 16], [25], [36]]  # fmt: skip
    with pytest.raises(ValueError, match="do not split 10 items"):
        map_batches(_square_unless_seven, items, batch_size=[3, 3], workers=2)
