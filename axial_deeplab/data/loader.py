"""Samplers sharded over distributed ranks, batch collation and deterministic DataLoaders.

Determinism: the samplers yield ``(epoch, index)`` keys computed in the main process from the seed
alone, and :class:`.dataset.PanopticDataset` draws each sample's augmentation from a generator
seeded by ``(seed, epoch, index)``. The batches are therefore the same for any number of workers,
on every run with the same seed, and a run resumed at iteration ``i`` sees exactly the batches an
uninterrupted run sees from ``i`` on.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def epoch_permutation(size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the ``size`` samples in ``epoch``: a pure function of ``(seed, epoch)``."""
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(size)


class TrainingSampler(Sampler):
    """Infinite stream of ``(epoch, index)`` keys, sharded over ranks.

    The global stream concatenates one permutation of ``range(size)`` per epoch; rank ``r`` takes
    positions ``r, r + W, r + 2W, ...`` (``W = world_size``), so ranks are disjoint and together
    cover every epoch. ``start`` skips this rank's first ``start`` keys (resume) in O(1).
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"cannot sample from an empty data set (size={size})")
        _check_shard(rank, world_size)
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start * self.world_size + self.rank  # in the global stream
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = epoch_permutation(self.size, self.seed, epoch, self.shuffle)
            yield epoch, int(order[position % self.size])
            position += self.world_size


class InferenceSampler(Sampler):
    """Each sample once, in order; rank ``r`` gets the ``r``-th of ``world_size`` contiguous shards
    (sizes differ by at most one; no padding, so the shards are disjoint and cover the data)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        _check_shard(rank, world_size)
        bounds = np.linspace(0, size, world_size + 1).round().astype(int)
        self.indices = range(int(bounds[rank]), int(bounds[rank + 1]))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((0, i) for i in self.indices)


def collate_panoptic(samples: list[dict]) -> dict:
    """Stack the tensors of equal shape along a new batch dim ``[B, ...]``; keep the rest as lists."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(torch.is_tensor(v) for v in values) and len({v.shape for v in values}) == 1:
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """An infinite loader of this rank's training batches (``batch_size`` images per rank),
    starting at iteration ``start_iter``."""
    sampler = TrainingSampler(
        len(dataset),
        seed=seed,
        rank=rank,
        world_size=world_size,
        start=start_iter * batch_size,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_panoptic,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),  # keeps torch's global RNG untouched
        persistent_workers=num_workers > 0,
        worker_init_fn=defer_stop_signals,
    )


# How long a loader worker keeps serving after a SIGTERM while its main process lives (seconds):
# enough for the batch in flight, about as long as Slurm (KillWait) and Kubernetes wait before
# SIGKILL. A worker signalled alone thus still stops.
WORKER_SIGTERM_GRACE_S = 30.0


def defer_stop_signals(worker_id: int) -> None:
    """In a loader worker: ignore Ctrl-C, SIGUSR1 and SIGUSR2 and defer SIGTERM, which a terminal
    or a scheduler sends to every process of the job; the main process then finishes its
    iteration, saves a checkpoint and stops the workers (a worker killed by the signal would fail
    the iteration: PyTorch's SIGCHLD handler raises in the main process, wherever it is).

    SIGTERM must still stop a worker (the loader's shutdown and Python's exit fall back to
    ``terminate()`` for a worker that does not exit; a worker may be signalled alone), so it is
    not ignored: the worker serves batches for :data:`WORKER_SIGTERM_GRACE_S` more seconds, then
    exits with status 0 (which the main process's SIGCHLD handler leaves alone; its next wait for
    a batch fails instead). A second SIGTERM ends it at once, and so does the first when the main
    process is gone (``kill -9``): nothing would stop it then. The worker's SIGALRM is taken for
    the grace period."""
    for name in ("SIGINT", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    parent = os.getppid()

    def leave_now(signum: int, frame: FrameType | None) -> None:
        os._exit(0)

    def leave(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent:  # orphaned: die of the signal
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, leave_now)  # e.g. stuck flushing to a full pipe
        raise SystemExit(0)  # unwinds PyTorch's worker loop; queued batches are flushed whole

    def defer(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent:
            leave(signum, frame)
        signal.signal(signal.SIGTERM, leave)
        signal.signal(signal.SIGALRM, leave)
        signal.setitimer(signal.ITIMER_REAL, WORKER_SIGTERM_GRACE_S)

    signal.signal(signal.SIGTERM, defer)


def train_batches(dataset: Dataset, **kwargs) -> Callable[[int], Iterator[dict]]:
    """``start_iter -> iterator of batches``, the form the trainer takes (kwargs as
    :func:`build_train_loader`, without ``start_iter``)."""

    def batches(start_iter: int) -> Iterator[dict]:
        return iter(build_train_loader(dataset, start_iter=start_iter, **kwargs))

    return batches


def build_test_loader(
    dataset: Dataset,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """This rank's shard of the data set, each sample once, in order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=InferenceSampler(len(dataset), rank=rank, world_size=world_size),
        num_workers=num_workers,
        collate_fn=collate_panoptic,
    )
