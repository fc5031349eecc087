"""The process group of a ``torchrun`` job is destroyed at exit, before the interpreter's
finalisation (a gloo group left to it can abort a finished process: SIGABRT)."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = r"""
import atexit, os, sys
import torch.distributed as dist
from axial_deeplab.engine.distributed import init_from_env

state = sys.argv[1]


def record():  # registered first, so it runs after the handlers registered later
    with open(f"{state}.{os.environ['RANK']}", "w") as f:
        f.write("alive" if dist.is_initialized() else "destroyed")


atexit.register(record)
init_from_env("cpu")
dist.barrier()
"""


def test_torchrun_process_group_destroyed_at_exit(tmp_path):
    """Two ``torchrun`` processes join the group through ``init_from_env`` and simply return:
    at exit the group is gone before the last exit handlers run, and both exit with 0."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(state)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for rank in (0, 1):
        assert (tmp_path / f"state.{rank}").read_text() == "destroyed", rank
