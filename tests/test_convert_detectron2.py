"""detectron2 Panoptic-DeepLab checkpoints -> our model: output parity on committed fixtures.

The fixtures in ``tests/fixtures/detectron2/<key>/`` were written by detectron2's own code
(``tools/parity/detectron2_reference.py --size tiny``, detectron2 c69939aa): a reduced-width
model of each zoo configuration with random weights (every batch norm's statistics and affine
and every conv bias random), saved as the zoo saves (``model.pkl``), its outputs on a small input
(``outputs.npz``: raw outputs at stride 4, detectron2's panoptic map at input size) and how it
was built (``meta.json``). No detectron2 is needed here. The manifests list the tensor names and
shapes of each full-size zoo checkpoint.
"""

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from axial_deeplab.checkpoint.detectron2 import (
    SafeUnpickler,
    check,
    convert_state_dict,
    load_detectron2_file,
    main,
)
from axial_deeplab.config import load_config
from axial_deeplab.modeling.build import build_model
from axial_deeplab.modeling.decoder import ASPP
from axial_deeplab.modeling.postprocessing import get_panoptic_segmentation

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "detectron2"
MODELS = ["cityscapes_r52_dc5", "cityscapes_r52_dc5_dsconv", "coco_r52_dc5_dsconv"]
MANIFESTS = sorted((FIXTURES / "manifests").glob("*.json"))


def _fixture(key: str) -> tuple[dict, dict, dict]:
    """(meta.json, reference outputs, detectron2 state dict) of one fixture."""
    folder = FIXTURES / key
    info = json.loads((folder / "meta.json").read_text())
    ref = dict(np.load(folder / "outputs.npz"))
    return info, ref, load_detectron2_file(folder / "model.pkl")


def _our_model(info: dict, opts: tuple[str, ...] = ()):
    cfg = load_config(str(REPO / info["our_config"]), list(info["our_opts"]) + list(opts))
    return cfg, build_model(cfg).eval()


def _input(info: dict, ref: dict, cfg) -> torch.Tensor:
    """The ``[1, 3, H, W]`` 0-255 RGB input the reference was fed (padding: the pixel mean)."""
    image = torch.from_numpy(ref["image"].astype(np.float32)).permute(2, 0, 1)  # [3, h, w]
    pad = info["input"]["pad"]
    if pad is None:
        return image[None]
    canvas = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1).expand(3, *pad["to"]).clone()
    canvas[:, : image.shape[1], : image.shape[2]] = image
    return canvas[None]


def _reference_outputs(ref: dict) -> dict[str, torch.Tensor]:
    """detectron2's outputs at input size: its heads resize the stride-4 outputs by
    ``F.interpolate(scale_factor=4, mode="bilinear", align_corners=False)``, offsets x 4."""
    up = {
        k: F.interpolate(torch.from_numpy(ref[k])[None], scale_factor=4, mode="bilinear")[0]
        for k in ("semantic", "center", "offset")
    }
    up["offset"] = up["offset"] * 4
    return up


def _converted_model(key: str):
    info, ref, source = _fixture(key)
    cfg, model = _our_model(info)
    state, report = convert_state_dict(source, model)
    assert report.ok, report.lines()
    assert report.used == len(source) and not report.defaulted and not report.ignored
    model.load_state_dict(state)  # strict: every parameter and buffer filled
    return info, ref, cfg, model


@pytest.mark.parametrize("key", MODELS)
def test_outputs_and_panoptic_equal_detectron2(key):
    info, ref, cfg, model = _converted_model(key)
    with torch.no_grad():
        ours = {k: v[0] for k, v in model(_input(info, ref, cfg)).items()}
    expected = _reference_outputs(ref)
    for name, value in expected.items():
        diff = float((ours[name] - value).abs().max())
        assert diff <= 1e-5 * float(value.std()), f"{key} {name}: max |diff| {diff}"
    post = info["postprocessing"]
    panoptic, centers = get_panoptic_segmentation(
        ours["semantic"].argmax(0, keepdim=True), ours["center"], ours["offset"], **post
    )
    reference = torch.from_numpy(ref["panoptic"]).long()
    assert torch.equal(panoptic[0], reference)
    labels = torch.unique(reference)
    # not vacuous: several instances (and stuff) in detectron2's own map
    instances = (labels > 0) & (labels % post["label_divisor"] > 0)
    assert int(instances.sum()) >= 2 and len(centers) >= 2 and int((~instances).sum()) >= 2


def test_converted_weights_matter():
    """The comparison can fail: one running variance off by 10% changes the outputs."""
    info, ref, cfg, model = _converted_model("cityscapes_r52_dc5_dsconv")
    model.backbone.stages[3][2].bn2.running_var[0] *= 1.1
    with torch.no_grad():
        ours = model(_input(info, ref, cfg))["semantic"][0]
    assert float((ours - _reference_outputs(ref)["semantic"]).abs().max()) > 1e-3


def test_backbone_only_imagenet_file():
    """``R-52.pkl`` names (``stem.*``, ``res2.*``: no ``backbone.`` prefix) fill our backbone;
    an ImageNet classifier is skipped, named in the report."""
    info, ref, source = _fixture("imagenet_r52")
    cfg, model = _our_model(info)
    source["linear.weight"] = torch.zeros(1000, 128)
    state, report = convert_state_dict(source, model)
    assert report.ok and report.ignored == {"ImageNet classifier": ["linear.weight"]}
    assert set(state) == {k for k in model.state_dict() if k.startswith("backbone.")}
    model.load_state_dict(state, strict=False)
    image = torch.from_numpy(ref["image"].astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = model.backbone((image - model.pixel_mean) / model.pixel_std)
    for name in ("res2", "res3", "res5"):
        expected = torch.from_numpy(ref[name])
        assert float((features[name][0] - expected).abs().max()) <= 1e-5 * float(expected.std())


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": Evil()}, "__author__": "?"}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global 'os\.makedirs'"):
        load_detectron2_file(path)
    assert not marker.exists()
    # numpy arrays from old and new numpy module paths are fine
    good = pickle.dumps({"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}})
    assert SafeUnpickler(io.BytesIO(good)).load()["model"]["w"].shape == (2, 3)


def test_wrong_shape_unused_and_missing_are_named(tmp_path, capsys):
    info, _, source = _fixture("cityscapes_r52_dc5_dsconv")
    _, model = _our_model(info)
    name = "sem_seg_head.decoder.res3.project_conv.weight"
    shape = list(source[name].shape)
    source[name] = torch.zeros(shape[0] + 1, *shape[1:])
    source["sem_seg_head.extra.weight"] = torch.zeros(1)
    del source["ins_embed_head.offset_predictor.bias"]
    _, report = convert_state_dict(source, model)
    assert report.shape_errors == [
        f"{name} {[shape[0] + 1, *shape[1:]]} -> semantic_decoder.projections.0.0.weight: "
        f"converted shape {[shape[0] + 1, *shape[1:]]}, model expects {shape}"
    ]
    assert "sem_seg_head.extra.weight" in report.unused
    assert any(m.startswith("offset_head.predictor.bias ") for m in report.missing)
    assert len(report.unused) == len(report.missing) == 1  # the mis-shaped pair counted once
    with pytest.raises(ValueError, match=r"^the checkpoint: 1 source tensors unused, 1 model "):
        check(report)
    # the command writes nothing and exits 1
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in source.items()}}))
    out = tmp_path / "out.pth"
    argv = [str(bad), str(out), "--config-file", str(REPO / info["our_config"])]
    with pytest.raises(SystemExit, match=r"^error: .*bad.pkl: 1 source tensors unused"):
        main(argv + list(info["our_opts"]))
    assert not out.exists()


def test_mismatch_report_is_printed_once_then_summarised(tmp_path, capsys):
    """A config that does not fit (COCO's 133 classes where the Cityscapes config has 19): the
    report is printed once, then one line naming the file and the config, with the counts."""
    info, _, _ = _fixture("cityscapes_r52_dc5_dsconv")
    pkl = FIXTURES / "coco_r52_dc5_dsconv" / "model.pkl"
    config = str(REPO / info["our_config"])
    argv = [str(pkl), str(tmp_path / "out.pth"), "--config-file", config, *info["our_opts"]]
    with pytest.raises(SystemExit) as failed:
        main(argv)
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("SHAPE mismatches") for line in printed) == 1
    # semantic predictor weight and bias: [133, ...] in the file, [19, ...] in the model
    assert str(failed.value) == (
        f"error: {pkl}: 2 shape mismatches: the config {config} does not fit this checkpoint"
    )
    assert not (tmp_path / "out.pth").exists()


def test_command_writes_weights_only_file(tmp_path):
    key = "coco_r52_dc5_dsconv"
    info, _, _ = _fixture(key)
    out = tmp_path / "converted.pth"
    argv = [str(FIXTURES / key / "model.pkl"), str(out), "--config-file"]
    assert main(argv + [str(REPO / info["our_config"])] + list(info["our_opts"])) == 0
    saved = torch.load(out, map_location="cpu", weights_only=True)
    _, model = _our_model(info)
    model.load_state_dict(saved["model"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_converter_covers_every_zoo_tensor(path):
    """Every name of each full-size detectron2 checkpoint maps onto our full-size model of the
    same config with its shape, and every parameter and buffer of ours is filled."""
    manifest = json.loads(path.read_text())
    cfg = load_config(str(REPO / manifest["our_config"]))
    with torch.device("meta"):
        model = build_model(cfg)
        source = {k: torch.empty(s) for k, s in manifest["tensors"].items()}
    _, report = convert_state_dict(source, model)
    assert report.ok, report.lines()
    assert report.used == len(manifest["tensors"])


def test_manifests_present():
    assert {p.stem for p in MANIFESTS} == {*MODELS, "imagenet_r52"}


# The ASPP options these checkpoints (and deeplab2's) need.


def test_aspp_pool_window_is_stride_one_average_then_resize():
    torch.manual_seed(0)
    aspp = ASPP(4, 3, dilations=(1,), pool_size=(2, 3), align_corners=False).eval()
    x = torch.randn(1, 4, 5, 7)
    pooled = torch.stack(  # naive 2x3 windows at stride 1: [4, 4, 5]
        [
            torch.stack([x[0, :, i : i + 2, j : j + 3].mean((1, 2)) for j in range(5)], -1)
            for i in range(4)
        ],
        -2,
    )
    assert torch.allclose(aspp.image_pool(x)[0], pooled, atol=1e-6)
    # a window no smaller than the feature is the global mean (the default)
    wide = ASPP(4, 3, dilations=(1,), pool_size=(5, 9)).eval()
    assert torch.allclose(wide.image_pool(x), x.mean((2, 3), keepdim=True), atol=1e-6)


def test_aspp_pool_norm_replaces_the_bias():
    plain = ASPP(4, 3, dilations=(1,)).state_dict()
    normed = ASPP(4, 3, dilations=(1,), pool_norm=True).state_dict()
    assert "pool_conv.bias" in plain and "pool_norm.running_var" not in plain
    assert "pool_conv.bias" not in normed and "pool_norm.running_var" in normed


def test_aspp_pool_norm_trains_on_one_image():
    """Batch norm after global pooling of a single image (no batch statistics) uses its running
    statistics in training instead of failing."""
    aspp = ASPP(4, 3, dilations=(1,), pool_norm=True).train()
    assert aspp(torch.randn(1, 4, 5, 7)).shape == (1, 3, 5, 7)
    assert int(aspp.pool_norm.num_batches_tracked) == 0


def test_backbone_file_loads_through_model_weights(tmp_path):
    """The converted ``R-52.pkl`` (``backbone.*`` only) is what ``MODEL.WEIGHTS`` loads into the
    backbone for fine-tuning."""
    from axial_deeplab.checkpoint.io import load_weights

    info, _, source = _fixture("imagenet_r52")
    out = tmp_path / "r52.pth"
    argv = [str(FIXTURES / "imagenet_r52" / "model.pkl"), str(out), "--config-file"]
    assert main(argv + [str(REPO / info["our_config"])] + list(info["our_opts"])) == 0
    _, model = _our_model(info)
    assert load_weights(model, str(out)) == "backbone"
    key = "stem.conv1.weight"
    assert torch.equal(model.backbone.stem[0].weight, source[key])


def test_pth_files_read_weights_only(tmp_path):
    """A ``.pth`` (``{"model": tensors}``, as detectron2's trainer writes) reads like the zoo's
    ``.pkl``; one holding arbitrary objects is refused by ``weights_only``."""
    _, _, source = _fixture("imagenet_r52")
    path = tmp_path / "model_final.pth"
    torch.save({"model": source, "iteration": 7}, path)
    loaded = load_detectron2_file(path)
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())
    torch.save({"model": {"x": torch.zeros(1)}, "obj": _Opaque()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_detectron2_file(path)


class _Opaque:
    """An object ``torch.load(weights_only=True)`` must not rebuild."""
