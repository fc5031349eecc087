"""Class numbers follow the order of a data set's categories: a training set, an evaluation set
and a checkpoint that order the same classes differently would score every class against another
one without any error. Found by an audit (a reversed categories list: lawn scored as player)."""

from __future__ import annotations

import os

import pytest
import torch

from axial_deeplab.checkpoint.io import save_checkpoint_file
from axial_deeplab.config import ConfigError, load_config
from axial_deeplab.data.build import category_difference
from axial_deeplab.data.catalog import DatasetMetadata
from axial_deeplab.engine import train_net
from axial_deeplab.engine.build import build_trainer

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs/quickstart/synthetic_axial.yaml")
CATEGORIES = (
    {"id": 10, "name": "player", "isthing": 1, "color": [200, 0, 0]},
    {"id": 20, "name": "ball", "isthing": 1, "color": [0, 200, 0]},
    {"id": 80, "name": "lawn", "isthing": 0, "color": [0, 0, 200]},
)


def _meta(name: str, categories) -> DatasetMetadata:
    numbered = ({**c, "train_id": i} for i, c in enumerate(categories))
    return DatasetMetadata(name=name, categories=tuple(numbered))


def test_category_difference_names_the_class_and_ignores_colours():
    base = _meta("a", CATEGORIES)
    assert category_difference(base, _meta("b", CATEGORIES)) is None
    plain = [{k: v for k, v in c.items() if k != "color"} for c in CATEGORIES]
    assert category_difference(base, _meta("b", plain)) is None  # colours are optional
    text = category_difference(base, _meta("b", CATEGORIES[::-1]))
    assert "class 0 is (id 10, name 'player', isthing 1)" in text
    assert "(id 80, name 'lawn', isthing 0) in the second" in text and "another order" in text
    assert "3 against 2 categories" in category_difference(base, _meta("b", CATEGORIES[:2]))
    renamed = [{**c, "name": c["name"].upper()} for c in CATEGORIES]
    assert "another order" not in category_difference(base, _meta("b", renamed))


class _Catalog:
    """The two calls build_trainer and check_checkpoint_classes make of a catalog."""

    def __init__(self, **sets):
        self.sets = sets

    def get(self, name):
        return [], self.sets[name]


def test_training_refuses_a_test_set_ordered_differently():
    cfg = load_config(CONFIG, ["DATASETS.TRAIN", "('mine_train',)", "DATASETS.TEST",
                               "('mine_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])  # fmt: skip
    catalog = _Catalog(
        mine_train=_meta("mine_train", CATEGORIES), mine_val=_meta("mine_val", CATEGORIES[::-1])
    )
    with pytest.raises(ConfigError, match=r"DATASETS.TRAIN and DATASETS.TEST: .*class 0 is"):
        build_trainer(cfg, torch.device("cpu"), catalog)


def _eval_config(tmp_path):
    """An --eval-only config on 'mine_val' whose weights store CATEGORIES (things 0 and 1)."""
    weights = str(tmp_path / "model.pth")
    names = [c["name"] for c in CATEGORIES]
    metadata = {"class_names": names, "thing_ids": [0, 1], "label_divisor": 1000}
    save_checkpoint_file(weights, {}, metadata=metadata)
    return load_config(CONFIG, ["DATASETS.TEST", "('mine_val',)", "MODEL.WEIGHTS", weights])


def test_eval_only_refuses_a_checkpoint_ordered_differently(tmp_path, capsys):
    cfg = _eval_config(tmp_path)
    same = _Catalog(mine_val=_meta("mine_val", CATEGORIES))
    train_net.check_checkpoint_classes(cfg, same)
    assert capsys.readouterr().out == ""
    reordered = _Catalog(mine_val=_meta("mine_val", CATEGORIES[::-1]))
    with pytest.raises(ConfigError, match=r"class 0 is 'player' in .*model.pth but 'lawn'"):
        train_net.check_checkpoint_classes(cfg, reordered)
    renamed = _Catalog(mine_val=_meta("mine_val", [{**c, "name": c["name"].upper()}
                                                   for c in CATEGORIES]))  # fmt: skip
    train_net.check_checkpoint_classes(cfg, renamed)
    assert "note: the checkpoint's class names differ" in capsys.readouterr().out


def test_eval_only_notes_thing_classes_that_the_data_set_marks_as_stuff(tmp_path, capsys):
    # An audit's case: the same weights scored 0 or 1 person segments per image as the data set
    # marked person a thing or stuff, without a word.
    cfg = _eval_config(tmp_path)
    train_net.check_checkpoint_classes(cfg, _Catalog(mine_val=_meta("mine_val", CATEGORIES)))
    assert capsys.readouterr().out == ""
    stuff_ball = [{**c, "isthing": 0} if c["name"] == "ball" else c for c in CATEGORIES]
    train_net.check_checkpoint_classes(cfg, _Catalog(mine_val=_meta("mine_val", stuff_ball)))
    out = capsys.readouterr().out
    assert (
        "mark different classes as things (things in it but stuff in the data set: 1 (ball))" in out
    )


def test_eval_only_with_a_config_file_names_the_stored_config_differences(tmp_path, capsys):
    # The same tensors run at another output stride give other predictions: an audit's
    # --eval-only with OS32's config on OS16 weights scored them without a word.
    weights = str(tmp_path / "model.pth")
    stored = load_config(CONFIG)
    save_checkpoint_file(weights, {}, config=stored)
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", weights])
    train_net.notice_stored_config(cfg, CONFIG)
    assert capsys.readouterr().out == ""
    cfg = load_config(CONFIG, ["MODEL.WEIGHTS", weights, "MODEL.AXIAL_RESNET.OUTPUT_STRIDE", "32"])
    train_net.notice_stored_config(cfg, CONFIG)
    out = capsys.readouterr().out
    assert f"notice: --config-file {CONFIG} is used, not the config stored in {weights}" in out
    assert "MODEL.AXIAL_RESNET.OUTPUT_STRIDE: stored 16, used 32" in out
