"""Generated broken inputs (JSON, panoptic PNG, image, config, weights) through the PQ command,
the training reader, ``infer.py`` and the config loader.

Every case must end in one clear line: a user-error type whose message names the file, key or id
(no traceback, no "unexpected" error), never a silent result or code execution. The cases are
built deterministically from a 2-image synthetic data set; everything runs in-process through the
tools' ``main`` (the same top-level handler as the command line) but for two subprocess runs.
"""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch

from axial_deeplab.config import ConfigError, load_config
from axial_deeplab.data.coco_panoptic import load_coco_panoptic
from axial_deeplab.data.dataset import PanopticDataset
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
from axial_deeplab.engine import infer_net, train_net
from axial_deeplab.engine.inputs import BadInputError, read_image
from axial_deeplab.evaluation import panoptic
from axial_deeplab.utils.cli import USER_ERRORS, one_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "synthetic_axial.yaml")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """2 synthetic scenes of 32 x 32 (COCO panoptic format); image 0 re-encoded as JPEG."""
    root = tmp_path_factory.mktemp("fuzz_base")
    write_synthetic_dataset(str(root), splits={"train": 2}, height=32, width=32, seed=5,
                            formats=("coco",))  # fmt: skip
    coco = root / "coco"
    image = cv2.imread(str(coco / "images" / "train" / "synth_000000.png"))
    cv2.imwrite(str(coco / "images" / "train" / "synth_000000.jpg"), image)
    os.remove(coco / "images" / "train" / "synth_000000.png")
    data = json.loads((coco / "panoptic_train.json").read_text())
    data["images"][0]["file_name"] = "synth_000000.jpg"
    (coco / "panoptic_train.json").write_text(json.dumps(data))
    return coco


@pytest.fixture
def data(base, tmp_path):
    """A fresh copy of the base data set: ``json``, ``png_dir``, ``image_dir``, ``pred_json``,
    ``pred_dir`` (a perfect prediction: a copy of the ground truth)."""
    coco = tmp_path / "coco"
    shutil.copytree(base, coco)
    shutil.copytree(coco / "panoptic" / "train", tmp_path / "pred")
    shutil.copy(coco / "panoptic_train.json", tmp_path / "pred.json")
    return {"json": coco / "panoptic_train.json", "png_dir": coco / "panoptic" / "train",
            "image_dir": coco / "images" / "train", "pred_json": tmp_path / "pred.json",
            "pred_dir": tmp_path / "pred"}  # fmt: skip


def _text(text: str):
    """An edit that replaces the whole file with ``text``."""

    def edit(data):
        return text

    edit.replaces = True
    return edit


def _edit_json(path, edit) -> None:
    """``edit(data)`` mutates the JSON in place (or, made by :func:`_text`, returns its text)."""
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(out if getattr(edit, "replaces", False) else json.dumps(data))


def _one_clear_line(message: str, *names: str) -> None:
    """An ``error:`` line naming one of ``names``, not an unexpected error."""
    assert "\n" not in message.strip() and message.startswith("error: "), message
    assert "unexpected" not in message and "Traceback" not in message, message
    assert any(n in message for n in names), (names, message)


def _user_error(exc: BaseException, *names: str) -> None:
    assert isinstance(exc, USER_ERRORS), f"{type(exc).__name__}: {exc}"
    _one_clear_line(f"error: {one_line(exc)}", *names)


def _seg(data, i=0):
    return data["annotations"][0]["segments_info"][i]


# ------------------------------------------------------------------------------------------------
# JSON cases: (name, edit, what the message must name)
# ------------------------------------------------------------------------------------------------
JSON_CASES = [
    ("not_json", _text('{"annotations": ['), "not valid JSON"),
    ("empty_file", _text(""), "not valid JSON"),
    ("top_level_list", _text("[]"), "'annotations' list"),
    ("no_annotations", lambda d: d.pop("annotations"), "'annotations' list"),
    ("annotations_dict", lambda d: d.update(annotations={}), "'annotations' list"),
    ("annotation_number", lambda d: d["annotations"].__setitem__(0, 7), "annotation #0"),
    ("no_image_id", lambda d: d["annotations"][0].pop("image_id"), "'image_id'"),
    ("no_file_name", lambda d: d["annotations"][0].pop("file_name"), "'file_name'"),
    ("no_segments_info", lambda d: d["annotations"][0].pop("segments_info"), "'segments_info'"),
    ("segments_info_dict", lambda d: d["annotations"][0].update(segments_info={}), "image_id 0"),
    (
        "duplicate_image_id",
        lambda d: d["annotations"].__setitem__(1, {**d["annotations"][1], "image_id": 0}),
        "image_id 0",
    ),
    ("image_id_list", lambda d: d["annotations"][0].update(image_id=[0]), "image_id [0]"),
    ("empty_file_name", lambda d: d["annotations"][0].update(file_name=""), "file_name"),
    ("images_no_height", lambda d: d["images"][0].pop("height"), "'height'"),
    ("images_height_text", lambda d: d["images"][0].update(height="abc"), "'height'"),
    ("images_height_zero", lambda d: d["images"][0].update(height=0), "'height'"),
    ("images_duplicate_id", lambda d: d["images"][1].update(id=0), "id 0"),
    ("images_not_list", lambda d: d.update(images={}), "'images'"),
    ("no_categories", lambda d: d.pop("categories"), "'categories'"),
    ("categories_empty", lambda d: d.update(categories=[]), "'categories'"),
    ("category_no_isthing", lambda d: d["categories"][0].pop("isthing"), "isthing"),
    ("category_isthing_2", lambda d: d["categories"][0].update(isthing=2), "isthing"),
    ("category_duplicate_id", lambda d: d["categories"][1].update(id=1), "duplicate category"),
    ("category_id_text", lambda d: d["categories"][0].update(id="1"), "category id"),
    ("segment_id_zero", lambda d: _seg(d).update(id=0), "segment"),
    ("segment_id_too_big", lambda d: _seg(d).update(id=256**3), "segment id"),
    ("segment_duplicate_id", lambda d: _seg(d, 1).update(id=_seg(d)["id"]), "duplicate segment"),
    ("segment_unknown_category", lambda d: _seg(d).update(category_id=99), "category_id 99"),
    ("segment_iscrowd_2", lambda d: _seg(d).update(iscrowd=2), "iscrowd"),
    ("segment_id_float", lambda d: _seg(d).update(id=1.5), "'id'"),
    ("segment_no_category", lambda d: _seg(d).pop("category_id"), "'category_id'"),
    ("segment_not_dict", lambda d: d["annotations"][0]["segments_info"].append(3), "segment 3"),
    (
        "segment_missing_from_png",
        lambda d: d["annotations"][0]["segments_info"].append(
            {"id": 77777, "category_id": 1, "iscrowd": 0}
        ),
        "77777",
    ),  # fmt: skip
    ("segment_unlisted_in_png", lambda d: d["annotations"][0]["segments_info"].pop(0), "PNG"),
    ("png_name_missing", lambda d: d["annotations"][0].update(file_name="nope.png"), "nope.png"),
]
# Edits of the prediction JSON that the PQ command must refuse (its categories are not read).
PRED_JSON_CASES = [c for c in JSON_CASES if not c[0].startswith(("categor", "images", "no_categ"))]
PRED_JSON_CASES += [("prediction_missing", lambda d: d["annotations"].pop(1), "image_id [1]")]


def _pq(data) -> list[str]:
    return ["--gt-json", str(data["json"]), "--gt-dir", str(data["png_dir"]),
            "--pred-json", str(data["pred_json"]), "--pred-dir", str(data["pred_dir"]),
            "--workers", "1"]  # fmt: skip


def _exit_line(info, capsys) -> str:
    """The error line of a ``SystemExit``: its message, or (status 2 from argparse's exit, as the
    PQ command does for data errors) the last line written to stderr."""
    code = info.value.code
    if isinstance(code, int):
        assert code != 0
        return capsys.readouterr().err.strip().splitlines()[-1]
    return str(code)


def _pq_error(data, capsys, *names: str) -> None:
    with pytest.raises(SystemExit) as info:
        panoptic.main(_pq(data))
    _one_clear_line(_exit_line(info, capsys), *names)


def test_pq_of_a_perfect_prediction_is_100(data, capsys):
    panoptic.main(_pq(data))  # the unbroken base: the cases below break only what they say
    assert "100.0" in capsys.readouterr().out


@pytest.mark.parametrize("name,edit,named", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_pq_command_refuses_broken_gt_json(data, capsys, name, edit, named):
    _edit_json(data["json"], edit)
    _pq_error(data, capsys, named)


@pytest.mark.parametrize("name,edit,named", PRED_JSON_CASES, ids=[c[0] for c in PRED_JSON_CASES])
def test_pq_command_refuses_broken_prediction_json(data, capsys, name, edit, named):
    _edit_json(data["pred_json"], edit)
    _pq_error(data, capsys, named)


def _training_reader(data) -> None:
    records, meta = load_coco_panoptic(str(data["json"]), str(data["png_dir"]),
                                       str(data["image_dir"]))  # fmt: skip
    dataset = PanopticDataset(records, metadata=meta)
    for i in range(len(dataset)):
        dataset[i]


@pytest.mark.parametrize("name,edit,named", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_training_reader_refuses_broken_json(data, name, edit, named):
    _edit_json(data["json"], edit)
    with pytest.raises(Exception) as info:
        _training_reader(data)
    _user_error(info.value, named)


# ------------------------------------------------------------------------------------------------
# Panoptic PNG cases: (name, bytes -> bytes); the message must name the PNG
# ------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _huge_png(_: bytes) -> bytes:
    """A valid PNG signature and IHDR claiming 60000 x 60000 RGB pixels, then one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + _png_chunk(b"IEND", b""))  # fmt: skip


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes([b[mid] ^ 0xFF]) + b[mid + 1 :]


def _reencode(shape_or_gray):
    def edit(b: bytes) -> bytes:
        image = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        if shape_or_gray == "gray":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif shape_or_gray == "jpeg":
            return cv2.imencode(".jpg", image)[1].tobytes()
        elif shape_or_gray == "extra_id":
            image = image.copy()
            image[0, 0] = (9, 9, 9)
        else:
            image = cv2.resize(image, shape_or_gray, interpolation=cv2.INTER_NEAREST)
        return cv2.imencode(".png", image)[1].tobytes()

    return edit


PNG_CASES = [
    ("cut_20_bytes", lambda b: b[:20]),
    ("cut_8_bytes", lambda b: b[:8]),
    ("cut_half", lambda b: b[: len(b) // 2]),
    ("cut_last_20", lambda b: b[:-20]),
    ("zero_bytes", lambda b: b""),
    ("random_bytes", lambda b: np.random.default_rng(0).bytes(len(b))),
    ("flipped_byte", _flip_middle),
    ("huge_header", _huge_png),
    ("other_size", _reencode((16, 16))),
    ("gray", _reencode("gray")),
    ("jpeg_named_png", _reencode("jpeg")),
    ("id_not_listed", _reencode("extra_id")),
    ("deleted", None),
]


def _break_file(folder, name: str, edit) -> str:
    """Apply ``edit`` (bytes -> bytes; None deletes) to ``folder/name``; returns ``name``."""
    path = folder / name
    if edit is None:
        os.remove(path)
    else:
        path.write_bytes(edit(path.read_bytes()))
    return name


def _break_png(folder, edit) -> str:
    return _break_file(folder, "synth_000000.png", edit)


@pytest.mark.parametrize("name,edit", PNG_CASES, ids=[c[0] for c in PNG_CASES])
@pytest.mark.parametrize("side", ["gt", "pred"])
def test_pq_command_refuses_broken_png(data, capsys, name, edit, side):
    # Every case, a PNG cut only in its last chunks included: the PQ command's reader checks
    # every chunk's CRC (data/panoptic_png.py), so it refuses what the training reader refuses.
    png = _break_png(data["png_dir" if side == "gt" else "pred_dir"], edit)
    _pq_error(data, capsys, png)


@pytest.mark.parametrize("name,edit", PNG_CASES, ids=[c[0] for c in PNG_CASES])
def test_training_reader_refuses_broken_png(data, name, edit):
    png = _break_png(data["png_dir"], edit)
    with pytest.raises(Exception) as info:
        _training_reader(data)
    _user_error(info.value, png)


# ------------------------------------------------------------------------------------------------
# Image cases: (name, bytes -> bytes) on the JPEG of image 0
# ------------------------------------------------------------------------------------------------
def _cut(fraction: float):
    return lambda b: b[: int(len(b) * fraction)]


def _bad_segment_length(b: bytes) -> bytes:
    return b[:4] + b"\xff\xff" + b[6:]  # APP0/DQT length 65535: runs past the end


IMAGE_CASES = [
    ("jpeg_cut_10pc", _cut(0.1)),
    ("jpeg_cut_50pc", _cut(0.5)),
    ("jpeg_cut_90pc", _cut(0.9)),
    ("jpeg_no_eoi", lambda b: b[:-2]),
    ("jpeg_soi_only", lambda b: b[:2]),
    ("jpeg_header_only", lambda b: b[: b.index(b"\xff\xda") + 8]),
    ("jpeg_bad_segment_length", _bad_segment_length),
    ("jpeg_soi_then_garbage", lambda b: b[:2] + np.random.default_rng(1).bytes(300)),
    ("zero_bytes", lambda b: b""),
    ("garbage", lambda b: np.random.default_rng(2).bytes(500)),
    ("text", lambda b: b"not an image at all\n"),
    ("png_huge_header", _huge_png),
    ("png_cut", lambda b: cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()[:40]),
    ("other_size", lambda b: cv2.imencode(".jpg", np.zeros((20, 20, 3), np.uint8))[1].tobytes()),
    ("deleted", None),
]


def _break_image(folder, edit) -> str:
    return _break_file(folder, "synth_000000.jpg", edit)


@pytest.mark.parametrize("name,edit", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_training_reader_refuses_broken_image(data, name, edit):
    image = _break_image(data["image_dir"], edit)
    with pytest.raises(Exception) as info:
        _training_reader(data)
    _user_error(info.value, image)


@pytest.mark.parametrize("name,edit", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_infer_reader_refuses_broken_image(data, name, edit):
    if name == "other_size":
        pytest.skip("a valid image of another size is a good inference input")
    image = _break_image(data["image_dir"], edit)
    with pytest.raises(BadInputError) as info:
        read_image(str(data["image_dir"] / image))
    _user_error(info.value, image)


def test_infer_skips_every_broken_image_and_counts_them(data, tmp_path, capsys):
    """All image cases at once in a folder with one good image: ``--skip-bad`` predicts the good
    one and names each skipped file; without it the first bad file stops the run in one line."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = data["image_dir"] / "synth_000001.png"
    shutil.copy(good, folder / "good.png")
    jpeg = (data["image_dir"] / "synth_000000.jpg").read_bytes()
    bad = [n for n, e in IMAGE_CASES if e is not None and n != "other_size"]
    for name, edit in IMAGE_CASES:
        if name in bad:
            suffix = ".png" if name.startswith("png") else ".jpg"
            (folder / f"{name}{suffix}").write_bytes(edit(jpeg))
    argv = ["--config-file", QUICKSTART, "--allow-random-weights", "--input", str(folder),
            "--output", str(tmp_path / "out"), "--class-names", str(data["json"])]  # fmt: skip
    summary = infer_net.main([*argv[:-2], "--skip-bad", *argv[-2:]])
    assert summary["images"] == 1 and len(summary["skipped"]) == len(bad)
    assert {os.path.basename(p).split(".")[0] for p in summary["skipped"]} == set(bad)
    with pytest.raises(SystemExit) as info:
        infer_net.main(argv)
    _one_clear_line(str(info.value.code), *bad)


# ------------------------------------------------------------------------------------------------
# Config cases: (name, YAML text or None, overrides, what the message must name)
# ------------------------------------------------------------------------------------------------
CONFIG_CASES = [
    ("unknown_key", None, ["SOLVER.MAX_ITR", "5"], "did you mean 'SOLVER.MAX_ITER'"),
    ("unknown_section", None, ["SOLVR.MAX_ITER", "5"], "SOLVR.MAX_ITER"),
    ("wrong_type", None, ["SOLVER.MAX_ITER", "'many'"], "MAX_ITER"),
    ("odd_overrides", None, ["SOLVER.MAX_ITER"], "KEY VALUE pairs"),
    ("max_iter_zero", None, ["SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER"),
    ("max_iter_negative", None, ["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER"),
    ("checkpoint_period_zero", None, ["SOLVER.CHECKPOINT_PERIOD", "0"], "CHECKPOINT_PERIOD"),
    ("log_period_zero", None, ["LOG_PERIOD", "0"], "LOG_PERIOD"),
    ("ims_per_batch_zero", None, ["SOLVER.IMS_PER_BATCH", "0"], "IMS_PER_BATCH"),
    ("num_classes_zero", None, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0"], "NUM_CLASSES"),
    ("base_lr_negative", None, ["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR"),
    ("crop_zero", None, ["INPUT.CROP.SIZE", "[0, 0]"], "INPUT.CROP.SIZE"),
    ("crop_one_value", None, ["INPUT.CROP.SIZE", "[64]"], "INPUT.CROP.SIZE"),
    ("scales_reversed", None, ["INPUT.MIN_SCALE", "2.0", "INPUT.MAX_SCALE", "0.5"], "MIN_SCALE"),
    ("device_tpu", None, ["MODEL.DEVICE", "tpu"], "MODEL.DEVICE"),
    ("eval_period_negative", None, ["TEST.EVAL_PERIOD", "-1"], "TEST.EVAL_PERIOD"),
    ("base_list", "_BASE_: [a.yaml]\n", [], "_BASE_"),
    ("base_missing", "_BASE_: missing.yaml\n", [], "missing.yaml"),
    ("base_cycle", "_BASE_: case.yaml\n", [], "cycle"),
    ("not_yaml", "MODEL: [unclosed\n", [], "not valid YAML"),
    ("top_level_list", "- 1\n- 2\n", [], "mapping"),
    ("unknown_key_in_file", "SOLVER:\n  MAX_ITR: 5\n", [], "did you mean 'SOLVER.MAX_ITER'"),
    (
        "python_tag",
        "OUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n",
        [],
        "case.yaml",
    ),  # fmt: skip
    ("value_type_in_file", "SOLVER:\n  MAX_ITER: [1, 2]\n", [], "MAX_ITER"),
]


@pytest.mark.parametrize("name,text,opts,named", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_loader_refuses_bad_values(tmp_path, name, text, opts, named):
    marker = tmp_path / "code_ran"
    path = None
    if text is not None:
        path = tmp_path / "case.yaml"
        path.write_text(text.format(marker=marker))
    with pytest.raises(ConfigError) as info:
        load_config(str(path) if path else QUICKSTART, opts)
    _user_error(info.value, named)
    assert not marker.exists()


def test_d2_config_loader_refuses_python_tags(tmp_path):
    pytest.importorskip("detectron2", reason="detectron2 is not installed (optional plugin)")
    from axial_deeplab.d2.config import load_config as d2_load_config

    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"_BASE_: {QUICKSTART}\nOUTPUT_DIR: !!python/object/apply:os.system "
                    f"['touch {marker}']\n")  # fmt: skip
    with pytest.raises(ConfigError, match="evil.yaml.*tags are refused"):
        d2_load_config(str(path))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Weights cases (MODEL.WEIGHTS through --eval-only's model preparation)
# ------------------------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _other_model(path) -> None:
    from axial_deeplab.modeling.build import build_model

    cfg = load_config(QUICKSTART)
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.dump()}, path)


WEIGHTS_CASES = [
    ("missing", None, "w.pth"),
    ("garbage", lambda p, m: p.write_bytes(b"\x00garbage" * 10), "w.pth"),
    ("json", lambda p, m: p.write_text('{"model": {}}'), "w.pth"),
    (
        "truncated",
        lambda p, m: (
            torch.save({"model": {"a": torch.zeros(9)}}, p),
            p.write_bytes(p.read_bytes()[:100]),
        ),
        "w.pth",
    ),  # fmt: skip
    ("pickle_runs_code", lambda p, m: torch.save({"model": _RunsCode(m)}, p), "w.pth"),
    ("plain_pickle_runs_code", lambda p, m: p.write_bytes(pickle.dumps(_RunsCode(m))), "w.pth"),
    ("not_a_state_dict", lambda p, m: torch.save([1, 2], p), "w.pth"),
    ("another_model", lambda p, m: _other_model(p), "w.pth"),
    ("empty_state_dict", lambda p, m: torch.save({"model": {}}, p), "w.pth"),
]


@pytest.mark.parametrize("name,write,named", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_model_weights_refused_in_one_line(tmp_path, name, write, named):
    from axial_deeplab.engine.build import prepare_model

    path, marker = tmp_path / "w.pth", tmp_path / "code_ran"
    if write is not None:
        write(path, marker)
    # another_model: quick-start weights (6 classes) for a 9-class model of the same config
    classes = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"] if name == "another_model" else []
    cfg = load_config(QUICKSTART, ["MODEL.WEIGHTS", str(path), *classes])
    with pytest.raises(Exception) as info:
        prepare_model(cfg, torch.device("cpu"))
    _user_error(info.value, named)
    assert not marker.exists()
    if name == "another_model":  # one line with the counts and the config it was saved with
        message = one_line(info.value)
        assert "differ in shape" in message and "configs/quickstart/synthetic_axial.yaml" in message


# ------------------------------------------------------------------------------------------------
# Silent results that are errors now, and the command lines themselves
# ------------------------------------------------------------------------------------------------
def _train_argv(data, tmp_path, *opts: str) -> list[str]:
    custom = [{"NAME": "fuzz", "JSON_FILE": str(data["json"]), "PNG_DIR": str(data["png_dir"]),
               "IMAGE_DIR": str(data["image_dir"])}]  # fmt: skip
    return ["--config-file", QUICKSTART, "DATASETS.CUSTOM", str(custom),
            "DATASETS.TRAIN", "('fuzz',)", "DATASETS.TEST", "('fuzz',)",
            "OUTPUT_DIR", str(tmp_path / "out"), "DATALOADER.NUM_WORKERS", "0",
            "INPUT.CROP.SIZE", "[32, 32]", "SOLVER.MAX_ITER", "1", *opts]  # fmt: skip


@pytest.mark.parametrize(
    "flags,opts,named",
    [
        ([], ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"], "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 9"),
        ([], ["MODEL.DEVICE", "tpu"], "MODEL.DEVICE"),
        ([], ["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER"),
        (["--eval-only"], [], "--allow-random-weights"),
    ],
    ids=["num_classes_too_many", "device_tpu", "max_iter_negative", "eval_only_no_weights"],
)
def test_train_net_refuses_silent_results(data, tmp_path, flags, opts, named):
    with pytest.raises(SystemExit) as info:
        train_net.main([*flags, *_train_argv(data, tmp_path, *opts)])
    _one_clear_line(str(info.value.code), named)
    assert not (tmp_path / "out" / "last_checkpoint").exists()


def test_infer_refuses_to_run_without_weights(data, tmp_path):
    with pytest.raises(SystemExit) as info:
        infer_net.main(["--config-file", QUICKSTART, "--input", str(data["image_dir"]),
                        "--output", str(tmp_path / "o")])  # fmt: skip
    _one_clear_line(str(info.value.code), "--weights")


def test_saved_predictions_keep_relative_paths(tmp_path):
    """``a/img.png`` and ``b/img.png`` of one data set: two prediction files, two JSON names."""
    from axial_deeplab.data.coco_panoptic import coco_metadata
    from axial_deeplab.engine.predictions import PANOPTIC_JSON, PredictionSaver

    cats = [{"id": 1, "name": "x", "isthing": 0}, {"id": 2, "name": "y", "isthing": 1}]
    meta = coco_metadata(cats, name="m", source="test", image_dir=str(tmp_path / "images"))
    saver = PredictionSaver(str(tmp_path / "inference"), meta)
    labels = np.zeros((4, 4), np.int64)
    for image_id, sub in enumerate(("a", "b")):
        record = {"file_name": str(tmp_path / "images" / sub / "img.png"), "image_id": image_id,
                  "height": 4, "width": 4}  # fmt: skip
        saver.add(record, labels, {})
    saver.close()
    listed = json.loads((tmp_path / "inference" / PANOPTIC_JSON).read_text())["annotations"]
    assert [a["file_name"] for a in listed] == ["a/img.png", "b/img.png"]
    assert all((tmp_path / "inference" / "panoptic" / a["file_name"]).is_file() for a in listed)


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    env.pop("AXIAL_DEEPLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_command_lines_print_one_line_without_traceback(data, tmp_path):
    """Two real processes: the PQ command on a PNG cut at 20 bytes, and training on a data set
    with a duplicate image_id; ``--debug`` brings the traceback back."""
    _break_png(data["pred_dir"], lambda b: b[:20])
    pq = _cli("axial_deeplab.evaluation.panoptic", *_pq(data))
    assert pq.returncode != 0 and "Traceback" not in pq.stderr
    _one_clear_line(pq.stderr.strip().splitlines()[-1], "synth_000000.png")
    _edit_json(data["json"], JSON_CASES[10][1])  # duplicate_image_id
    train = _cli("axial_deeplab.engine.train_net", *_train_argv(data, tmp_path))
    assert train.returncode != 0 and "Traceback" not in train.stderr
    _one_clear_line(train.stderr.strip().splitlines()[-1], "image_id 0")
    debug = _cli("axial_deeplab.engine.train_net", "--debug", *_train_argv(data, tmp_path))
    assert "Traceback" in debug.stderr and debug.returncode != 0
