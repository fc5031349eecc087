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
    from axial_deeplab.engine.predictor_setup import config_from_yaml

    stored = "MODEL:\n  BACKBONE:\n    FREEZE_AT: 0\n    NAME: resnet\n"
    cfg = config_from_yaml(stored, [], source="old.pth")
    assert cfg.MODEL.BACKBONE.NAME == "resnet" and "FREEZE_AT" not in cfg.MODEL.BACKBONE
    assert "old.pth: ignoring retired config keys it stores: MODEL.BACKBONE.FREEZE_AT" in (
        capsys.readouterr().out
    )
    with pytest.raises(ConfigError, match="BACKBON"):  # other unknown keys still refused
        config_from_yaml("MODEL:\n  BACKBON: {}\n", [], source="old.pth")


def test_a_checkpoint_is_not_a_config(tmp_path):
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, checkpoint)
    with pytest.raises(ConfigError) as err:
        load_config(str(checkpoint))
    assert str(err.value) == (
        f"{checkpoint}: not a YAML config (a binary file: a checkpoint? checkpoints go in "
        "MODEL.WEIGHTS)"
    )
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("SOLVER:\n  MAX_ITER: 5  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not a YAML config \(not UTF-8 text\)$"):
        load_config(str(latin))


def test_options_after_overrides_are_named():
    # argparse's REMAINDER leaves the options written after the first override among them
    opts = ["OUTPUT_DIR", "X", "SOLVER.MAX_ITER", "6"]
    with pytest.raises(ConfigError) as err:
        load_config(None, [*opts, "--resume"])  # odd: was "KEY VALUE pairs, got an odd number"
    assert str(err.value) == (
        "option '--resume' after the KEY VALUE overrides: put options before them "
        "(... --resume KEY VALUE ...)"
    )
    with pytest.raises(ConfigError) as err:
        load_config(None, [*opts, "--resume", "--eval-only"])  # even: was "unknown config key"
    assert str(err.value).startswith(
        "options '--resume', '--eval-only' after the KEY VALUE overrides: put options before "
        "them (... --resume --eval-only KEY VALUE ...)"
    )


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.MAX_ITER", "five"], "SOLVER.MAX_ITER: expected an integer, got 'five'"),
        (["SOLVER.MAX_ITER", "True"], "SOLVER.MAX_ITER: expected an integer, got True"),
        (  # (an integer is taken as that float: test_fuzz_config)
            ["SOLVER.BASE_LR", "fast"],
            "SOLVER.BASE_LR: expected a floating-point number (e.g. 0.5 or 1.0), got 'fast'",
        ),
        (["MODEL.AXIAL_RESNET.VARIANT", "[1]"], "expected a string, got [1]"),
        (["INPUT.CROP.SIZE", "5"], "INPUT.CROP.SIZE: expected a list ([a, b, ...]), got 5"),
        (["SOLVER", "5"], "SOLVER must be a section (set its keys: SOLVER.KEY VALUE), got 5"),
        (["SOLVER.MAX_ITER.X", "5"], "unknown config key 'SOLVER.MAX_ITER.X'"),  # was TypeError
    ],
)
def test_wrong_type_overrides_in_words(opts, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    assert message in str(err.value) and str(err.value).startswith("command-line override: ")


def test_wrong_types_in_a_file_in_words(tmp_path):
    section = _write(tmp_path / "section.yaml", "SOLVER: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(section))  # was the whole SOLVER section, printed inside yacs' message
    assert (
        str(err.value) == f"{section}: SOLVER must be a section (KEY: value lines below it), got 5"
    )
    value = _write(tmp_path / "value.yaml", "SOLVER:\n  MAX_ITER: five\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(value))
    assert str(err.value) == f"{value}: SOLVER.MAX_ITER: expected an integer, got 'five'"


def test_missing_base_names_the_file_that_refers_to_it(tmp_path):
    child = _write(tmp_path / "child.yaml", "_BASE_: nothere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(child))
    assert str(err.value) == (
        f"config file not found: {tmp_path / 'nothere.yaml'} (the _BASE_ of {child})"
    )


@pytest.mark.parametrize(
    "opts, said",
    [
        (["INPUT.FORMAT", "BGR"], "INPUT.FORMAT 'BGR': this engine feeds RGB images"),
        (["INPUT.GAUSSIAN_SIGMA", "0.0"], "INPUT.GAUSSIAN_SIGMA must be > 0"),
        (["MODEL.PANOPTIC_DEEPLAB.TOP_K_INSTANCE", "0"],
         "MODEL.PANOPTIC_DEEPLAB.TOP_K_INSTANCE must be an integer >= 1, got 0"),
        (["MODEL.PIXEL_MEAN", "[1.0, 2.0]"], "MODEL.PIXEL_MEAN must be 3 values (R, G, B), got"),
        (["MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]"], "MODEL.PIXEL_STD must be 3 values (R, G, B), > 0"),
    ],
)  # fmt: skip
def test_values_that_failed_late_or_silently_are_refused_at_load(opts, said):
    """INPUT.FORMAT was read by the detectron2 plugin only (the native engine fed RGB whatever
    it said); sigma 0 gave NaN centre targets; top-k 0 an IndexError at the first evaluation;
    a two-value PIXEL_MEAN an error at the first forward that blamed the images."""
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    assert said in str(err.value)
