"""Silent results that are errors now (``train_net``, ``infer.py``, saved predictions), and the
command lines themselves in two real processes, on generated broken inputs.

Every case must end in one clear line: a user-error type whose message names the file, key or id
(no traceback, no "unexpected" error), never a silent result or code execution.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fuzz_cases import JSON_CASES, QUICKSTART, REPO, _break_png, _edit_json, _one_clear_line, _pq
from fuzz_cases import base as base  # a fixture
from fuzz_cases import data as data  # a fixture

from axial_deeplab.engine import infer_net, train_net


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
