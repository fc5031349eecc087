"""What the broken-input tests (``test_fuzz_*.py``) share: the 2-image base data set and its
fresh copy per test (fixtures), the table of broken JSON edits, the one-clear-line checks, and
runs of the PQ command and of the training reader.

A test module makes the fixtures its own by re-exporting them (``from fuzz_cases import data as
data``); there ``base`` is module-scoped, so each such module writes the base data set once.
"""

import json
import os
import shutil

import cv2
import pytest

from axial_deeplab.data.coco_panoptic import load_coco_panoptic
from axial_deeplab.data.dataset import PanopticDataset
from axial_deeplab.data.synthetic_writer import write_synthetic_dataset
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
    ("category_color_range", lambda d: d["categories"][0].update(color=[300, -1]), "color"),
    ("category_color_text", lambda d: d["categories"][0].update(color="red"), "color"),
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


def _training_reader(data) -> None:
    records, meta = load_coco_panoptic(str(data["json"]), str(data["png_dir"]),
                                       str(data["image_dir"]))  # fmt: skip
    dataset = PanopticDataset(records, metadata=meta)
    for i in range(len(dataset)):
        dataset[i]


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
