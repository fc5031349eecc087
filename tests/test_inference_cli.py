"""Inference: the CLI end to end (inputs, outputs on disk, TTA flags, errors), with a toy model
and with a model built from the config."""

import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from inference_toys import POST, FlipEquivariantModel, _image, _write_png, _write_video

from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.engine import infer_net, predictor_setup
from axial_deeplab.engine.evaluate import PostProcessing
from axial_deeplab.engine.inference import Predictor
from axial_deeplab.engine.inputs import expand_inputs, iter_video, read_image
from axial_deeplab.utils.visualize import TITLE_HEIGHT, enlarge_factor

# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

# A ResNet-50 Panoptic-DeepLab with narrow heads; random weights. Stuff area 1 and threshold 0 so
# that random outputs still give several segments; class 1 and 2 are things (--class-names).
CLI_OPTS = [
    "MODEL.BACKBONE.NAME", "resnet", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.SEM_SEG_HEAD.HEAD_CHANNELS", "16",
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "16", "MODEL.INS_EMBED_HEAD.ASPP_CHANNELS", "16",
    "MODEL.INS_EMBED_HEAD.CONVS_DIM", "16", "MODEL.INS_EMBED_HEAD.HEAD_CHANNELS", "16",
    "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "1", "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.0",
]  # fmt: skip


def _check_image_outputs(out: Path, name: str, size: tuple[int, int]) -> dict:
    """Decode NAME_panoptic.png / NAME.json / NAME_vis.png; PNG ids must match segments_info."""
    ids = read_panoptic_png(out / f"{name}_panoptic.png")
    record = json.loads((out / f"{name}.json").read_text())
    assert ids.shape == size and (record["height"], record["width"]) == size
    values, counts = np.unique(ids, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    assert found == {s["id"]: s["area"] for s in record["segments_info"]}
    for s in record["segments_info"]:
        assert s["category_name"] == ["sky", "car", "person"][s["category_id"]]
        assert s["isthing"] == int(s["category_id"] in (1, 2))
        # stuff: a mean probability; things: times the centre heatmap, which a random model may
        # make slightly negative
        assert 0 < s["score"] <= 1 if not s["isthing"] else abs(s["score"]) <= 1
    vis = cv2.imread(str(out / f"{name}_vis.png"))
    k = enlarge_factor(size)  # small inputs are drawn enlarged, k times
    # 2 x 2 titled tiles, then the legend strip
    assert vis.shape[1] == 2 * k * size[1] and vis.shape[0] > 2 * (k * size[0] + TITLE_HEIGHT)
    return record


@pytest.fixture
def tiny_cli(monkeypatch):
    """``build_predictor`` replaced by the flip-equivariant toy model (the real builder is covered
    by the slow test below); records the TTA settings the CLI put into the config."""
    calls = []

    def tiny_predictor(cfg, metadata, device):
        calls.append((cfg.TEST.AUG.ENABLED, cfg.TEST.AUG.FLIP, list(cfg.TEST.AUG.SCALES)))
        return Predictor(FlipEquivariantModel(), metadata=metadata, postprocessing=POST)

    monkeypatch.setattr(predictor_setup, "build_predictor", tiny_predictor)
    return calls


NAMES = {"class_names": ["sky", "car", "person"], "thing_ids": [1, 2]}


def test_cli_folder_glob_video_outputs(tmp_path, tiny_cli):
    (tmp_path / "imgs").mkdir()
    image = cv2.GaussianBlur(_image(33, 47, seed=1), (7, 7), 2)
    _write_png(tmp_path / "imgs" / "a.png", image)
    (tmp_path / "imgs" / "c.png").write_bytes(b"corrupt")
    _write_png(tmp_path / "big.png", _image(50, 100, seed=4))
    (tmp_path / "clips").mkdir()
    _write_video(tmp_path / "clips" / "clip.avi", [_image(32, 48, seed=s) for s in range(3)])
    names = tmp_path / "names.json"
    names.write_text(json.dumps(NAMES))
    out = tmp_path / "out"
    summary = infer_net.main(
        ["--allow-random-weights",
         "--input", str(tmp_path / "imgs"), str(tmp_path / "big.*"),
         str(tmp_path / "clips" / "clip.avi"),
         "--output", str(out), "--class-names", str(names), "--max-size", "60", "--save-frames",
         "--skip-bad", "--device", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"]
    )  # fmt: skip
    assert summary == {"images": 2, "frames": 3, "skipped": [str(tmp_path / "imgs" / "c.png")]}
    assert tiny_cli == [(False, True, [1.0])]  # no --tta-*: the config's TEST.AUG (off)
    record = _check_image_outputs(out / "imgs", "a", (33, 47))  # imgs/a.png: relative name kept
    # the CLI wrote what the Predictor returns for the decoded file
    expected = Predictor(FlipEquivariantModel(), metadata=NAMES, postprocessing=POST).predict(
        read_image(str(tmp_path / "imgs" / "a.png"))
    )
    assert record["segments_info"] == json.loads(json.dumps(expected["segments_info"]))
    assert len(record["segments_info"]) >= 3
    # --max-size: predicted with the long side 100 -> 60, written at the file's size
    big = _check_image_outputs(out, "big", (50, 100))
    assert big["shrunk_to"] == [30, 60]
    video = json.loads((out / "clips" / "clip.json").read_text())
    assert [f["frame"] for f in video["frames"]] == [0, 1, 2]
    assert video["overlay_video"] == "clip_overlay.avi"  # paths relative to the JSON's folder
    assert record["panoptic_png"] == "a_panoptic.png"
    frames = list(iter_video(str(out / "clips" / "clip_overlay.avi")))
    k = enlarge_factor((32, 48))  # frames are drawn enlarged too, 12 times: 384 x 576
    assert len(frames) == 3 and frames[0].shape == (32 * k, 48 * k, 3)
    for i in range(3):
        # in clips/clip/ (an audit's frames went to clips/clip/clips/clip_000000*)
        frame = _check_image_outputs(out / "clips" / "clip", f"clip_{i:06d}", (32, 48))
        assert frame["segments_info"] == video["frames"][i]["segments_info"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # atomic writes left no temp


@pytest.mark.slow
def test_cli_builds_config_model_and_loads_weights(tmp_path):
    from axial_deeplab.config import load_config
    from axial_deeplab.modeling.build import build_model

    cfg = load_config(None, CLI_OPTS)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(cfg)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    image = _image(33, 47, seed=1)
    _write_png(tmp_path / "a.png", image)
    (tmp_path / "names.json").write_text(json.dumps(NAMES))
    infer_net.main(
        ["--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
         "--weights", str(tmp_path / "w.pth"), "--class-names", str(tmp_path / "names.json"),
         *CLI_OPTS]
    )  # fmt: skip
    record = _check_image_outputs(tmp_path / "out", "a", (33, 47))
    # The CLI built the config's model and loaded the saved weights: same segments as the model
    # in memory (a fresh random init would give others).
    post = PostProcessing(stuff_area=1, threshold=0.0, nms_kernel=7, top_k=200)
    expected = Predictor(model, metadata=NAMES, postprocessing=post).predict(image)
    assert len(record["segments_info"]) >= 2
    assert record["segments_info"] == json.loads(json.dumps(expected["segments_info"]))


def test_cli_overrides_after_input_are_named(tmp_path):
    """--input takes every value after it: a KEY VALUE override there was reported as a missing
    input ("input not found: TEST.AMP")."""
    image = tmp_path / "a.png"
    _write_png(image, _image(20, 30))
    argv = ["--allow-random-weights", "--output", str(tmp_path / "o"), "--input", str(image),
            "TEST.AMP", "True"]  # fmt: skip
    with pytest.raises(SystemExit, match="--input TEST.AMP: this looks like a KEY VALUE override"):
        infer_net.main(argv)


def test_cli_bad_input_fails_by_default_naming_the_file(tmp_path, tiny_cli):
    with pytest.raises(SystemExit, match="missing.jpg"):
        infer_net.main(["--allow-random-weights", "--input", str(tmp_path / "missing.jpg"),
                        "--output", str(tmp_path)])  # fmt: skip
    (tmp_path / "bad.png").write_bytes(b"corrupt")
    argv = ["--allow-random-weights", "--input", str(tmp_path / "bad.png"), "--output",
            str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(SystemExit, match=r"cannot decode image.*bad\.png"):
        infer_net.main(argv + ["--tta-flip"])
    assert tiny_cli == [(True, True, [1.0])]  # --tta-flip alone: flip at scale 1
    names = tmp_path / "n.txt"
    names.write_text("sky\ncar\nperson\n")
    # multi-value options first: KEY VALUE overrides go last, after a single-value option
    argv = ["--thing-ids", "1", "2", *argv, "--class-names", str(names)]
    with pytest.raises(SystemExit, match="bad.png"):
        infer_net.main(["--tta-scales", "0.5", "1", *argv, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    assert tiny_cli[-1] == (True, False, [0.5, 1.0])
    with pytest.raises(
        SystemExit, match="names 3 classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES is 19"
    ):
        infer_net.main(argv)  # one line, no traceback: the CLI's handler


def test_sigterm_stops_a_video_cleanly(tmp_path, monkeypatch, capsys):
    """SIGTERM (timeout, a scheduler) during a video: exit 143 with one line and no temporary
    overlay file left (it used to kill the process with a 0-byte .tmp.avi in --output)."""
    from axial_deeplab.utils.cli import run_cli, sigterm_raises

    _write_video(tmp_path / "clip.avi", [_image(32, 48, seed=i) for i in range(4)])
    predictor = Predictor(FlipEquivariantModel(), metadata=NAMES, postprocessing=POST)
    calls = []

    def predict(frame):
        calls.append(1)
        if len(calls) == 2:  # the overlay video has been started by now
            os.kill(os.getpid(), signal.SIGTERM)
        return Predictor.predict(predictor, frame)

    monkeypatch.setattr(predictor, "predict", predict)
    out = tmp_path / "out"

    def main(argv):
        with sigterm_raises():
            item = expand_inputs([str(tmp_path / "clip.avi")])[0]
            infer_net._predict_video(predictor, item, str(out), 0, False)

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    assert exit_.value.code == 143 and "terminated (SIGTERM)" in capsys.readouterr().err
    assert len(calls) == 2 and not list(out.rglob("*.avi"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
