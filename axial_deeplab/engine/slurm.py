"""Submitting training to Slurm with submitit, requeued when preempted or timed out.

``python tools/train_net.py --slurm --num-gpus 8 --slurm-nodes 2 --config-file F [KEY VALUE ...]``
submits one job of ``nodes x num-gpus`` tasks (one process per GPU). Each task runs
:func:`.train_net.run` (``torch.distributed`` set up from the Slurm environment). submitit asks
Slurm for a warning signal (USR2, 90 s ahead) before a timeout or a preemption; the training loop
(:class:`.preemption.StopSignals`) then finishes its iteration and saves a checkpoint, and
:class:`TrainJob` hands the signal on to submitit, which calls :meth:`TrainJob.checkpoint` (the
same job with ``--resume``) and requeues it. The requeued job resumes from the last checkpoint of
``OUTPUT_DIR`` and ends with the weights an uninterrupted run would have.
``--slurm-local`` runs the job on this machine with submitit's local executor (same requeue path).

Needs ``pip install submitit`` (the ``slurm`` extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
from typing import Any

try:
    import submitit
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("--slurm needs submitit: pip install submitit (or .[slurm])") from exc

from .preemption import TrainingInterrupted


def training_argv(args: argparse.Namespace, *, resume: bool) -> list[str]:
    """The ``tools/train_net.py`` arguments one task runs (one process: no ``--num-gpus``)."""
    argv = ["--config-file", args.config_file] if args.config_file else []
    argv += ["--resume"] if resume else []
    argv += ["--eval-only"] if args.eval_only else []
    argv += ["--allow-random-weights"] if args.allow_random_weights else []
    return argv + list(args.opts)


def _preemption_signal() -> int:
    """The signal submitit requeues on (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class TrainJob(submitit.helpers.Checkpointable):
    """One task of a training job (see the module docstring); picklable for submitit."""

    def __call__(self, argv: list[str]) -> dict[str, float]:
        from .launch import default_argument_parser
        from .train_net import run

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        args = default_argument_parser("slurm task").parse_args(argv)
        try:
            return run(args)
        except TrainingInterrupted as exc:
            print(f"{exc}; handing the signal to submitit to requeue", flush=True)
            if exc.signum in (signal.SIGUSR1, signal.SIGUSR2):
                signal.raise_signal(_preemption_signal())  # submitit: checkpoint() + requeue
                return {}
            raise

    def checkpoint(self, argv: list[str]) -> Any:
        """The job to requeue: the same training, resuming from ``OUTPUT_DIR``."""
        resumed = argv if "--resume" in argv else ["--resume", *argv]
        return submitit.helpers.DelayedSubmission(TrainJob(), resumed)


def build_executor(args: argparse.Namespace, folder: str) -> Any:
    """A submitit executor for ``args``' ``--slurm-*`` options (local with ``--slurm-local``)."""
    if args.slurm_local:
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.slurm_max_requeues)
        executor.update_parameters(timeout_min=args.slurm_time, tasks_per_node=1)
        return executor
    if shutil.which("sbatch") is None:
        # submitit's AutoExecutor would quietly run the job here instead (without the Slurm
        # options, and a multi-node job not at all).
        raise OSError(
            "--slurm: Slurm's sbatch is not on PATH here; submit from a Slurm login node, or "
            "add --slurm-local to run the job on this machine through the same requeue path"
        )
    executor = submitit.AutoExecutor(folder, slurm_max_num_timeout=args.slurm_max_requeues)
    params: dict[str, Any] = {
        "name": "axial-deeplab",
        "timeout_min": args.slurm_time,
        "nodes": args.slurm_nodes,
        "tasks_per_node": args.num_gpus,
        "gpus_per_node": args.num_gpus,
        "cpus_per_task": args.slurm_cpus_per_task,
    }
    if args.slurm_partition:
        params["slurm_partition"] = args.slurm_partition
    if args.slurm_mem_gb:
        params["mem_gb"] = args.slurm_mem_gb
    executor.update_parameters(**params)
    return executor


def submit(args: argparse.Namespace) -> Any:
    """Submit the training of ``args``; prints the job id and log folder, returns the job."""
    from ..config import load_config

    cfg = load_config(args.config_file or None, args.opts)  # fail here, not in the queue
    folder = args.slurm_folder or os.path.join(cfg.OUTPUT_DIR, "slurm")
    executor = build_executor(args, folder)
    job = executor.submit(TrainJob(), training_argv(args, resume=args.resume))
    print(f"submitted job {job.job_id}; logs in {folder}")
    if args.slurm_wait:
        print(job.result())
    return job
