"""Generated broken configs (files and overrides, for both engines) and broken ``MODEL.WEIGHTS``
files through the config loader and the model preparation of ``--eval-only``.

Every case must end in one clear line: a user-error type whose message names the file, key or id
(no traceback, no "unexpected" error), never a silent result or code execution.
"""

import os
import pickle

import pytest
import torch
from fuzz_cases import QUICKSTART, _user_error

from axial_deeplab.config import ConfigError, load_config
from axial_deeplab.utils.cli import one_line

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
    ("stuff_area_negative", None, ["MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "-5"], "STUFF_AREA"),
    ("min_size_test_negative", None, ["INPUT.MIN_SIZE_TEST", "-3"], "INPUT.MIN_SIZE_TEST"),
    ("tta_scales_empty", None, ["TEST.AUG.SCALES", "[]"], "TEST.AUG.SCALES"),
    ("tta_scale_zero", None, ["TEST.AUG.SCALES", "[1.0, 0.0]"], "TEST.AUG.SCALES"),
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
        "could not determine a constructor for the tag",  # safe YAML: the tag is not run
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


def test_an_integer_for_a_float_key_is_that_float(tmp_path):
    # CENTER_THRESHOLD 0 was refused ("expected a floating-point number, got 0"): 0 is 0.0.
    cfg = load_config(QUICKSTART, ["MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0"])
    assert cfg.MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD == 0.0
    path = tmp_path / "case.yaml"
    path.write_text(f"_BASE_: {os.path.abspath(QUICKSTART)}\nSOLVER:\n  BASE_LR: 1\n")
    assert isinstance(load_config(str(path)).SOLVER.BASE_LR, float)
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER: expected an integer, got 1.5"):
        load_config(QUICKSTART, ["SOLVER.MAX_ITER", "1.5"])  # not the other way round
