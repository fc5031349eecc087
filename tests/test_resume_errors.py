"""``--resume`` from a checkpoint that cannot serve: a one-line ``ValueError`` that names the file
and what does not fit (the tensors, the optimizer, the config keys that changed), never PyTorch's
raw error; ``tools/train_net.py`` prints it as a user error."""

import os
import re

import pytest
import torch
from test_preemption import _tiny_data
from test_trainer import _trainer
from torch import nn

from axial_deeplab.checkpoint.io import save_checkpoint_file
from axial_deeplab.config import ConfigError
from axial_deeplab.engine.launch import launch
from axial_deeplab.engine.train_net import main


def _truncate(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])  # as a copy cut short or a full disk leaves it


def test_truncated_checkpoint_named_with_an_earlier_one(tmp_path):
    _trainer(tmp_path, 6).train()  # checkpoints at 3 and 6
    _truncate(tmp_path / "model_0000006.pth", 1000)
    with pytest.raises(ValueError) as failure:
        _trainer(tmp_path, 8).resume()
    message = str(failure.value)
    assert message.startswith(f"cannot resume from {tmp_path / 'model_0000006.pth'}, which cannot")
    assert f"e.g. model_0000003, into {tmp_path / 'last_checkpoint'}" in message


def test_changed_model_names_tensors_and_config_keys(tmp_path):
    trainer = _trainer(tmp_path, 3)
    trainer.checkpoint_info = {"config": "MODEL:\n  WIDTH: 1\nSOLVER:\n  LR: 0.05\n"}
    trainer.train()
    resumed = _trainer(tmp_path, 6)
    resumed.model.conv = nn.Conv2d(3, 1, 5, padding=2)  # _Net's conv is 3 x 3
    resumed.checkpoint_info = {"config": "MODEL:\n  WIDTH: 2\nSOLVER:\n  LR: 0.01\n"}
    with pytest.raises(ValueError) as failure:
        resumed.resume()
    message = str(failure.value)
    assert message.startswith(f"cannot resume from {tmp_path / 'model_0000003.pth'}: its weights")
    # the MODEL key that changed, not the SOLVER one
    assert "differs from the one saved in it: MODEL.WIDTH 2 (saved: 1);" in message
    assert "SOLVER" not in message
    assert "conv.weight [1, 3, 3, 3] in the file, [1, 3, 5, 5] in the model" in message


def test_changed_optimizer_named(tmp_path):
    _trainer(tmp_path, 3).train()  # radam_lookahead over two parameter groups
    resumed = _trainer(tmp_path, 6)
    resumed.optimizer = torch.optim.SGD(resumed.model.parameters(), lr=0.1)  # one group
    with pytest.raises(ValueError, match=r"model_0000003\.pth: its optimizer state does not fit"):
        resumed.resume()


def test_another_optimizer_in_the_config_is_refused(tmp_path):
    """Adam's state loads into RAdam without an error: the saved config's optimizer decides."""
    trainer = _trainer(tmp_path, 3)
    trainer.checkpoint_info = {"config": "SOLVER:\n  OPTIMIZER: radam_lookahead\n"}
    trainer.train()
    resumed = _trainer(tmp_path, 6)
    resumed.checkpoint_info = {"config": "SOLVER:\n  OPTIMIZER: adam\n"}
    with pytest.raises(
        ValueError, match=r"other optimizer settings: SOLVER.OPTIMIZER adam \(saved: radam"
    ):
        resumed.resume()


@pytest.mark.parametrize("key, value", [("BASE_LR", "0.02"), ("WEIGHT_DECAY", "0.1")])
def test_a_setting_the_optimizer_state_overrides_is_refused(tmp_path, key, value):
    """The resumed optimizer and schedule keep the saved learning rate and decay (as in
    detectron2): a new value would be ignored while config.yaml recorded it."""
    trainer = _trainer(tmp_path, 3)
    trainer.checkpoint_info = {"config": "SOLVER:\n  BASE_LR: 0.002\n  WEIGHT_DECAY: 0.0\n"}
    trainer.train()
    resumed = _trainer(tmp_path, 6)
    resumed.checkpoint_info = {"config": trainer.checkpoint_info["config"].replace(
        f"{key}: {'0.002' if key == 'BASE_LR' else '0.0'}", f"{key}: {value}")}  # fmt: skip
    with pytest.raises(ValueError, match=rf"settings: SOLVER.{key} {value} \(saved: "):
        resumed.resume()


def test_classes_in_another_order_are_refused(tmp_path):
    names = {"class_names": ["sky", "car", "person"], "thing_ids": [1, 2], "label_divisor": 1000}
    trainer = _trainer(tmp_path, 3)
    trainer.checkpoint_info = {"metadata": names}
    trainer.train()
    resumed = _trainer(tmp_path, 6)
    resumed.checkpoint_info = {"metadata": {**names, "class_names": ["car", "sky", "person"]}}
    with pytest.raises(ValueError, match=r"ordered differently \(class 0 is 'sky' in .*'car' in"):
        resumed.resume()
    resumed.checkpoint_info = {"metadata": {**names, "class_names": ["sky", "auto", "person"]}}
    assert resumed.resume()  # a renamed class: a note, not an error


def test_last_checkpoint_written_by_detectron2_or_missing(tmp_path, capsys):
    _trainer(tmp_path, 6).train()  # checkpoints at 3 and 6
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")  # detectron2's form
    resumed = _trainer(tmp_path, 8)
    assert resumed.resume() and resumed.iteration == 3
    (tmp_path / "last_checkpoint").unlink()  # lost: the last numbered checkpoint serves
    resumed = _trainer(tmp_path, 8)
    assert resumed.resume() and resumed.iteration == 6
    assert "no last_checkpoint file" in capsys.readouterr().out
    (tmp_path / "last_checkpoint").write_text("")
    with pytest.raises(FileNotFoundError, match=r"names no checkpoint.*e.g. model_0000006, into"):
        _trainer(tmp_path, 8).resume()


def test_weights_only_checkpoint_is_no_training_state(tmp_path):
    save_checkpoint_file(tmp_path / "model_0000005.pth", _trainer(tmp_path, 1).model.state_dict())
    (tmp_path / "last_checkpoint").write_text("model_0000005")
    with pytest.raises(ValueError, match=r"holds no training state \['optimizer'"):
        _trainer(tmp_path, 6).resume()


def test_train_net_resume_errors_are_one_line_user_errors(tmp_path):
    """The two failures of ``tools/train_net.py --resume`` reported as "unexpected RuntimeError"
    before: a truncated checkpoint, and a model changed by an override."""
    argv = [*_tiny_data(tmp_path), "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "1"]
    main(argv)
    saved = (tmp_path / "out" / "config.yaml").read_text()
    checkpoint = tmp_path / "out" / "model_0000001.pth"
    with pytest.raises(SystemExit) as failure:
        main(["--resume", *argv, "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"])
    message = str(failure.value.code)
    assert re.match(f"error: cannot resume from {re.escape(str(checkpoint))}: its weights", message)
    assert "MODEL.SEM_SEG_HEAD.CONVS_DIM 32 (saved: " in message
    assert "tensors differ in shape (e.g. " in message and "\n" not in message
    assert (tmp_path / "out" / "config.yaml").read_text() == saved  # the refused run's is not
    _truncate(checkpoint, 100_000)
    with pytest.raises(SystemExit) as failure:
        main(["--resume", *argv])
    message = str(failure.value.code)
    assert message.startswith(f"error: cannot resume from {checkpoint}, which cannot be loaded")
    assert "unexpected" not in message and "\n" not in message


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path, capsys):
    """A mistyped OUTPUT_DIR with --resume used to start from scratch without a word."""
    out = tmp_path / "typo"
    main(["--resume", *_tiny_data(tmp_path), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1"])
    assert f"--resume: no checkpoint in {out}: training from the start" in capsys.readouterr().out


def test_config_differences_name_every_changed_key():
    """Past the first three, the changed keys were a count ("and 1 more"), which hid the one
    that made the weights not fit (NUM_CLASSES, after three loss weights)."""
    from axial_deeplab.engine.resume import config_differences

    saved = "MODEL:\n  A: 1\n  B: 1\n  C: 1\n  NUM_CLASSES: 19\nSOLVER:\n  LR: 1\n"
    current = "MODEL:\n  A: 2\n  B: 2\n  C: 2\n  NUM_CLASSES: 133\nSOLVER:\n  LR: 2\n"
    assert config_differences(saved, current, "MODEL") == (
        "MODEL.A 2 (saved: 1), MODEL.B 2 (saved: 1), MODEL.C 2 (saved: 1) and 1 more: "
        "MODEL.NUM_CLASSES"
    )


def test_a_new_run_over_an_earlier_one_is_refused_and_seed_minus_one_resumes_alike(
    tmp_path, capsys
):
    """Without --resume, a run in a folder holding another one's checkpoints used to cut its
    metrics.json to nothing and overwrite its checkpoints; SEED -1 drew a new seed on resume (a
    new data order for the rest of the run)."""
    argv = [*_tiny_data(tmp_path), "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "-1"]
    main([*argv, "SOLVER.MAX_ITER", "1"])
    drawn = re.search(r"using the random seed (\d+)", capsys.readouterr().out).group(1)
    records = (tmp_path / "out" / "metrics.json").read_text()
    with pytest.raises(SystemExit) as failure:
        main([*argv, "SOLVER.MAX_ITER", "2"])
    assert str(failure.value.code) == (
        f"error: OUTPUT_DIR {tmp_path / 'out'} holds an earlier run (model_0000001.pth): pass "
        "--resume to continue it, or give another OUTPUT_DIR (or delete that one) to start a new run"
    )
    assert (tmp_path / "out" / "metrics.json").read_text() == records  # untouched
    main(["--resume", *argv, "SOLVER.MAX_ITER", "2"])
    assert f"resuming with the run's seed, {drawn}" in capsys.readouterr().out
    assert f"SEED: {drawn}\n" in (tmp_path / "out" / "config.yaml").read_text()
    # OUTPUT_DIR/log.txt holds what the three runs printed, a bar's last state, and the refusal
    log = (tmp_path / "out" / "log.txt").read_text()
    assert log.count("] ") >= 3 and f"using the random seed {drawn}" in log
    assert "ended by ConfigError: OUTPUT_DIR" in log and "train: 100%" in log
    assert "\r" not in log


def _fails_on_rank_1() -> None:
    if os.environ["RANK"] == "1":
        raise ConfigError("SOLVER.IMS_PER_BATCH 3 is not divisible by 2 processes")


def test_an_error_in_a_worker_process_is_raised_as_itself():
    """--num-gpus 2: a worker's bad-config error reached the user as torch's wrapper of its
    traceback, cut to 600 characters before the reason."""
    with pytest.raises(ConfigError, match=r"^SOLVER.IMS_PER_BATCH 3 is not divisible by 2"):
        launch(_fails_on_rank_1, 2)


def test_one_line_of_an_error_wrapped_by_torch_multiprocessing():
    """detectron2's launch (tools/d2_train_net.py --num-gpus N) re-raises a worker's error as
    torch's ProcessRaisedException holding the traceback text: the last line is the message."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    from axial_deeplab.utils.cli import one_line

    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call "
            'last):\n  File "x.py", line 1, in f\n    g()\naxial_deeplab.config.ConfigError: '
            "SOLVER.IMS_PER_BATCH 3 is not divisible by 2 processes\n")  # fmt: skip
    wrapped = ProcessRaisedException(text, 1, 123)
    assert one_line(wrapped) == "SOLVER.IMS_PER_BATCH 3 is not divisible by 2 processes"
