"""The PQ command's handling of mismatched files and a bad --output (audit of the command).

Inputs are the real COCO panoptic sample (two val2017 images, 142238 and 439180), its JSON
copied and edited in ``tmp_path``; the predictions are the ground truth itself, so PQ is 100.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sample_data import DATA, require

from axial_deeplab.evaluation.panoptic import main

SAMPLE = DATA / "coco_panoptic_sample"


def _args(gt_json: Path, pred_json: Path) -> list[str]:
    png = str(require(SAMPLE) / "panoptic")
    return ["--gt-json", str(gt_json), "--gt-dir", png, "--pred-json", str(pred_json),
            "--pred-dir", png, "--workers", "1"]  # fmt: skip


def _sample(tmp_path: Path, name: str, keep: tuple[int, ...] = (142238, 439180)) -> tuple:
    """The sample JSON restricted to the images ``keep``, written to ``tmp_path / name``."""
    data = json.loads((require(SAMPLE) / "panoptic_examples.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path, data


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    """``main(args)``: (exit status, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_predictions_for_images_not_in_the_ground_truth_are_reported(tmp_path, capsys):
    gt_json, _ = _sample(tmp_path, "gt.json", keep=(142238,))
    pred_json, _ = _sample(tmp_path, "pred.json")  # also predicts 439180, which gt lacks
    code, out, err = _run(_args(gt_json, pred_json), capsys)
    assert code == 0, err
    # panopticapi ignores the extra prediction too: PQ is that of image 142238 alone, predicted
    # by its own ground truth (100); the warning names the JSON, the count and the image id.
    assert f"{'All':24s}| {100.0:5.1f}" in out
    assert "1 image evaluated" in out
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, err
    assert str(pred_json) in warning[0] and "1 prediction" in warning[0]
    assert "439180" in warning[0] and "142238" not in warning[0]

    only_gt, _ = _sample(tmp_path, "pred_142238.json", keep=(142238,))
    code, same, err = _run(_args(gt_json, only_gt), capsys)
    assert code == 0 and same == out and "warning" not in err  # the numbers are kept


def test_every_image_evaluated_is_counted_without_warning(tmp_path, capsys):
    gt_json, _ = _sample(tmp_path, "gt.json")
    code, out, err = _run(_args(gt_json, gt_json), capsys)
    assert code == 0 and "2 images evaluated" in out and "warning" not in err


@pytest.mark.parametrize("parents", [("new",), ("new", "deeper")])
def test_output_into_a_missing_folder_creates_it(tmp_path, capsys, parents):
    gt_json, _ = _sample(tmp_path, "gt.json")
    output = tmp_path.joinpath(*parents, "results.json")
    code, out, err = _run([*_args(gt_json, gt_json), "--output", str(output)], capsys)
    assert code == 0, err
    assert out.rstrip().endswith(f"results written to {output}")
    assert json.loads(output.read_text())["num_images"] == 2
    assert [p.name for p in output.parent.iterdir()] == ["results.json"]  # no temp file left


@pytest.mark.parametrize("name", ["folder", "folder/"])
def test_output_onto_a_folder_fails_before_evaluating(tmp_path, capsys, name):
    gt_json, _ = _sample(tmp_path, "gt.json")
    (tmp_path / "folder").mkdir()
    output = f"{tmp_path}/{name}"
    code, out, err = _run([*_args(gt_json, gt_json), "--output", output], capsys)
    assert code == 2
    assert out == ""  # nothing evaluated (the table would come first)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --output ")
    assert output in err and ".tmp-" not in err
    assert list((tmp_path / "folder").iterdir()) == []


def test_output_under_a_file_fails_before_evaluating(tmp_path, capsys):
    gt_json, _ = _sample(tmp_path, "gt.json")
    output = str(gt_json / "results.json")  # a file as the parent folder
    code, out, err = _run([*_args(gt_json, gt_json), "--output", output], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --output ")
    assert output in err


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_unknown_category_names_the_json_and_the_image(tmp_path, capsys, side):
    gt_json, gt = _sample(tmp_path, "gt.json")
    pred_json, pred = _sample(tmp_path, "pred.json")
    path, data = (gt_json, gt) if side == "gt" else (pred_json, pred)
    segment = data["annotations"][0]["segments_info"][0]
    segment["category_id"] = 9999  # not among the gt's 133 categories
    path.write_text(json.dumps(data))
    code, out, err = _run(_args(gt_json, pred_json), capsys)
    assert code == 2 and out == ""
    message = err.strip()
    assert f"segment id {segment['id']} has unknown category_id 9999" in message
    assert str(path) in message and "000000142238.png" in message and "142238" in message
