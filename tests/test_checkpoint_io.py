"""Atomic saving and weights-only loading of checkpoints."""

import os
import subprocess
import sys

import pytest
import torch

from axial_deeplab.checkpoint.io import load_state_dict_file, save_atomic


def test_roundtrip_unwraps_model_and_module_prefix(tmp_path):
    path = tmp_path / "ckpt.pth"
    state = {"module.conv.weight": torch.arange(6.0).reshape(2, 3)}
    save_atomic({"model": state, "iteration": 3}, path)
    loaded = load_state_dict_file(path)
    assert list(loaded) == ["conv.weight"]
    assert torch.equal(loaded["conv.weight"], state["module.conv.weight"])
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_atomic({"w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"w": Unpicklable()}, path)
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_state_dict_file(tmp_path / "missing.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_state_dict_file(bad)


def test_write_removes_temp_files_of_killed_writes(tmp_path):
    """A write killed mid-way (kill -9) leaves its temporary file; the next write of the same
    file from this machine deletes it, but not those of live writers or of other machines."""
    from axial_deeplab.utils import atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    owner = atomic._temp_owner("model.pth")
    orphan = tmp_path / f"{owner}{dead}-abcd.pth"
    live = tmp_path / f"{owner}{os.getpid()}-efgh.pth"
    elsewhere = tmp_path / f"{atomic.TEMP_PREFIX}otherhost-model.pth-{dead}-ijkl.pth"
    other_file = tmp_path / f"{atomic._temp_owner('other.pth')}{dead}-mnop.pth"
    for path in (orphan, live, elsewhere, other_file):
        path.write_bytes(b"partial")
    save_atomic({"w": torch.ones(1)}, tmp_path / "model.pth")
    assert not orphan.exists()
    assert live.exists() and elsewhere.exists() and other_file.exists()
    assert torch.equal(load_state_dict_file(tmp_path / "model.pth")["w"], torch.ones(1))
