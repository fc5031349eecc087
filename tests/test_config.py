"""Config system: defaults, ``_BASE_`` inheritance, overrides and errors naming the bad key."""

from pathlib import Path

import pytest
import torch

from axial_deeplab.config import ConfigError, get_cfg, load_config
from axial_deeplab.modeling.build import build_model

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_fresh_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.AXIAL_RESNET.SPAN = 3
    assert b.MODEL.AXIAL_RESNET.SPAN == 65


def test_base_chain_and_overrides(tmp_path):
    _write(
        tmp_path / "base.yaml",
        "MODEL:\n  AXIAL_RESNET:\n    SPAN: 33\n    VARIANT: axial_resnet_m\n",
    )
    _write(tmp_path / "mid.yaml", "_BASE_: base.yaml\nMODEL:\n  AXIAL_RESNET:\n    SPAN: 17\n")
    child = _write(tmp_path / "child.yaml", "_BASE_: mid.yaml\nSOLVER:\n  BASE_LR: 0.5\n")
    cfg = load_config(str(child), ["SOLVER.MAX_ITER", "7"])
    # child wins over mid, mid over base; untouched base keys survive; overrides last.
    assert cfg.MODEL.AXIAL_RESNET.SPAN == 17
    assert cfg.MODEL.AXIAL_RESNET.VARIANT == "axial_resnet_m"
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.SOLVER.MAX_ITER == 7
    assert cfg.is_frozen()


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  AXIAL_RESNET:\n    SPANN: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*MODEL\.AXIAL_RESNET\.SPANN"):
        load_config(str(bad))


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'SOLVER\.BASE_LRR'"):
        load_config(None, ["SOLVER.BASE_LRR", "1"])


def test_wrong_type_and_odd_overrides():
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER|type"):
        load_config(None, ["SOLVER.MAX_ITER", "'many'"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.MAX_ITER"])


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO))
)
def test_every_config_file_loads_and_builds(path):
    cfg = load_config(str(path))
    with torch.device("meta"):  # shapes only: even Axial-DeepLab-XL builds in a second
        model = build_model(cfg)
    assert model.semantic_head is not None
    n_classes = model(torch.empty(1, 3, 65, 97, device="meta"))["semantic"].shape[1]
    assert n_classes == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


def test_freeze_at_is_not_a_key():
    # MODEL.BACKBONE.FREEZE_AT was read nowhere (every stage always trained): it is gone, and a
    # file or override that sets it gets the unknown-key error instead of being ignored.
    assert "FREEZE_AT" not in get_cfg().MODEL.BACKBONE
    with pytest.raises(ConfigError, match="FREEZE_AT"):
        load_config(None, ["MODEL.BACKBONE.FREEZE_AT", "2"])


def test_stored_config_with_a_retired_key_still_loads(capsys):
    # A checkpoint written before FREEZE_AT was removed stores it; its config loads without it.
    from axial_deeplab.engine.infer_net import config_from_yaml

    stored = "MODEL:\n  BACKBONE:\n    FREEZE_AT: 0\n    NAME: resnet\n"
    cfg = config_from_yaml(stored, [], source="old.pth")
    assert cfg.MODEL.BACKBONE.NAME == "resnet" and "FREEZE_AT" not in cfg.MODEL.BACKBONE
    assert "old.pth: ignoring retired config keys it stores: MODEL.BACKBONE.FREEZE_AT" in (
        capsys.readouterr().out
    )
    with pytest.raises(ConfigError, match="BACKBON"):  # other unknown keys still refused
        config_from_yaml("MODEL:\n  BACKBON: {}\n", [], source="old.pth")
