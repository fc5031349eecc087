"""glibc allocator settings (``utils.host_memory``): what is passed to ``mallopt``, and when."""

from __future__ import annotations

import ctypes

import pytest
import torch

from axial_deeplab.utils import host_memory


@pytest.fixture
def calls(monkeypatch) -> list[tuple[int, int]]:
    """``mallopt`` replaced by a recorder (nothing reaches the real allocator), settings reset."""
    recorded: list[tuple[int, int]] = []

    class FakeLibc:
        @staticmethod
        def mallopt(option: int, value: int) -> int:
            recorded.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc)
    monkeypatch.setattr(host_memory, "_applied", dict.fromkeys(host_memory._applied, 0))
    monkeypatch.delenv(host_memory.ENV_SWITCH, raising=False)
    return recorded


MMAP, TRIM = host_memory.M_MMAP_THRESHOLD, host_memory.M_TRIM_THRESHOLD


def test_thresholds_only_rise_and_fit_a_c_int(calls):
    assert host_memory.keep_freed_memory(64, 256)
    assert calls == [(MMAP, 64 << 20), (TRIM, 256 << 20)]
    calls.clear()
    assert host_memory.keep_freed_memory(32, 128)  # lower: an evaluation after a model run
    assert calls == []
    assert host_memory.keep_freed_memory(4096, 4096)  # 4 GiB would wrap around in a C int
    assert calls == [(MMAP, 2047 << 20), (TRIM, 2047 << 20)]
    assert all(0 < value < 2**31 for _, value in calls)


def test_model_runs_on_the_cpu_only_and_can_be_switched_off(calls, monkeypatch):
    assert not host_memory.keep_freed_memory_for_models(torch.device("cuda", 0))
    assert not host_memory.keep_freed_memory_for_models("meta")
    assert calls == []
    monkeypatch.setenv(host_memory.ENV_SWITCH, "0")
    assert not host_memory.keep_freed_memory_for_models(torch.device("cpu"))
    assert calls == []
    monkeypatch.setenv(host_memory.ENV_SWITCH, "1")
    assert host_memory.keep_freed_memory_for_models("cpu")
    largest, keep = host_memory.MODEL_LARGEST_MIB, host_memory.MODEL_KEEP_MIB
    assert calls == [(MMAP, largest << 20), (TRIM, keep << 20)]


def test_a_refused_setting_is_reported(calls, monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: type("L", (), {"mallopt": lambda o, v: 0}))
    assert not host_memory.keep_freed_memory(64, 256)
    assert host_memory._applied[MMAP] == 0  # not recorded as set: a later call tries again


def test_no_mallopt_changes_nothing(monkeypatch):
    def no_libc(name):
        raise OSError("no C library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert not host_memory.keep_freed_memory(64, 256)


class Applied(Exception):
    """Raised by the recorder below: the evaluation stops right after the setting."""


def test_predictor_and_evaluation_apply_it_for_their_device(monkeypatch):
    from axial_deeplab.data.catalog import DatasetMetadata
    from axial_deeplab.engine import evaluate, inference

    seen = []
    monkeypatch.setattr(inference, "keep_freed_memory_for_models", seen.append)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    inference.Predictor(model, metadata={"class_names": ["a"]}, device="cpu")
    assert seen == [torch.device("cpu")]

    def record_and_stop(device):
        seen.append(device)
        raise Applied

    monkeypatch.setattr(evaluate, "keep_freed_memory_for_models", record_and_stop)
    metadata = DatasetMetadata("t", ({"id": 0, "train_id": 0, "name": "x", "isthing": 1},))
    settings = evaluate.PostProcessing()
    with pytest.raises(Applied):
        evaluate.evaluate_panoptic(model, [], metadata, settings, device=torch.device("cpu"))
    assert seen[1:] == [torch.device("cpu")]
