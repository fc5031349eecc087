"""What the command lines say about misplaced options and bad config values: one ``error:`` line
that names the option or key (found by a user audit of tools/train_net.py and
tools/model_stats.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from axial_deeplab.engine import train_net
from axial_deeplab.utils.cli import DEBUG_ENV

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart" / "synthetic_axial.yaml")


@pytest.mark.parametrize(
    "options, said",
    [
        (["--resume"], "option '--resume' after the KEY VALUE overrides: put options before them "
                       "(... --resume KEY VALUE ...)"),
        (["--resume", "--eval-only"], "options '--resume', '--eval-only' after the KEY VALUE "
                                      "overrides: put options before them (... --resume "
                                      "--eval-only KEY VALUE ...)"),
    ],
)  # fmt: skip
def test_train_net_names_options_after_the_overrides(tmp_path, monkeypatch, options, said):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    out = tmp_path / "out"
    argv = ["--config-file", QUICKSTART, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "6"]
    with pytest.raises(SystemExit) as info:
        train_net.main([*argv, *options])
    assert info.value.code == f"error: {said}"
    assert not out.exists()


def test_train_net_names_a_wrong_type_in_words(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        train_net.main(["--config-file", QUICKSTART, "SOLVER.MAX_ITER", "five"])
    assert info.value.code == (
        "error: command-line override: SOLVER.MAX_ITER: expected an integer, got 'five'"
    )


def test_model_stats_script_prints_one_line_for_a_checkpoint(tmp_path):
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": {}}, checkpoint)
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "model_stats.py"), "--config-file", str(checkpoint)],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {checkpoint}: not a YAML config (a binary file: a checkpoint? checkpoints go in "
        "MODEL.WEIGHTS)\n"
    )


@pytest.mark.parametrize(("rank", "said"), [(None, True), ("0", True), ("1", False)])
def test_cpu_fallback_notice_once_across_processes(monkeypatch, capsys, rank, said):
    """--num-gpus N on a machine without a GPU: only the first process says it runs on the CPU."""
    monkeypatch.setattr(train_net, "torch_cuda_available", lambda: False)
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    train_net.notice_cpu_fallback("cuda")
    assert ("no GPU is available" in capsys.readouterr().out) is said
    train_net.notice_cpu_fallback("cpu")
    assert capsys.readouterr().out == ""
