"""Generated broken panoptic JSON files (ground truth and prediction) through the PQ command and
the training reader.

Every case must end in one clear line: a user-error type whose message names the file, key or id
(no traceback, no "unexpected" error), never a silent result or code execution. The cases
(``fuzz_cases.JSON_CASES``) edit a 2-image synthetic data set; the PQ command runs in-process
through its ``main``, the same top-level handler as the command line.
"""

import pytest
from fuzz_cases import JSON_CASES, _edit_json, _pq, _pq_error, _training_reader, _user_error
from fuzz_cases import base as base  # a fixture
from fuzz_cases import data as data  # a fixture

from axial_deeplab.evaluation import panoptic

# Edits of the prediction JSON that the PQ command must refuse (its categories are not read).
PRED_JSON_CASES = [c for c in JSON_CASES if not c[0].startswith(("categor", "images", "no_categ"))]
PRED_JSON_CASES += [("prediction_missing", lambda d: d["annotations"].pop(1), "image_id [1]")]


def test_pq_of_a_perfect_prediction_is_100(data, capsys):
    panoptic.main(_pq(data))  # the unbroken base: the cases below break only what they say
    assert "100.0" in capsys.readouterr().out


@pytest.mark.parametrize("name,edit,named", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_pq_command_refuses_broken_gt_json(data, capsys, name, edit, named):
    _edit_json(data["json"], edit)
    if name == "no_categories":  # else the prediction's categories serve (a note says so)
        _edit_json(data["pred_json"], lambda d: d.pop("categories", None))
    _pq_error(data, capsys, named)


@pytest.mark.parametrize("name,edit,named", PRED_JSON_CASES, ids=[c[0] for c in PRED_JSON_CASES])
def test_pq_command_refuses_broken_prediction_json(data, capsys, name, edit, named):
    _edit_json(data["pred_json"], edit)
    _pq_error(data, capsys, named)


@pytest.mark.parametrize("name,edit,named", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_training_reader_refuses_broken_json(data, name, edit, named):
    _edit_json(data["json"], edit)
    with pytest.raises(Exception) as info:
        _training_reader(data)
    _user_error(info.value, named)
