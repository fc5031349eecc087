"""Process-group helpers for ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_from_env(device: str) -> torch.device:
    """Join the process group described by ``torchrun``'s environment, if any; pick the device.

    Returns the device this rank computes on (``cuda:LOCAL_RANK`` or ``cpu``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if world_size > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        # Destroyed at exit while the interpreter is alive: a gloo group left to the interpreter's
        # finalisation can abort the process (SIGABRT, "terminate called without an active
        # exception": its threads outlive the interpreter), which torchrun then reports as a
        # failed run after a finished one (PyTorch issue 190489).
        atexit.register(_destroy_process_group)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _destroy_process_group() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, torch.Tensor], due: bool = True) -> dict[str, torch.Tensor]:
    """Scalar tensors averaged over all ranks (logged losses are the whole batch's, as
    detectron2 logs them); ``values`` as they are on one process or when not ``due`` (every rank
    must agree on ``due``)."""
    if not is_distributed() or not due:
        return values
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, stacked / get_world_size(), strict=True))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Every buffer of ``module`` (batch-norm statistics) set to rank 0's, on every rank. Between
    training steps each rank holds the statistics of its own last batch (DDP copies rank 0's at
    the start of a forward pass, then each rank updates them); rank 0's are the ones saved."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
