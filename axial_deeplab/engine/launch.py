"""Command-line arguments in detectron2's style, and a launcher for one or many processes.

``--num-gpus N`` spawns ``N`` local worker processes (one per GPU; on a CPU-only machine, ``N`` gloo
processes). Multi-node runs use ``torchrun`` instead, which sets the environment ``init_from_env``
reads; in that case ``--num-gpus`` is left at 1 and each process runs ``main`` directly.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from ..utils.cli import add_debug_flag
from .preemption import TrainingInterrupted


def default_argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a YAML config")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT_DIR's last checkpoint"
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS and exit")
    parser.add_argument("--num-gpus", type=int, default=1, help="local worker processes to spawn")
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="let --eval-only run without MODEL.WEIGHTS (scores a randomly initialised model)",
    )
    add_slurm_arguments(parser)
    add_debug_flag(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs"
    )
    return parser


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """``--slurm`` and its options (see :mod:`.slurm`; needs ``pip install submitit``)."""
    group = parser.add_argument_group("Slurm (submitit; jobs are requeued when preempted)")
    add = group.add_argument
    add("--slurm", action="store_true", help="submit this run to Slurm instead of running it")
    add("--slurm-partition", default="", help="Slurm partition")
    add("--slurm-nodes", type=int, default=1, help="nodes (each runs --num-gpus processes)")
    add("--slurm-time", type=int, default=24 * 60, help="time limit per job, in minutes")
    add("--slurm-cpus-per-task", type=int, default=8, help="CPU cores per process")
    add("--slurm-mem-gb", type=int, default=0, help="memory per node in GB (0: Slurm's default)")
    add("--slurm-max-requeues", type=int, default=10, help="requeues after timeouts at most")
    add("--slurm-folder", default="", help="submitit logs (default: OUTPUT_DIR/slurm)")
    add(
        "--slurm-local", action="store_true", help="run the job here with submitit's local executor"
    )
    add("--slurm-wait", action="store_true", help="wait for the job and print its result")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to reach the parent), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any exception that cannot travel
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _worker(
    local_rank: int, world_size: int, port: int, main: Callable, args: tuple, stops: Any,
    errors: Any,
) -> None:  # fmt: skip
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        main(*args)
    except TrainingInterrupted as exc:  # handed to the parent, which raises it
        if local_rank == 0:
            stops.put((exc.signum, exc.iteration, exc.checkpoint))
    except (Exception, KeyboardInterrupt) as exc:  # the parent raises the first one it gets
        errors.put(portable(exc))  # (a bad config: one line, as with one process)
        raise


def launch(main: Callable[..., Any], num_processes: int, args: tuple = ()) -> None:
    """Run ``main(*args)`` here (one process) or in ``num_processes`` spawned local processes.

    With several processes, SIGTERM, SIGUSR1 and SIGUSR2 sent to this process are passed on to
    the workers, Ctrl-C reaches them from the terminal, and a worker's
    :class:`.preemption.TrainingInterrupted` is raised here once all have stopped; so is the
    first error a worker raised (a bad config...), rather than torch's wrapper of its traceback."""
    if num_processes < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {num_processes}")
    if num_processes == 1:
        main(*args)
        return
    spawn = mp.get_context("spawn")
    stops, errors = spawn.SimpleQueue(), spawn.SimpleQueue()
    context = mp.start_processes(
        _worker,
        args=(num_processes, _free_port(), main, args, stops, errors),
        nprocs=num_processes,
        start_method="spawn",
        join=False,
    )

    def forward(signum: int, frame: Any) -> None:
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    }
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's
    try:
        while not context.join():
            pass
    except ProcessException as exc:  # a worker failed: its own error, if it sent one
        if not errors.empty():
            raise errors.get() from exc
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not errors.empty():  # a second Ctrl-C: the workers stopped at once
        raise errors.get()
    if not stops.empty():
        raise TrainingInterrupted(*stops.get())
