"""Stopping training cleanly on a signal: Ctrl-C, a scheduler's SIGTERM, a preemption notice.

:class:`StopSignals` is a context manager that, in the main thread, replaces the handlers of
:data:`STOP_SIGNALS` with one that only records the signal. The training loop polls
:meth:`StopSignals.requested` between iterations, saves a checkpoint and raises
:class:`TrainingInterrupted`; the previous handlers come back on exit, so a launcher's own handler
(submitit's requeue) can be given the signal afterwards. Repeats of a signal change nothing (a
terminal and a scheduler may both deliver one), except a second Ctrl-C, which stops at once
(KeyboardInterrupt) for a user who will not wait for an evaluation to end; ``kill -9`` stops at
once too (checkpoints are written atomically, so the previous one survives).

With several processes, :meth:`requested` agrees across ranks (an all-reduce of the flag), so that
every rank stops after the same iteration even when only one received the signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import torch
import torch.distributed as dist

from .distributed import is_distributed

STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


class TrainingInterrupted(Exception):
    """Training stopped on ``signum`` after ``iteration``; ``checkpoint`` is the file saved."""

    def __init__(self, signum: int, iteration: int, checkpoint: str) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after iteration {iteration}; checkpoint saved to {checkpoint}"
        )


class StopSignals:
    """Records :data:`STOP_SIGNALS` while active (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            if os.environ.get("RANK", "0") == "0":  # once, not from every process
                sys.stderr.write(
                    f"\n{signal.Signals(signum).name}: stopping after this iteration (and the "
                    "evaluation under way, if any) with a checkpoint; Ctrl-C again stops at once, "
                    "without one\n"
                )
        elif signum == signal.SIGINT:  # a second Ctrl-C: the user will not wait
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, device: torch.device) -> int | None:
        """The signal to stop on, if any rank received one (agreed by every rank)."""
        if not is_distributed():
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
