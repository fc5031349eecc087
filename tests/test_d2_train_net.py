"""End to end under detectron2: ``tools/d2_train_net.py`` trains a few iterations on synthetic
scenes and evaluates; ``--eval-only`` reproduces the numbers from the checkpoint; ``--resume``
continues the run and its poly learning-rate schedule. Skipped without detectron2."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip(
    "detectron2",
    reason="detectron2 is not installed; it is not on PyPI: pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git@c69939aa' (README, 'detectron2 plugin')",
)

from axial_deeplab.d2.train import argument_parser, main  # noqa: E402
from axial_deeplab.engine.optim import poly_warmup_factor  # noqa: E402

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(tmp_path, max_iter: int, *flags: str) -> list[str]:
    return [
        *flags, "--config-file", os.path.join(REPO, "configs/quickstart/synthetic_axial.yaml"),
        "--synthetic-dir", str(tmp_path / "data"), "--synthetic-train", "8", "--synthetic-val", "4",
        "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "4", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DEVICE", "cpu",
    ]  # fmt: skip


def _run_tool(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/d2_train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _metrics(out_dir) -> tuple[dict, dict]:
    """The last training record and the last evaluation record of ``metrics.json``."""
    with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if "total_loss" in r]
    evaluation = [r for r in records if "panoptic_seg/PQ" in r]
    return train[-1], evaluation[-1]


def test_d2_train_net_trains_evaluates_and_resumes(tmp_path):
    log = _run_tool(_args(tmp_path, 6))
    assert "Starting training from iteration 0" in log
    train, final = _metrics(tmp_path / "out")
    assert train["iteration"] == 5
    for key in ("total_loss", "loss_sem_seg", "loss_center", "loss_offset"):
        assert train[key] == train[key] and train[key] < 1e3, key  # finite
    assert {"panoptic_seg/PQ", "panoptic_seg/PQ_th", "sem_seg/mIoU"} <= set(final)
    assert final["sem_seg/mIoU"] > 0
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")

    # --eval-only on the final checkpoint: the numbers of the evaluation after training
    weights = str(tmp_path / "out" / "model_final.pth")
    args = _args(tmp_path, 6, "--eval-only") + ["MODEL.WEIGHTS", weights]
    results = main(argument_parser().parse_args(args))
    assert results["panoptic_seg"]["PQ"] == pytest.approx(final["panoptic_seg/PQ"])
    assert results["sem_seg"]["mIoU"] == pytest.approx(final["sem_seg/mIoU"])

    # --resume with a longer schedule: continues at iteration 6 with the schedule's LR there
    log = _run_tool(_args(tmp_path, 9, "--resume"))
    assert "Starting training from iteration 6" in log
    resumed, _ = _metrics(tmp_path / "out")
    assert resumed["iteration"] == 8
    factor = poly_warmup_factor(8, max_iter=9, power=0.9, warmup_iters=4, warmup_factor=0.001)
    assert resumed["lr"] == pytest.approx(0.002 * factor)


def test_d2_train_net_user_errors_are_one_line(tmp_path):
    """As tools/train_net.py: a misspelled key names the nearest one; --eval-only refuses to run
    without weights (detectron2 would score a random model) and names missing weights; a name
    that detectron2's registry lacks names the registered ones."""
    config = ["--config-file", os.path.join(REPO, "configs/quickstart/synthetic_axial.yaml")]
    out = ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    cases = [
        (["SOLVER.MAX_ITERS", "10"], "unknown config key 'SOLVER.MAX_ITERS' (did you mean "
         "'SOLVER.MAX_ITER'?)"),
        (["--eval-only"], "--eval-only without MODEL.WEIGHTS would evaluate a randomly"),
        (["--eval-only", "MODEL.WEIGHTS", str(tmp_path / "nope.pth")],
         f"MODEL.WEIGHTS not found (or not a file): {tmp_path / 'nope.pth'}"),
        (["--eval-only", "--allow-random-weights", "MODEL.META_ARCHITECTURE", "AxialDeeplab"],
         "MODEL.META_ARCHITECTURE 'AxialDeeplab' is not in detectron2's META_ARCH registry (did "
         "you mean 'AxialDeepLab'?); registered: AxialDeepLab, "),
    ]  # fmt: skip
    for extra, expected in cases:
        flags = [a for a in extra if a.startswith("--")]
        opts = [a for a in extra if not a.startswith("--")]
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools/d2_train_net.py"), *flags, *config,
             *out, *opts],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode != 0, extra
        # (detectron2's environment report imports torch.utils.cpp_extension, whose logger warns
        # on a CPU-only machine: not ours, not an error line)
        lines = [x for x in proc.stderr.strip().splitlines() if "cpp_extension.py" not in x]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
            extra,
            proc.stderr[-2000:],
        )


def test_d2_train_net_worker_error_is_its_own_line(tmp_path):
    """With ``--num-gpus 2`` a worker's user error reaches the user as with one process; torch
    handed detectron2's launcher only its traceback's text ("unexpected
    ProcessRaisedException")."""
    weights = str(tmp_path / "nope.pth")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools/d2_train_net.py"), "--num-gpus", "2",
         "--eval-only", "--config-file", os.path.join(REPO, "configs/quickstart/synthetic_axial.yaml"),
         "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: MODEL.WEIGHTS not found (or not a file): {weights}", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr


def test_d2_train_net_two_cpu_processes(tmp_path):
    """``--num-gpus 2`` without GPUs (gloo): detectron2 wrapped the CPU model in DDP with
    ``device_ids=[rank]``, which PyTorch refuses; it trains and evaluates now."""
    log = _run_tool(_args(tmp_path, 2, "--num-gpus", "2"))
    assert "Starting training from iteration 0" in log
    train, final = _metrics(tmp_path / "out")
    assert train["iteration"] == 1 and train["total_loss"] < 1e3
    assert "panoptic_seg/PQ" in final
