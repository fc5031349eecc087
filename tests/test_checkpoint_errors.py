"""Weights that cannot serve: each error names the file and says what to do, and nothing is
evaluated or predicted with random layers unless asked (backbone-only files, unconverted
downloads, truncated archives, files of another model)."""

import io
import json
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from axial_deeplab.checkpoint import detectron2 as cd2
from axial_deeplab.checkpoint import tf_checkpoint as tfc
from axial_deeplab.checkpoint.convert_deeplab2 import main as convert_deeplab2_main
from axial_deeplab.checkpoint.io import BackboneOnlyError, load_state_dict_file, save_atomic
from axial_deeplab.checkpoint.zoo import differences_from_zoo_config
from axial_deeplab.config import ConfigError, load_config
from axial_deeplab.engine import train_net
from axial_deeplab.engine.inference import InferenceMetadata, Predictor, build_predictor
from axial_deeplab.engine.launch import default_argument_parser
from axial_deeplab.modeling.build import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart" / "synthetic_axial.yaml")
D2_FIXTURES = ROOT / "tests" / "fixtures" / "detectron2"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """``(whole model file, backbone-only file, file missing one tensor)`` of the quick-start model."""
    tmp = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = build_model(load_config(CONFIG)).state_dict()
    files = tmp / "whole.pth", tmp / "backbone.pth", tmp / "missing.pth"
    save_atomic({"model": state}, files[0])
    save_atomic({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, files[1])
    save_atomic({"model": dict(list(state.items())[1:])}, files[2])
    return tuple(str(f) for f in files)


def _predictor(weights_file: str):
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", weights_file])
    return build_predictor(cfg, InferenceMetadata.generic(6), torch.device("cpu"))


def test_predictor_loads_whole_models_only(weights):
    whole, backbone, missing = weights
    torch.manual_seed(1)  # another initialisation than the file's
    got = _predictor(whole).model.state_dict()
    model = build_model(load_config(CONFIG))
    model.load_state_dict(load_state_dict_file(whole))
    expected = Predictor(
        model, metadata=InferenceMetadata.generic(6)
    ).model.state_dict()  # BN folded too
    assert got.keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in got.items())
    with pytest.raises(BackboneOnlyError, match=r"backbone\.pth holds backbone weights only"):
        _predictor(backbone)
    with pytest.raises(
        ValueError, match=r"missing\.pth: weights do not fit.* missing from the file"
    ):
        _predictor(missing)


def test_eval_only_refuses_a_backbone_only_file(weights):
    parser = default_argument_parser("test")
    args = parser.parse_args(["--eval-only", "--config-file", CONFIG, "MODEL.WEIGHTS", weights[1]])
    with pytest.raises(ConfigError, match=r"--eval-only: .*backbone weights only.*--allow-random"):
        train_net.run(args)


def test_unconverted_downloads_point_to_the_converters(tmp_path):
    pkl = tmp_path / "model_final_bd324a.pkl"
    pkl.write_bytes(pickle.dumps({"model": {"w": np.zeros(2, np.float32)}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "Detected pickle protocol" warning: silenced
        with pytest.raises(ValueError, match="convert_detectron2.py") as err:
            load_state_dict_file(pkl)
    assert "weights_only" not in str(err.value) and "model_final_bd324a.pkl" in str(err.value)
    folder = tmp_path / "max_deeplab_s_os16_coco"
    folder.mkdir()
    (folder / "ckpt-0.index").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match="is a folder.*convert_deeplab2.py"):
        load_state_dict_file(folder)


def test_truncated_archive_is_named(tmp_path):
    archive = tmp_path / "resnet50_os32_imagenet.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = np.random.default_rng(0).bytes(1 << 16)  # incompressible
        member = tarfile.TarInfo("resnet50_os32_imagenet/ckpt-0.data-00000-of-00001")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    archive.write_bytes(archive.read_bytes()[: 1 << 15])
    with pytest.raises(ValueError, match=r"imagenet\.tar\.gz is truncated or corrupt"):
        tfc.resolve_checkpoint(archive, str(tmp_path / "work"))


def test_converter_errors_are_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(SystemExit, match=r"^error: checkpoint not found: .*nope\.tar\.gz"):
        convert_deeplab2_main([str(missing), str(tmp_path / "x.pth"), "--config-file", CONFIG])
    truncated = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"model_final\.pth: not a detectron2 .*: it is truncated"):
        cd2.load_detectron2_file(truncated)
    wrong = tmp_path / "values.pth"
    torch.save({"a": 1}, wrong)
    with pytest.raises(ValueError, match=r"values\.pth: a: expected an array, got int"):
        cd2.load_detectron2_file(wrong)


def test_protocol_5_pickles_of_arrays_load(tmp_path):
    path = tmp_path / "R-52.pkl"
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    path.write_bytes(pickle.dumps({"model": {"w": array}}, protocol=5))
    assert b"_frombuffer" in path.read_bytes()  # the reconstructor this test is about
    assert torch.equal(cd2.load_detectron2_file(path)["w"], torch.from_numpy(array))


def test_detectron2_conversion_for_a_custom_data_set(tmp_path):
    """A config naming a data set without built-in classes still gets its file (no class
    names stored, as the deeplab2 converter does), instead of failing after converting."""
    info = json.loads((D2_FIXTURES / "coco_r52_dc5_dsconv" / "meta.json").read_text())
    out = tmp_path / "custom.pth"
    opts = list(info["our_opts"]) + ["DATASETS.TRAIN", "['my_set']", "DATASETS.TEST", "['my_set']"]
    argv = [str(D2_FIXTURES / "coco_r52_dc5_dsconv" / "model.pkl"), str(out), "--config-file"]
    assert cd2.main(argv + [str(ROOT / info["our_config"])] + opts) == 0
    stored = torch.load(out, weights_only=True)
    assert "metadata" not in stored and "my_set" in stored["config"]


def test_published_file_with_another_config_warns():
    """deeplab2's OS16 and OS32 ResNet-50 have the same tensors: only the file name tells
    which config computes the published model."""
    download = "/downloads/resnet50_os16_panoptic_deeplab_coco_train.tar.gz"
    os32 = load_config(str(ROOT / "configs" / "coco" / "deeplab2" / "resnet50_os32.yaml"))
    warning = differences_from_zoo_config(download, os32)
    assert "resnet50_os16_coco" in warning and "OUTPUT_STRIDE 32 (there: 16)" in warning
    for name in ("ckpt-0", "ckpt-0.index", "ckpt-0.data-00000-of-00001"):  # each file it takes
        unpacked = f"/x/resnet50_os16_panoptic_deeplab_coco_train/{name}"
        assert differences_from_zoo_config(unpacked, os32) == warning.replace(download, unpacked)
    os16 = load_config(str(ROOT / "configs" / "coco" / "deeplab2" / "resnet50_os16.yaml"))
    assert differences_from_zoo_config(download, os16) == ""
    assert differences_from_zoo_config("/downloads/my_model.tar.gz", os32) == ""


def test_weights_with_nan_are_refused_naming_the_tensor(tmp_path):
    # An audit's checkpoint with one NaN row in the semantic predictor loaded silently and
    # predicted 0 segments.
    from axial_deeplab.checkpoint.io import DamagedWeightsError
    from axial_deeplab.engine.build import load_model_weights

    model = build_model(load_config(CONFIG))
    state = model.state_dict()
    state["semantic_head.predictor.weight"][0] = float("nan")
    path = tmp_path / "nan.pth"
    save_atomic({"model": state}, path)
    with pytest.raises(DamagedWeightsError) as failed:
        load_model_weights(build_model(load_config(CONFIG)), str(path))
    message = str(failed.value)
    assert message.startswith(f"{path}: 1 tensor(s) hold NaN or infinite values, e.g. ")
    assert "semantic_head.predictor.weight (" in message and "use an earlier checkpoint" in message
    state["semantic_head.predictor.weight"][0] = 0.0  # the same file mended: loads
    save_atomic({"model": state}, path)
    assert load_model_weights(build_model(load_config(CONFIG)), str(path)) == "model"


def test_a_truncated_checkpoint_is_named_so(tmp_path):
    # An audit's half-copied checkpoint gave "[Errno 22] Invalid argument" or a miniz message.
    from axial_deeplab.checkpoint.io import load_torch_file

    whole = tmp_path / "whole.pth"
    torch.save({"model": {"w": torch.zeros(20000)}}, whole)
    data = whole.read_bytes()
    for size in (len(data) // 2, len(data) - 30):
        cut = tmp_path / f"cut{size}.pth"
        cut.write_bytes(data[:size])
        for mmap in (False, True):
            with pytest.raises(ValueError, match=f"{cut} is truncated or corrupt"):
                load_torch_file(cut, mmap=mmap)
    assert load_torch_file(whole, mmap=True)["model"]["w"].shape == (20000,)


def test_mismatch_hint_comes_first_and_only_when_it_says_something(tmp_path):
    # An audit's 600-character message lost its hint (at the end) to the cut; and a file whose
    # own stored config was in use got a hint about that config.
    from axial_deeplab.checkpoint.io import save_checkpoint_file
    from axial_deeplab.engine.build import load_model_weights

    cfg = load_config(CONFIG)
    state = build_model(cfg).state_dict()
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    save_checkpoint_file(path, state, config=cfg)
    with pytest.raises(ValueError) as failed:
        load_model_weights(build_model(cfg), str(path), cfg=cfg)
    assert str(failed.value).startswith(f"{path}: weights do not fit the model: ")
    nine = load_config(CONFIG, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"])
    with pytest.raises(ValueError) as failed:
        load_model_weights(build_model(nine), str(path), cfg=nine)
    assert str(failed.value).startswith(
        f"{path}: weights do not fit the model; it was saved with the model of "
        "configs/quickstart/synthetic_axial.yaml: "
    )
