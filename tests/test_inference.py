"""Inference: input expansion, video round trip, Predictor outputs.

TTA math is in ``test_inference_tta.py``, the CLI end to end in ``test_inference_cli.py``.
"""

import math
import os
import warnings

import cv2
import numpy as np
import pytest
import torch
from inference_toys import META, POST, _image, _write_png, _write_video
from sample_data import DATA, require
from torch import nn

from axial_deeplab.engine import class_names
from axial_deeplab.engine.inference import Predictor, resolve_device
from axial_deeplab.engine.inputs import (
    BadInputError,
    expand_inputs,
    iter_video,
    read_image,
    video_info,
)

# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def test_expand_folder_glob_video_and_duplicate_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("z.png", "x.jpg"):
        _write_png(tmp_path / "a" / name, _image(5, 6))
    (tmp_path / "a" / "notes.txt").write_text("not an input")  # ignored in folders
    _write_png(tmp_path / "b" / "x.png", _image(5, 6))
    _write_video(tmp_path / "clip.avi", [_image(16, 16)])
    items = expand_inputs(
        [str(tmp_path / "a"), str(tmp_path / "b" / "*.png"), str(tmp_path / "clip.avi")]
    )
    # folder sorted (x.jpg, z.png), then the glob, then the video; names keep the path relative
    # to the common folder, so a/x.jpg and b/x.png stay apart
    assert [(os.path.basename(i.path), i.kind, i.name) for i in items] == [
        ("x.jpg", "image", "a/x"),
        ("z.png", "image", "a/z"),
        ("x.png", "image", "b/x"),
        ("clip.avi", "video", "clip"),
    ]
    # the same file named twice (folder and glob) is predicted once
    assert len(expand_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "z.png")])) == 2


def test_expand_errors_name_the_input(tmp_path, capsys):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(BadInputError, match="nope.jpg"):
        expand_inputs([missing])
    with pytest.raises(BadInputError, match=r"\*\.webp"):
        expand_inputs([str(tmp_path / "*.webp")])
    with pytest.raises(BadInputError, match="no image or video"):
        expand_inputs([str(tmp_path)])
    _write_png(tmp_path / "ok.png", _image(4, 4))
    items = expand_inputs([missing, str(tmp_path / "ok.png")], skip_bad=True)
    assert [i.name for i in items] == ["ok"]
    assert "nope.jpg" in capsys.readouterr().out


def test_read_image_gray_and_corrupt(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    assert cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = read_image(str(tmp_path / "g.png"))
    assert rgb.shape == (3, 4, 3) and (rgb == gray[..., None]).all()  # gray copied to R, G, B
    (tmp_path / "bad.png").write_bytes(b"definitely not a PNG")
    with pytest.raises(BadInputError, match="bad.png"):
        read_image(str(tmp_path / "bad.png"))


def test_video_round_trip(tmp_path):
    # Four flat-colour frames: JPEG keeps flat colours within a few levels.
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)]
    frames = [np.full((32, 48, 3), c, np.uint8) for c in colors]
    _write_video(tmp_path / "v.avi", frames, fps=7.0)
    got = list(iter_video(str(tmp_path / "v.avi")))
    assert len(got) == 4 and all(g.shape == (32, 48, 3) for g in got)
    for g, c in zip(got, colors, strict=True):
        assert np.abs(g.reshape(-1, 3).mean(0) - c).max() < 6  # RGB order kept
    info = video_info(str(tmp_path / "v.avi"))
    assert info.fps == pytest.approx(7.0) and info.num_frames == 4
    (tmp_path / "broken.avi").write_bytes(b"\x00" * 100)
    with pytest.raises(BadInputError, match="broken.avi"):
        list(iter_video(str(tmp_path / "broken.avi")))


# ------------------------------------------------------------------------------------------------
# Predictor outputs
# ------------------------------------------------------------------------------------------------


class ScriptedModel(nn.Module):
    """8 x 10 outputs: columns 0-3 class 0 (sky, stuff), 4-9 class 1 (car); centres 0.8 at (3, 5)
    and 0.6 at (3, 8); zero offsets."""

    def forward(self, x):
        semantic = torch.zeros(1, 3, 8, 10)
        semantic[0, 0, :, :4] = 2.0
        semantic[0, 1, :, 4:] = 2.0
        center = torch.zeros(1, 1, 8, 10)
        center[0, 0, 3, 5], center[0, 0, 3, 8] = 0.8, 0.6
        return {"semantic": semantic, "center": center, "offset": torch.zeros(1, 2, 8, 10)}


def test_predict_hand_worked_segments_and_scores():
    got = Predictor(ScriptedModel(), metadata=META, postprocessing=POST).predict(_image(8, 10))
    # Car pixels go to the nearer centre: columns 4-6 to (3, 5), 7-9 to (3, 8) -> labels 1001,
    # 1002 (class * 1000 + instance); sky is stuff, label 0.
    expected = np.zeros((8, 10), np.int64)
    expected[:, 4:7], expected[:, 7:] = 1001, 1002
    np.testing.assert_array_equal(got["panoptic"], expected)
    np.testing.assert_array_equal(
        got["segment_ids"], np.searchsorted([0, 1001, 1002], expected) + 1
    )
    assert got["centers"].tolist() == [[3, 5], [3, 8]]
    p = math.exp(2) / (math.exp(2) + 2)  # softmax of logits (2, 0, 0)
    # things: p x centre heat at the mask's mean pixel, (3.5, 5) -> (3, 5) and (3.5, 8) -> (3, 8)
    assert got["segments_info"] == [
        {"id": 1, "category_id": 0, "isthing": 0, "iscrowd": 0, "area": 32,
         "category_name": "sky", "score": pytest.approx(p, abs=1e-6), "label": 0},
        {"id": 2, "category_id": 1, "isthing": 1, "iscrowd": 0, "area": 24,
         "category_name": "car", "score": pytest.approx(0.8 * p, abs=1e-6), "label": 1001},
        {"id": 3, "category_id": 1, "isthing": 1, "iscrowd": 0, "area": 24,
         "category_name": "car", "score": pytest.approx(0.6 * p, abs=1e-6), "label": 1002},
    ]  # fmt: skip


def test_predictor_rejects_bad_images_and_class_mismatch():
    predictor = Predictor(ScriptedModel(), metadata=META, postprocessing=POST)
    with pytest.raises(ValueError, match=r"\[H, W, 3\].*\(8, 10\)"):
        predictor.predict(np.zeros((8, 10), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        predictor.predict(np.zeros((8, 10, 3), np.float32))
    two = Predictor(ScriptedModel(), metadata={"class_names": ["a", "b"]})
    with pytest.raises(ValueError, match="3 classes but metadata names 2"):
        two.predict(_image(8, 10))


def test_resolve_device_falls_back_to_cpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: no fallback to test")
    assert resolve_device("cuda") == torch.device("cpu")
    assert "no GPU" in capsys.readouterr().out


def test_class_names_from_coco_categories_and_config():
    path = DATA / "coco_panoptic_sample" / "panoptic_coco_categories.json"
    require(path)
    meta = class_names.load_class_names(str(path), None)
    # COCO panoptic: 133 categories, 80 things, first "person" (a thing), colours from the file
    assert len(meta.class_names) == 133 and len(meta.thing_ids) == 80
    assert meta.class_names[0] == "person" and meta.class_colors[0] == (220, 20, 60)
    from axial_deeplab.config import load_config

    cfg = load_config(None, ["DATASETS.TEST", "('cityscapes_fine_panoptic_val',)"])
    city, _ = class_names.metadata_from_config(cfg)
    # Cityscapes: 19 train ids, 8 thing classes (person ... bicycle = train ids 11-18)
    assert city.thing_ids == tuple(range(11, 19)) and city.class_names[13] == "car"


class MeanModel(nn.Module):
    """Every output pixel is a function of the whole input's mean: padding changes it."""

    def forward(self, x):
        n, _, h, w = x.shape
        mean = x.mean(dim=(1, 2, 3), keepdim=True).expand(n, 1, h, w) / 255.0  # [N, 1, H, W]
        ramp = torch.linspace(0, 1, w).expand(n, 1, h, w)
        return {
            "semantic": torch.cat([mean, ramp, 1 - mean], dim=1),
            "center": mean * ramp,
            "offset": torch.cat([mean, ramp], dim=1),
        }


def test_predictor_pads_as_evaluation_does():
    """TEST.PAD_TO_CROP: the network sees the image padded (bottom, right, pixel mean) to the crop
    size, as in evaluation, and the outputs are cropped back; without it tools/infer.py and the
    demo predicted differently from --eval-only on the same checkpoint."""
    image = _image(37, 50)
    fill = (10.0, 20.0, 30.0)
    padded = Predictor(MeanModel(), metadata=META, postprocessing=POST, pad_to=(64, 96),
                       pad_value=fill).raw(image)  # fmt: skip
    canvas = np.empty((64, 96, 3), dtype=np.uint8)
    canvas[:] = np.array(fill, dtype=np.uint8)
    canvas[:37, :50] = image
    by_hand = Predictor(MeanModel(), metadata=META, postprocessing=POST).raw(canvas)
    plain = Predictor(MeanModel(), metadata=META, postprocessing=POST).raw(image)
    for key in ("semantic", "center", "offset"):
        assert padded[key].shape[-2:] == (37, 50)
        torch.testing.assert_close(padded[key], by_hand[key][..., :37, :50], rtol=0, atol=1e-6)
    assert not torch.allclose(padded["semantic"], plain["semantic"])  # the padding mattered


def test_build_predictor_reads_pad_to_crop():
    from axial_deeplab.config import load_config
    from axial_deeplab.engine.evaluate import PaddedModel
    from axial_deeplab.engine.inference import build_predictor

    config = os.path.join(
        os.path.dirname(__file__), "..", "configs/quickstart/synthetic_axial.yaml"
    )
    for pad in (False, True):
        cfg = load_config(config, ["TEST.PAD_TO_CROP", str(pad)])
        predictor = build_predictor(
            cfg, META.generic(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES), torch.device("cpu")
        )
        assert isinstance(predictor.model, PaddedModel) == pad
        if pad:
            assert predictor.model.size == tuple(cfg.INPUT.CROP.SIZE)
            assert predictor.model.fill == tuple(cfg.MODEL.PIXEL_MEAN)


class ShapeRecorder(MeanModel):
    """MeanModel that records the input sizes it is run on (in the class: Predictor runs a copy)."""

    sizes: list[tuple[int, int]] = []

    def forward(self, x):
        ShapeRecorder.sizes.append(tuple(x.shape[-2:]))
        return super().forward(x)


def test_predictor_resizes_as_evaluation_does():
    """INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST: the network sees the image at the evaluation size
    (short side 40, long side at most 60 here) and the prediction comes back at the image's size,
    the maps by nearest neighbour as evaluation writes them; without it tools/infer.py ran a 2x
    enlarged photo at 2x and found 104 things where evaluation's size finds 15."""
    from axial_deeplab.data.transforms import resize_image
    from axial_deeplab.engine.evaluate import resize_nearest

    image = _image(90, 160)
    ShapeRecorder.sizes = []
    got = Predictor(
        ShapeRecorder(), metadata=META, postprocessing=POST, test_size=(40, 60)
    ).predict(image)
    assert ShapeRecorder.sizes == [(34, 60)]  # 40 / 90 would make the long side 71 > 60: 60 / 160
    small = Predictor(MeanModel(), metadata=META, postprocessing=POST).predict(
        resize_image(image, (34, 60))
    )
    assert got["panoptic"].shape == got["semantic"].shape == got["center"].shape == (90, 160)
    assert got["offset"].shape == (2, 90, 160)
    np.testing.assert_array_equal(got["panoptic"], resize_nearest(small["panoptic"], (90, 160)))
    np.testing.assert_array_equal(got["semantic"], resize_nearest(small["semantic"], (90, 160)))
    for segment in got["segments_info"]:  # areas counted at the image's size, scores kept
        assert segment["area"] == int((got["segment_ids"] == segment["id"]).sum())
        (before,) = [s for s in small["segments_info"] if s["label"] == segment["label"]]
        assert segment["score"] == before["score"]
    # offsets in pixels of the image: the ramp channel (0..1 across the width) scaled by
    # (160 - 1) / (60 - 1), pixel centres aligned at the corners (the model's align_corners)
    scaled = small["offset"][1].max() * 159 / 59
    assert got["offset"][1].max() == pytest.approx(scaled, rel=1e-5)
    ShapeRecorder.sizes = []
    Predictor(ShapeRecorder(), metadata=META, postprocessing=POST, test_size=(0, 60)).predict(image)
    assert ShapeRecorder.sizes == [
        (90, 160)
    ]  # a short side of 0 keeps the size, as EvalResize does


def test_build_predictor_reads_the_test_size():
    from axial_deeplab.config import load_config
    from axial_deeplab.engine.inference import build_predictor

    config = os.path.join(
        os.path.dirname(__file__), "..", "configs/quickstart/overfit_coco_samples.yaml"
    )
    cfg = load_config(config)
    predictor = build_predictor(
        cfg, META.generic(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES), torch.device("cpu")
    )
    assert predictor.test_size == (1000, 640)


def test_predictor_names_a_tensor_given_as_image():
    predictor = Predictor(MeanModel(), metadata=META, postprocessing=POST)
    with pytest.raises(ValueError, match=r"numpy array, got Tensor \(convert it with \.numpy"):
        predictor.predict(torch.zeros(8, 8, 3, dtype=torch.uint8))


def test_predictor_takes_a_read_only_array_quietly():
    """np.asarray of a PIL image is read-only; torch warned about it on every prediction."""
    image = _image(20, 24)
    image.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Predictor(MeanModel(), metadata=META, postprocessing=POST).predict(image)


def test_load_predictor_is_what_infer_runs(tmp_path):
    """One call from a checkpoint to a Predictor: its stored config (test size, padding), class
    names and overrides, as tools/infer.py reads them."""
    from axial_deeplab.checkpoint.io import save_checkpoint_file
    from axial_deeplab.config import load_config
    from axial_deeplab.engine.evaluate import PaddedModel
    from axial_deeplab.engine.predictor_setup import load_predictor
    from axial_deeplab.modeling.build import build_model

    config = os.path.join(
        os.path.dirname(__file__), "..", "configs/quickstart/overfit_coco_samples.yaml"
    )
    cfg = load_config(config, ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"])
    names = [f"c{i}" for i in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]
    weights = tmp_path / "model.pth"
    metadata = {"class_names": names, "thing_ids": [0], "label_divisor": 1000}
    save_checkpoint_file(str(weights), build_model(cfg).state_dict(), config=cfg, metadata=metadata)
    predictor = load_predictor(weights, ["MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.2"])
    assert predictor.metadata.class_names == tuple(names)
    assert predictor.test_size == (64, 96) and isinstance(predictor.model, PaddedModel)
    assert predictor.postprocessing.threshold == pytest.approx(0.2)
    prediction = predictor.predict(_image(50, 70))
    assert prediction["panoptic"].shape == (50, 70)
