"""glibc's allocator, tuned for processes that free and allocate the same large blocks over and over.

By default glibc maps every block over its mmap threshold (at most 32 MiB) fresh from the system
and unmaps it when freed, so the next block of that size is faulted in again page by page. A
model's activations at full resolution are such blocks (MaX-DeepLab-S at 1025 x 2049: up to
270 MB each), and the page faults cost about a quarter of a CPU forward pass; the batch workers of
the PQ evaluation lose about a tenth of their time the same way. ``keep_freed_memory`` serves
blocks up to a size from the heap and keeps freed memory there for reuse. The cost: the process
holds on to memory it has freed (MaX-S at 1025 x 2049: a peak resident set of 2.6 GB instead of
2.1 GB, which stays resident after the pass).

Only on glibc (Linux); elsewhere nothing changes. Standard library only: the PQ command imports
this at start-up.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# mallopt takes a C int: thresholds stop short of 2 GiB.
MAX_MIB = 2047

# For a model run on the CPU: blocks up to 1 GiB (activations at 1025 x 2049 reach 270 MB), and
# as much freed memory kept as a C int allows.
MODEL_LARGEST_MIB = 1024
MODEL_KEEP_MIB = MAX_MIB
# Set to "0" to leave glibc's defaults to model runs.
ENV_SWITCH = "AXIAL_DEEPLAB_KEEP_FREED_MEMORY"

_applied = {M_MMAP_THRESHOLD: 0, M_TRIM_THRESHOLD: 0}  # MiB, the largest set so far


def keep_freed_memory(largest_mib: int = 64, keep_mib: int = 256) -> bool:
    """Serve blocks up to ``largest_mib`` from the heap and keep up to ``keep_mib`` of freed
    memory there for reuse, instead of returning it to the system. Never lowers what an earlier
    call set (this process may run a model and then evaluate). Returns False where glibc's
    ``mallopt`` is not available (nothing changed)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    for option, mib in ((M_MMAP_THRESHOLD, largest_mib), (M_TRIM_THRESHOLD, keep_mib)):
        mib = min(int(mib), MAX_MIB)
        if mib > _applied[option]:
            if not mallopt(option, mib << 20):
                return False
            _applied[option] = mib
    return True


def keep_freed_memory_for_models(device) -> bool:
    """What evaluation and ``Predictor`` do before running a model on ``device``: on the CPU,
    ``keep_freed_memory(MODEL_LARGEST_MIB, MODEL_KEEP_MIB)`` unless the environment variable
    ``AXIAL_DEEPLAB_KEEP_FREED_MEMORY`` is ``0``. Returns whether it was applied."""
    if getattr(device, "type", str(device).split(":")[0]) != "cpu":
        return False
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    return keep_freed_memory(MODEL_LARGEST_MIB, MODEL_KEEP_MIB)
