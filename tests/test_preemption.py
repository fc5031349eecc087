"""Stopping and resuming training: a stop signal (Ctrl-C, SIGTERM, SIGUSR1, a scheduler's
preemption notice) saves a checkpoint at an iteration boundary and the resumed run ends with the
weights of an uninterrupted one; temp files of a killed write are cleaned; ``metrics.json`` has one
record per iteration after a resume; ``tools/train_net.py`` exits on SIGTERM with one line and a
resume hint; a submitit job preempted mid-run is requeued and ends as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_trainer import _batches, _trainer

from axial_deeplab.data import loader
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
from axial_deeplab.engine.events import read_metrics
from axial_deeplab.engine.preemption import StopSignals, TrainingInterrupted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _signalling_batches(signum: int, at: int):
    """The toy batches of ``test_trainer``; while loading batch ``at`` this process receives
    ``signum`` (as if a scheduler sent it mid-run)."""

    def batches(start_iter: int):
        for i, batch in enumerate(_batches(start_iter), start=start_iter):
            if i == at:
                os.kill(os.getpid(), signum)
            yield batch

    return batches


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signal_saves_and_resume_matches_uninterrupted(tmp_path, signum):
    _trainer(tmp_path / "full", 8).train()
    trainer = _trainer(tmp_path / "split", 8)
    trainer.batches = _signalling_batches(signum, at=4)
    before = signal.getsignal(signum)
    # checkpoint period 3: the stop at 5 (batch 4 is the 5th) is between two periodic checkpoints
    with pytest.raises(
        TrainingInterrupted, match=f"{signal.Signals(signum).name} after iteration 5"
    ):
        trainer.train()
    assert (tmp_path / "split" / "last_checkpoint").read_text() == "model_0000005"
    assert signal.getsignal(signum) == before  # the previous handler is back
    _assert_resume_matches_full(tmp_path, 5)
    # one metrics record per iteration, none replayed
    iterations = [r["iteration"] for r in read_metrics(tmp_path / "split" / "metrics.json")]
    assert iterations == list(range(1, 9))


def test_stop_signal_is_acknowledged_and_a_second_ctrl_c_stops_at_once(capsys):
    """A stop signal waits for the iteration (and an evaluation, which may take many minutes):
    it used to be silent, and repeating Ctrl-C did nothing."""
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeat: nothing more
        assert stop.signum == signal.SIGTERM
        assert capsys.readouterr().err.count("SIGTERM: stopping after this iteration") == 1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode boundary


def test_loader_failing_after_stop_signal_abandons_iteration(tmp_path):
    """A loader that fails once the stop signal is pending (its workers got it too, e.g. from a
    scheduler that signals every process): the iteration is abandoned before its step, its start
    is saved, and the resumed run ends as an uninterrupted one."""

    def batches(start_iter: int):
        for i, batch in enumerate(_batches(start_iter), start=start_iter):
            if i == 4:
                os.kill(os.getpid(), signal.SIGTERM)
                raise RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly")
            yield batch

    _trainer(tmp_path / "full", 8).train()
    trainer = _trainer(tmp_path / "split", 8)
    trainer.batches = batches
    with pytest.raises(TrainingInterrupted, match="SIGTERM after iteration 4"):
        trainer.train()
    assert (tmp_path / "split" / "last_checkpoint").read_text() == "model_0000004"
    _assert_resume_matches_full(tmp_path, 4)


def _assert_resume_matches_full(tmp_path, iteration: int) -> None:
    """``split`` resumes at ``iteration`` and ends with the weights of the uninterrupted ``full``."""
    resumed = _trainer(tmp_path / "split", 8)
    assert resumed.resume() and resumed.iteration == iteration
    resumed.train()
    full, split = (
        _weights(tmp_path / "full" / "model_0000008.pth"),
        _weights(tmp_path / "split" / "model_0000008.pth"),
    )
    assert full.keys() == split.keys() and full  # the same tensors, and some
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_resume_cuts_replayed_metrics_and_removes_stale_temp_files(tmp_path):
    _trainer(tmp_path, 3).train()  # checkpoint at 3
    with open(tmp_path / "metrics.json", "a", encoding="utf-8") as f:  # a crash after 5 logged
        f.write('{"iteration": 4, "total_loss": 1.0}\n{"iteration": 5, "total_loss": 1.0}\n{"iter')
    for name in (".tmp-abc123.pth", ".tmp-x.txt"):  # a kill -9 during atomic writes
        (tmp_path / name).write_bytes(b"partial")
    resumed = _trainer(tmp_path, 6)
    assert resumed.resume() and resumed.iteration == 3
    resumed.train()
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.json")] == list(range(1, 7))
    assert not list(tmp_path.glob(".tmp-*"))


def _tiny_data(root) -> list[str]:
    """4 + 2 synthetic scenes of 48 x 48 and the overrides that train the quick-start model on
    them in a few seconds."""
    data = str(root / "data")
    write_synthetic_dataset(data, splits={"train": 4, "val": 2}, height=48, width=48, seed=1,
                            formats=("coco",))  # fmt: skip
    coco = f"{data}/coco"
    custom = [{"NAME": "tiny_train", "JSON_FILE": f"{coco}/panoptic_train.json",
               "PNG_DIR": f"{coco}/panoptic/train", "IMAGE_DIR": f"{coco}/images/train"}]  # fmt: skip
    return [
        "--config-file", os.path.join(REPO, "configs/quickstart/synthetic_axial.yaml"),
        "DATASETS.CUSTOM", str(custom), "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "[48, 48]", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100", "LOG_PERIOD", "1",
        "VIS_PERIOD", "0",
    ]  # fmt: skip


def _wait_for_iterations(metrics: str, count: int, proc, timeout: float = 240) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if os.path.exists(metrics) and len(read_metrics(metrics)) >= count:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError(f"no {count} iterations in {timeout} s")


@pytest.mark.parametrize(
    "processes", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["1proc", "2proc"]
)
def test_train_net_sigterm_exits_with_checkpoint_and_resume_hint(tmp_path, processes):
    """SIGTERM to ``tools/train_net.py`` (with 2 processes: to the parent, which passes it on)."""
    argv = [*_tiny_data(tmp_path), "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "500"]
    argv = ["--num-gpus", str(processes), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tools/train_net.py"), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_iterations(str(tmp_path / "out" / "metrics.json"), 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in out + err
    last = (tmp_path / "out" / "last_checkpoint").read_text()
    stopped = int(last.removeprefix("model_"))
    assert 2 <= stopped < 500
    assert f"stopped by SIGTERM after iteration {stopped}" in err
    assert "resume with:" in err and "--resume" in err
    assert _weights(tmp_path / "out" / f"{last}.pth")  # a loadable checkpoint


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        *(pytest.param(s, marks=pytest.mark.slow) for s in (signal.SIGINT, signal.SIGUSR1)),
    ],
    ids=lambda s: signal.Signals(s).name,
)
def test_group_signal_with_loader_worker_stops_cleanly_and_resumes(tmp_path, signum):
    """The signal to the whole process group (as ``timeout``, Slurm and a terminal send it) with a
    loader worker: the worker, signalled too, must not fail the run; no process is left behind and
    ``--resume`` continues from the checkpoint."""
    out = tmp_path / "out"
    argv = [*_tiny_data(tmp_path), "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    script = os.path.join(REPO, "tools/train_net.py")
    proc = subprocess.Popen(
        [sys.executable, script, *argv, "SOLVER.MAX_ITER", "500"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, with its loader worker
    )
    try:
        _wait_for_iterations(str(out / "metrics.json"), 2, proc)
        os.killpg(proc.pid, signum)
        out_text, err = proc.communicate(timeout=120)
        deadline = time.time() + 10
        while _group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), "a loader worker outlived the run"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in out_text + err and "error:" not in err, err[-2000:]
    last = (out / "last_checkpoint").read_text()
    stopped = int(last.removeprefix("model_"))
    assert 2 <= stopped < 500
    assert f"stopped by {name} after iteration {stopped}" in err
    assert "resume with:" in err and "--resume" in err
    resumed = subprocess.run(
        [sys.executable, script, "--resume", *argv, "SOLVER.MAX_ITER", str(stopped + 1)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from iteration {stopped}" in resumed.stdout
    assert (out / "last_checkpoint").read_text() == f"model_{stopped + 1:07d}"


class _Stamps(torch.utils.data.Dataset):
    """Samples that say which process made them, and when."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key) -> dict:
        time.sleep(0.01)
        return {
            "pid": torch.tensor(os.getpid()),
            "made": torch.tensor(time.time(), dtype=torch.float64),
        }


def test_loader_worker_signalled_alone_serves_then_exits_cleanly(monkeypatch):
    """SIGTERM to a loader worker alone (from another process than its parent, whose own
    ``terminate()`` PyTorch treats apart): it serves on for the grace period, then exits with
    status 0, so that the main process fails when it next waits for a batch, not wherever PyTorch's
    SIGCHLD handler finds it (before: "killed by signal" at once)."""
    if torch.multiprocessing.get_start_method() != "fork":
        pytest.skip("the workers must be forked to see the shortened grace period")
    monkeypatch.setattr(loader, "WORKER_SIGTERM_GRACE_S", 1.0)
    batches = iter(loader.build_train_loader(_Stamps(), batch_size=1, seed=0, num_workers=1))
    pid = int(next(batches)["pid"])
    kill = f"import os, signal; os.kill({pid}, signal.SIGTERM)"
    subprocess.run([sys.executable, "-c", kill], check=True)
    sent = time.time()
    while float(next(batches)["made"]) < sent:  # the batches prefetched before the signal
        pass
    # the loader notices the missing worker, or cannot fetch the memory of a batch it had sent
    with pytest.raises((RuntimeError, OSError)) as failure:
        while time.time() < sent + 30:
            next(batches)
    assert "killed by signal" not in str(failure.value)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_submitit_job_preempted_and_requeued_ends_as_uninterrupted(tmp_path):
    submitit = pytest.importorskip("submitit")
    from axial_deeplab.engine.launch import default_argument_parser
    from axial_deeplab.engine.slurm import TrainJob
    from axial_deeplab.engine.train_net import run

    common = [*_tiny_data(tmp_path), "SOLVER.MAX_ITER", "8"]
    run(default_argument_parser("t").parse_args([*common, "OUTPUT_DIR", str(tmp_path / "full")]))
    executor = submitit.LocalExecutor(str(tmp_path / "logs"))
    executor.update_parameters(timeout_min=10)
    out = tmp_path / "job"
    job = executor.submit(TrainJob(), [*common, "OUTPUT_DIR", str(out)])
    try:
        _wait_for_iterations(str(out / "metrics.json"), 2, job._process)
        # the preemption notice Slurm sends (submitit asks for USR2), to the task process
        for pid in _children(job._process.pid):
            os.kill(pid, signal.SIGUSR2)
        job.result()
    finally:
        job.cancel(check=False)
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.*"))
    assert "Requeued job" in log, log[-3000:]
    assert "resumed from iteration" in log, log[-3000:]
    stopped = int(log.split("resumed from iteration ")[1].split()[0])
    assert 2 <= stopped < 8
    full, job_weights = (
        _weights(tmp_path / "full" / "model_0000008.pth"),
        _weights(out / "model_0000008.pth"),
    )
    assert full.keys() == job_weights.keys() and full  # the same tensors, and some
    assert all(torch.equal(full[k], job_weights[k]) for k in full)
    iterations = [r["iteration"] for r in read_metrics(str(out / "metrics.json"))]
    assert iterations == list(range(1, 9))
