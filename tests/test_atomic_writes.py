"""Atomic writes: the file appears whole or not at all, and Ctrl-C or SIGTERM during the write
is handled once it is in place (an audit's Ctrl-C inside torch.save came out as torch's own
"enforce fail" error, and SIGTERM left the temporary file behind)."""

import os
import signal

import pytest
import torch

from axial_deeplab.checkpoint.io import save_atomic
from axial_deeplab.utils.atomic import TEMP_PREFIX, atomic_write


def _interrupting_write(signum: int):
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("first half ")
            os.kill(os.getpid(), signum)  # delivered now, in the middle of the write
            f.write("second half")

    return write


def test_ctrl_c_during_a_write_stops_after_the_file_is_in_place(tmp_path):
    path = tmp_path / "out" / "result.json"  # its folder is made
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), ".json", _interrupting_write(signal.SIGINT))
    assert path.read_text() == "first half second half"
    assert not [n for n in os.listdir(path.parent) if n.startswith(TEMP_PREFIX)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_during_a_write_reaches_the_handler_after_it(tmp_path):
    calls = []
    previous = signal.signal(
        signal.SIGTERM, lambda signum, frame: calls.append(os.listdir(tmp_path))
    )
    try:
        atomic_write(str(tmp_path / "a.txt"), ".txt", _interrupting_write(signal.SIGTERM))
    finally:
        handler = signal.signal(signal.SIGTERM, previous)
    assert calls == [["a.txt"]]  # once, with the file in place and no temporary file
    assert handler is not previous and callable(handler)  # ours was back in place


def test_ctrl_c_inside_torch_save_is_a_plain_interrupt(tmp_path, monkeypatch):
    original = torch.save

    def save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"w": torch.zeros(1000)}, tmp_path / "m.pth")
    assert torch.load(tmp_path / "m.pth", weights_only=True)["w"].shape == (1000,)
