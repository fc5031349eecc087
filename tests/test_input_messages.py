"""What the tools say about inputs that cannot serve: each message names the file and the actual
problem (found by a new user's audit of the command lines), and bad outputs are refused before
any work is done."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from axial_deeplab.checkpoint.io import load_state_dict_file
from axial_deeplab.config import ConfigError
from axial_deeplab.data.images import ImageDecodeError, decode_image_file
from axial_deeplab.engine import infer_net, predictor_setup
from axial_deeplab.engine.inputs import iter_video
from axial_deeplab.utils.cli import check_output_folder

ROOT = Path(__file__).resolve().parents[1]


def test_empty_and_truncated_image_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.png: empty file"):
        decode_image_file(empty)
    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    photo.write_bytes(cv2.imencode(".png", rgb)[1].tobytes()[:300])
    with pytest.raises(ImageDecodeError, match=r"cannot decode PNG image \(truncated") as err:
        decode_image_file(photo)
    assert "panoptic" not in str(err.value) and "photo.png" in str(err.value)


def test_a_picture_is_not_a_checkpoint(tmp_path):
    picture = tmp_path / "model.png"
    picture.write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    with pytest.raises(ValueError, match=r"model\.png is not a PyTorch checkpoint \(neither"):
        load_state_dict_file(picture)


def test_truncated_video_warns(tmp_path, capsys):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    assert len(list(iter_video(str(path)))) == 6
    assert "warning" not in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    frames = len(list(iter_video(str(path))))
    assert 0 < frames < 6
    err = capsys.readouterr().err
    assert f"clip.avi: decoding stopped after {frames} of the 6 frames" in err


def test_infer_refuses_a_file_as_output_before_loading(tmp_path):
    output = tmp_path / "out"
    output.write_text("")
    for path, said in ((output, "is a file"), (output / "sub", "lies under")):
        with pytest.raises(NotADirectoryError, match=f"--output .* {said}"):
            infer_net.run(infer_net.parse_args(["--weights", "w.pth", "--input", "x.png",
                                                "--output", str(path)]))  # fmt: skip
    check_output_folder(str(tmp_path / "new" / "folder"), "--output")  # created later: fine


def test_infer_refuses_outputs_that_would_overwrite_or_mix_with_inputs(tmp_path):
    # An audit's runs: photo.png's picture photo_vis.png replaced the user's photo_vis.png before
    # it was read, and --output equal to the input folder read its own outputs on the next run.
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("photo.png", "photo_vis.png"):
        cv2.imwrite(str(photos / name), np.zeros((40, 40, 3), np.uint8))
    before = (photos / "photo_vis.png").read_bytes()

    def run(inputs, output):
        args = ["--weights", str(tmp_path / "w.pth"), "--input", *inputs, "--output", output]
        infer_net.run(infer_net.parse_args(args))  # the weights do not exist: checked later

    with pytest.raises(ValueError, match=f"--output {photos} is the input folder {photos}"):
        run([str(photos)], str(photos))
    files = [str(photos / "photo.png"), str(photos / "photo_vis.png")]
    with pytest.raises(ValueError, match="photo_vis.png, written for .*photo.png, would overwrite"):
        run(files, str(photos))
    assert (photos / "photo_vis.png").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="w.pth"):  # another folder: past the check
        run([str(photos)], str(tmp_path / "out"))


def test_odd_overrides_are_the_users_own(tmp_path):
    args = infer_net.parse_args(
        ["--weights", "w.pth", "--input", "x.png", "--output", str(tmp_path), "MODEL.DEVICE"]
    )
    with pytest.raises(ConfigError, match=r"odd number: \['MODEL.DEVICE'\]$"):
        predictor_setup._overrides(args)


def test_slurm_without_sbatch_is_refused(tmp_path, monkeypatch):
    slurm = pytest.importorskip("axial_deeplab.engine.slurm", reason="needs submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    args = argparse.Namespace(slurm_local=False, slurm_max_requeues=3)
    with pytest.raises(OSError, match="sbatch is not on PATH.*--slurm-local"):
        slurm.build_executor(args, str(tmp_path / "jobs"))


def test_d2_tool_without_detectron2_prints_one_line(tmp_path):
    fake = tmp_path / "detectron2"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no detectron2 here')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "d2_train_net.py"), "--help"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: axial_deeplab.d2 needs detectron2")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_negative_max_size_and_zero_workers_are_refused(capsys):
    # An audit's --max-size -5 ran as if no limit was given; --workers 0 ran too.
    from axial_deeplab.evaluation import panoptic

    with pytest.raises(SystemExit):
        infer_net.parse_args(["--weights", "w.pth", "--input", "x.png", "--output", "o",
                              "--max-size", "-5"])  # fmt: skip
    assert "--max-size: expected an integer >= 0, got '-5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        panoptic.main(["--gt-json", "g.json", "--gt-dir", "g", "--pred-json", "p.json",
                       "--pred-dir", "p", "--workers", "0"])  # fmt: skip
    assert "--workers: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_a_folder_of_gifs_and_a_folder_as_config(tmp_path):
    # A single GIF was read but a folder of GIFs "held no image files"; a folder given as
    # --config-file was "not found".
    from PIL import Image

    from axial_deeplab.config import load_config
    from axial_deeplab.engine.inputs import expand_inputs, read_image

    Image.new("RGB", (8, 6), (200, 10, 10)).save(tmp_path / "a.gif")
    (item,) = expand_inputs([str(tmp_path)])
    assert item.kind == "image" and read_image(item.path).shape == (6, 8, 3)
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder: give one of its"):
        load_config(str(tmp_path))
