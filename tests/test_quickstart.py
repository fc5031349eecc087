"""End to end: the quick start, shortened, learns on synthetic scenes (CPU).

An untrained model scores PQ ~3 on these scenes (measured: 3.1 after 20 warm-up iterations); 150
iterations of batch 4 reach ~86 here, so PQ >= 50 can only pass if the whole pipeline learns: data,
targets, model, losses, optimiser, post-processing and PQ.
"""

import contextlib
import io
import json
import os

import pytest

from axial_deeplab.layers.precision import cpu_has_fast_bfloat16
from axial_deeplab.quickstart import main, typed_interpreter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The shortened quick start, run once: its folder, arguments, metrics and printed log."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    args = [
        "--train-images", "32", "--val-images", "8",
        "OUTPUT_DIR", str(out),
        "SOLVER.MAX_ITER", "150", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "20",
        "SOLVER.BASE_LR", "0.003", "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = main(args)
    return out, args, metrics, printed.getvalue()


def test_short_quickstart_learns_and_draws(quickstart, capsys):
    out, args, metrics, log = quickstart
    for stage in (
        "[data] wrote 32 training + 8 held-out scenes",
        "[train] iterations 0..150",
        "[pictures] 8 pictures",
        "meaningless as COCO predictions",
        # commands that run wherever the user is (tools/ is only beside a clone's root)
        f"{typed_interpreter()} -m axial_deeplab.engine.infer_net --weights {out / 'model_best.pth'}",
    ):
        assert stage in log, stage
    written = (out / "log.txt").read_text()  # as tools/train_net.py runs are logged
    assert "[train] iterations 0..150" in written and "reuse the model" in written
    assert metrics["PQ"] >= 50.0, metrics
    assert metrics["mIoU"] >= 60.0, metrics
    pictures = sorted(os.listdir(out / "pictures"))
    assert "synth_000000_vis.png" in pictures
    with open(out / "pictures" / "synth_000000.json", encoding="utf-8") as f:
        assert json.load(f)["segments_info"], "no segment predicted on a held-out scene"
    # A second run resumes the finished run (no retraining) and evaluates it again: same numbers.
    again = main(args)
    assert again == pytest.approx(metrics)
    log = capsys.readouterr().out
    assert "[data] reused" in log and "[train] already finished (150 iterations)" in log


@pytest.mark.skipif(not cpu_has_fast_bfloat16(), reason="this CPU has no fast bfloat16")
def test_quickstart_model_under_mixed_precision_scores_alike(quickstart):
    _, args, metrics, _ = quickstart
    # Mixed precision (TEST.AMP: bfloat16 here) on the trained model: nearly the same numbers.
    # Measured on the full quick start's model: PQ 86.41 -> 86.38, mIoU 92.17 -> 92.14, 0.03% of
    # the panoptic pixels changed; an untrained model scores PQ ~3, so a broken path fails this.
    amp = main([*args, "TEST.AMP", "True"])
    assert abs(amp["PQ"] - metrics["PQ"]) <= 1.0, (amp, metrics)
    assert abs(amp["mIoU"] - metrics["mIoU"]) <= 1.0, (amp, metrics)


def test_reuse_commands_name_the_interpreter_that_ran(tmp_path, monkeypatch):
    # After `make quickstart` the venv is not active in the user's shell: a printed plain
    # `python` could be one without torch, so the commands name the venv's interpreter.
    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.executable", str(venv_python))
    assert typed_interpreter() == os.path.join(".venv", "bin", "python")
    monkeypatch.chdir(tmp_path.parent)  # the interpreter lies inside the current folder
    assert typed_interpreter() == os.path.join(tmp_path.name, ".venv", "bin", "python")
    monkeypatch.setattr("sys.executable", "/usr/bin/python3")  # outside: the full path
    assert typed_interpreter() == "/usr/bin/python3"
