"""PQ from files: the file evaluation with worker processes, and its command line in process and
as ``python -m``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from panoptic_cases import _files, _ours

from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files


def test_file_evaluation_is_the_streaming_result_bit_for_bit_for_any_worker_count(tmp_path):
    # The parent adds per-image statistics in image order, so batches and worker processes do
    # not change a single bit: equal to process() called image by image.
    args, images, categories = _files(tmp_path, num_images=21)
    expected = _ours(images, categories)
    paths = [args[i] for i in (1, 3, 5, 7)]
    for workers in (1, 2, 3):
        result = evaluate_panoptic_files(*paths, workers=workers, progress=False)
        assert result == expected, workers


def test_categories_from_the_prediction_when_the_ground_truth_has_none(tmp_path, capsys):
    """A ground-truth JSON without 'categories' (the Cityscapes sample's): those of the
    prediction JSON (ours writes them), with a note; neither: an error saying what to add."""
    args, images, categories = _files(tmp_path)
    gt_path, pred_path = Path(args[1]), Path(args[5])
    gt, pred = json.loads(gt_path.read_text()), json.loads(pred_path.read_text())
    del gt["categories"]
    gt_path.write_text(json.dumps(gt))
    paths = [args[i] for i in (1, 3, 5, 7)]
    with pytest.raises(ValueError, match="no 'categories' list, and .*pred.json has none either"):
        evaluate_panoptic_files(*paths, workers=1, progress=False)
    pred_path.write_text(json.dumps({**pred, "categories": categories}))
    result = evaluate_panoptic_files(*paths, workers=1, progress=False)
    assert result == _ours(images, categories)
    assert f"has no 'categories' list: using those of {pred_path}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def test_cli_prints_tables_and_writes_json(tmp_path, capsys):
    from axial_deeplab.evaluation.panoptic import main

    args, images, categories = _files(tmp_path)
    main(args + ["--output", str(tmp_path / "results.json"), "--workers", "2"])
    printed = capsys.readouterr().out
    expected = _ours(images, categories)
    assert f"{'All':24s}| {100 * expected['All']['pq']:5.1f}" in printed
    assert "thing_1" in printed and "stuff_13" in printed  # per-class table with names
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["All"]["pq"] == pytest.approx(expected["All"]["pq"], abs=1e-12)
    assert saved["per_class"]["1"]["name"] == "thing_1"
    assert not list(tmp_path.glob(".tmp_*"))  # the atomic write left no temporary file


def test_cli_without_the_compiled_reader_says_so_and_gives_the_same_numbers(
    tmp_path, capsys, monkeypatch
):
    from axial_deeplab.evaluation import runs
    from axial_deeplab.evaluation.panoptic import main

    args, images, categories = _files(tmp_path)
    main(args + ["--output", str(tmp_path / "built.json"), "--workers", "1"])
    assert "compiled PNG reader" not in capsys.readouterr().err
    monkeypatch.setattr(runs, "_png_runs", None)  # as after an install without a C compiler
    main(args + ["--output", str(tmp_path / "numpy.json"), "--workers", "1"])
    err = capsys.readouterr().err
    assert "note: the compiled PNG reader was not built at install" in err
    assert "pip install -e ." in err
    built, numpy = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("built", "numpy"))
    assert built == numpy == json.loads(json.dumps(_ours(images, categories)))


def test_command_process_flushes_its_output_and_exit_status(tmp_path):
    """``python -m`` ends with ``os._exit`` (no interpreter teardown): the table printed into a
    pipe, the JSON and the exit status must still all come out, for a success and for errors."""
    args, images, categories = _files(tmp_path)
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    for name in ("AXIAL_DEEPLAB_DEBUG", "PYTHONUNBUFFERED"):  # stdout block-buffered, as usual
        env.pop(name, None)

    def run(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "axial_deeplab.evaluation.panoptic", *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    done = run(*args, "--output", str(tmp_path / "results.json"), "--workers", "2")
    expected = _ours(images, categories)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"results written to {tmp_path / 'results.json'}")
    assert f"{'All':24s}| {100 * expected['All']['pq']:5.1f}" in done.stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["All"]["pq"] == pytest.approx(expected["All"]["pq"], abs=1e-12)
    usage = run("--gt-json", str(tmp_path / "gt.json"))  # argparse: the other paths missing
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr
    (tmp_path / "pred" / "2.png").unlink()
    missing = run(*args)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == f"error: panoptic PNG not found: {tmp_path / 'pred' / '2.png'}"


def test_cli_errors_name_the_missing_image_or_file(tmp_path, capsys):
    from axial_deeplab.evaluation.panoptic import main

    args, _, _ = _files(tmp_path)
    pred = json.loads((tmp_path / "pred.json").read_text())
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred["annotations"][1:]}))
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--workers", "1"])
    assert exit_info.value.code == 2
    assert "no prediction for 1 ground-truth image(s)" in capsys.readouterr().err
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    (tmp_path / "pred" / "2.png").unlink()
    with pytest.raises(SystemExit):
        main(args + ["--workers", "2"])
    assert f"panoptic PNG not found: {tmp_path / 'pred' / '2.png'}" in capsys.readouterr().err


def test_cli_errors_for_an_empty_ground_truth_retyped_ids_and_a_wrong_images_size(tmp_path, capsys):
    """No gt annotation printed PQ 0.0 with exit 0 (panopticapi divides by zero); image ids
    given as strings on one side only, and a wrong 'images' size, were not pointed at."""
    from axial_deeplab.evaluation.panoptic import main

    args, _, _ = _files(tmp_path)
    gt = json.loads((tmp_path / "gt.json").read_text())
    pred = json.loads((tmp_path / "pred.json").read_text())

    def fails_with(gt_data: dict, pred_data: dict) -> str:
        (tmp_path / "gt.json").write_text(json.dumps(gt_data))
        (tmp_path / "pred.json").write_text(json.dumps(pred_data))
        with pytest.raises(SystemExit) as exit_info:
            main(args + ["--workers", "1"])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    said = fails_with({**gt, "annotations": []}, pred)
    assert f"{tmp_path / 'gt.json'}: no annotations: no image to evaluate on" in said
    retyped = [{**a, "image_id": str(a["image_id"])} for a in pred["annotations"]]
    first = gt["annotations"][0]["image_id"]
    said = fails_with(gt, {**pred, "annotations": retyped})
    assert (
        f"gives them as str ('{first}'), {tmp_path / 'gt.json'} as int ({first}): use one" in said
    )
    first_ann = gt["annotations"][0]
    png = os.path.join(args[args.index("--gt-dir") + 1], first_ann["file_name"])
    height, width = cv2.imread(png).shape[:2]
    image = {"id": first, "file_name": "a.jpg", "height": height + 1, "width": width}
    said = fails_with({**gt, "images": [image]}, pred)
    assert (
        f"differs from the image size ({height + 1}, {width}) given in {tmp_path / 'gt.json'}: "
        f"'images' entry of image_id {first!r}: one of the two is wrong"
    ) in said
