"""Inference: input expansion, video round trip, TTA math, Predictor outputs, the CLI end to end."""

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sample_data import require
from torch import nn

from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.engine import infer_net
from axial_deeplab.engine.evaluate import PostProcessing
from axial_deeplab.engine.inference import (
    InferenceMetadata,
    Predictor,
    TestTimeAugmentation,
    resolve_device,
    run_with_tta,
    undo_pass,
)
from axial_deeplab.engine.inputs import (
    BadInputError,
    expand_inputs,
    iter_video,
    read_image,
    video_info,
)
from axial_deeplab.utils.visualize import TITLE_HEIGHT, enlarge_factor

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
META = InferenceMetadata(("sky", "car", "person"), thing_ids=(1, 2))
POST = PostProcessing(stuff_area=1, threshold=0.1, nms_kernel=3, top_k=200)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 7.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame[..., ::-1].copy())
    writer.release()


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
# TTA math
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "align_corners, dy, dx",
    # 4 x 6 -> 8 x 12. Without align_corners distances scale by 8/4 and 12/6; with it the corner
    # pixel centres map onto each other: (8-1)/(4-1) = 7/3 and (12-1)/(6-1) = 11/5.
    [(False, 1.0 * 2, 2.0 * 2), (True, 1.0 * 7 / 3, 2.0 * 11 / 5)],
)
def test_undo_pass_rescales_and_flips_offsets_by_hand(align_corners, dy, dx):
    offsets = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 4, 6)  # (dy, dx) = (1, 2)
    outs = {"semantic": torch.zeros(1, 3, 4, 6), "center": torch.zeros(1, 1, 4, 6)}
    plain = undo_pass(
        {**outs, "offset": offsets}, (8, 12), flipped=False, align_corners=align_corners
    )
    assert torch.allclose(plain["offset"][0, 0], torch.full((8, 12), dy))
    assert torch.allclose(plain["offset"][0, 1], torch.full((8, 12), dx))
    assert torch.allclose(plain["semantic"], torch.full((1, 3, 8, 12), 1 / 3))  # softmax of zeros
    flipped = undo_pass({**outs, "offset": offsets}, (8, 12), flipped=True, align_corners=True)
    assert torch.allclose(flipped["offset"][0, 1], torch.full((8, 12), -2.0 * 11 / 5))  # dx < 0
    assert torch.allclose(flipped["offset"][0, 0], torch.full((8, 12), 1.0 * 7 / 3))  # dy kept


def test_undo_pass_flip_mirrors_maps_by_hand():
    # One row: center [0, 1, 2, 3]; dx [10, 20, 30, 40]. In the original image, column x is
    # column 3 - x of the flipped pass, and a vector pointing right there points left here.
    outs = {
        "semantic": torch.tensor([[0.0, 0, 0, 5], [0, 0, 0, 0]]).view(1, 2, 1, 4),
        "center": torch.arange(4.0).view(1, 1, 1, 4),
        "offset": torch.stack([torch.ones(4), torch.tensor([10.0, 20, 30, 40])]).view(1, 2, 1, 4),
    }
    got = undo_pass(outs, (1, 4), flipped=True, align_corners=True)
    assert got["center"].flatten().tolist() == [3, 2, 1, 0]
    assert got["offset"][0, 1, 0].tolist() == [-40, -30, -20, -10]
    assert got["offset"][0, 0, 0].tolist() == [1, 1, 1, 1]
    p = math.exp(5) / (math.exp(5) + 1)  # class 0 wins where its logit is 5: now at column 0
    assert got["semantic"][0, 0, 0].tolist() == pytest.approx([p, 0.5, 0.5, 0.5])


class ConstantModel(nn.Module):
    """Outputs that do not depend on the input: offsets (1, 2) in the pass's own pixels."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        n, _, h, w = x.shape
        self.sizes.append((h, w))
        offset = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(n, 2, h, w)
        return {
            "semantic": torch.zeros(n, 3, h, w),
            "center": torch.ones(n, 1, h, w),
            "offset": offset,
        }


@pytest.mark.parametrize("align_corners", [False, True])
def test_multiscale_offsets_average_of_rescaled_passes(align_corners):
    model = ConstantModel(align_corners)
    tta = TestTimeAugmentation(scales=(0.5, 1.0), flip=True)
    out = run_with_tta(model, torch.zeros(1, 3, 32, 48), tta, align_corners=align_corners)
    # passes: 16 x 24 (plain, flipped), 32 x 48 (plain, flipped)
    assert model.sizes == [(16, 24), (16, 24), (32, 48), (32, 48)]
    # dy: (2 * s + 2 * 1) / 4 with s the 16 -> 32 factor; dx: plain +, flipped - -> cancel to 0
    s = 31 / 15 if align_corners else 2.0
    assert torch.allclose(out["offset"][0, 0], torch.full((32, 48), (s + 1) / 2))
    assert torch.allclose(out["offset"][0, 1], torch.zeros(32, 48), atol=1e-6)
    no_flip = run_with_tta(
        model,
        torch.zeros(1, 3, 32, 48),
        TestTimeAugmentation((0.5, 1.0)),
        align_corners=align_corners,
    )
    sx = 47 / 23 if align_corners else 2.0
    assert torch.allclose(no_flip["offset"][0, 1], torch.full((32, 48), 2.0 * (sx + 1) / 2))
    assert torch.allclose(out["center"], torch.ones(1, 1, 32, 48))


class FlipEquivariantModel(nn.Module):
    """Exactly flip-equivariant: 1x1 convs of a 3x3 mean (symmetric) for semantic, centre and dy;
    dx from the antisymmetric kernel [-1, 0, 1] along x, which changes sign under a flip."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(5, 3, 1, 1, generator=g))  # 3 sem, centre, dy
        self.register_buffer("dx_kernel", torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))

    def forward(self, x):
        x = x / 255.0
        smooth = F.avg_pool2d(x, 3, stride=1, padding=1)
        out = F.conv2d(smooth, self.weight)  # [N, 5, H, W]
        gray = x.mean(1, keepdim=True)  # [N, 1, H, W]
        dx = 20 * F.conv2d(gray, self.dx_kernel, padding=(0, 1))
        return {
            "semantic": 4 * out[:, :3],
            "center": torch.sigmoid(4 * out[:, 3:4]),
            "offset": torch.cat([5 * out[:, 4:5], dx], dim=1),
        }


def test_flip_tta_of_flip_equivariant_model_equals_no_tta():
    image = cv2.GaussianBlur(_image(33, 47, seed=3), (7, 7), 2)  # smooth: several segments
    model = FlipEquivariantModel()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    # The check is not vacuous: the image is not symmetric and dx does change sign.
    with torch.no_grad():
        a, b = model(x), model(x.flip(-1))
    assert not torch.allclose(a["offset"][:, 1], b["offset"][:, 1].flip(-1), atol=1e-3)
    assert torch.allclose(a["offset"][:, 1], -b["offset"][:, 1].flip(-1), atol=1e-5)
    plain = Predictor(model, metadata=META, postprocessing=POST)
    flip = Predictor(model, metadata=META, postprocessing=POST, tta=TestTimeAugmentation(flip=True))
    raw_plain, raw_flip = plain.raw(image), flip.raw(image)
    for key in ("semantic", "center", "offset"):
        assert torch.allclose(raw_plain[key], raw_flip[key], atol=1e-5), key
    got_plain, got_flip = plain.predict(image), flip.predict(image)
    assert len(got_plain["segments_info"]) >= 3
    np.testing.assert_array_equal(got_plain["panoptic"], got_flip["panoptic"])


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
    meta = infer_net.load_class_names(str(path), None)
    # COCO panoptic: 133 categories, 80 things, first "person" (a thing), colours from the file
    assert len(meta.class_names) == 133 and len(meta.thing_ids) == 80
    assert meta.class_names[0] == "person" and meta.class_colors[0] == (220, 20, 60)
    from axial_deeplab.config import load_config

    cfg = load_config(None, ["DATASETS.TEST", "('cityscapes_fine_panoptic_val',)"])
    city, _ = infer_net.metadata_from_config(cfg)
    # Cityscapes: 19 train ids, 8 thing classes (person ... bicycle = train ids 11-18)
    assert city.thing_ids == tuple(range(11, 19)) and city.class_names[13] == "car"


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

    monkeypatch.setattr(infer_net, "build_predictor", tiny_predictor)
    return calls


NAMES = {"class_names": ["sky", "car", "person"], "thing_ids": [1, 2]}


def test_cli_folder_glob_video_outputs(tmp_path, tiny_cli):
    (tmp_path / "imgs").mkdir()
    image = cv2.GaussianBlur(_image(33, 47, seed=1), (7, 7), 2)
    _write_png(tmp_path / "imgs" / "a.png", image)
    (tmp_path / "imgs" / "c.png").write_bytes(b"corrupt")
    _write_png(tmp_path / "big.png", _image(50, 100, seed=4))
    _write_video(tmp_path / "clip.avi", [_image(32, 48, seed=s) for s in range(3)])
    names = tmp_path / "names.json"
    names.write_text(json.dumps(NAMES))
    out = tmp_path / "out"
    summary = infer_net.main(
        ["--allow-random-weights",
         "--input", str(tmp_path / "imgs"), str(tmp_path / "big.*"), str(tmp_path / "clip.avi"),
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
    big = _check_image_outputs(out, "big", (30, 60))  # long side 100 -> 60
    assert big["original_size"] == [50, 100]
    video = json.loads((out / "clip.json").read_text())
    assert [f["frame"] for f in video["frames"]] == [0, 1, 2]
    frames = list(iter_video(str(out / "clip_overlay.avi")))
    k = enlarge_factor((32, 48))  # frames are drawn enlarged too, 12 times: 384 x 576
    assert len(frames) == 3 and frames[0].shape == (32 * k, 48 * k, 3)
    for i in range(3):
        frame = _check_image_outputs(out / "clip", f"clip_{i:06d}", (32, 48))
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
