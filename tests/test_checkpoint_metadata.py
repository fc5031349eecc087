"""Checkpoints that carry their config and class metadata, and inference that needs nothing else."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sample_data import require

from axial_deeplab.checkpoint.io import (
    FORMAT_VERSION,
    load_checkpoint_file,
    load_state_dict_file,
    save_atomic,
    save_checkpoint_file,
)
from axial_deeplab.config import load_config
from axial_deeplab.data.cityscapes_panoptic import CITYSCAPES_CLASSES
from axial_deeplab.data.metadata import metadata_for_dataset
from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.data.synthetic import SYNTHETIC_CLASSES
from axial_deeplab.engine import class_names, infer_net, predictor_setup

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart" / "synthetic_axial.yaml")
COCO_JSON = (
    ROOT.parent / "shared" / "data" / "coco_panoptic_sample" / "panoptic_coco_categories.json"
)
NAMES = {"class_names": ("sky", "car", "person"), "thing_ids": (1, 2), "label_divisor": 1000}
# The quick-start's tiny Axial-ResNet with 3 classes; stuff area 1 and centre threshold 0 so that
# random weights still give several segments, things included.
TINY = [
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "1",
    "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.0",
    "DATASETS.TEST", "('cityscapes_fine_panoptic_val',)",  # 19 classes: must lose to the file
]  # fmt: skip


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(rgb, (7, 7), 2)


# ------------------------------------------------------------------------------------------------
# The file format
# ------------------------------------------------------------------------------------------------


def test_round_trip_and_weights_only_layout(tmp_path):
    cfg = load_config(CONFIG, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    state = {
        "conv.weight": torch.arange(6.0).reshape(2, 3),
        "bn.num_batches_tracked": torch.tensor(4),
    }
    source = {"format": "deeplab2", "file": "ckpt-60000", "sha256": "ab" * 32, "shape": (1, 2)}
    path = tmp_path / "c.pth"
    save_checkpoint_file(path, state, config=cfg, metadata=NAMES, source=source)
    raw = torch.load(path, weights_only=True)  # only plain types and tensors inside
    assert sorted(raw) == ["config", "format_version", "metadata", "model", "source"]
    assert raw["format_version"] == FORMAT_VERSION == 1
    assert raw["metadata"] == {"class_names": ["sky", "car", "person"], "thing_ids": [1, 2],
                               "label_divisor": 1000}  # fmt: skip
    assert raw["source"]["shape"] == [1, 2]  # tuples stored as lists
    loaded = load_checkpoint_file(path)
    assert loaded.metadata == raw["metadata"] and loaded.source == raw["source"]
    assert list(loaded.state_dict) == list(state)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    # the stored YAML rebuilds the same config
    assert predictor_setup.config_from_yaml(loaded.config_yaml, [], source=str(path)) == cfg
    assert list(load_state_dict_file(path)) == list(state)  # the plain loader still works
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")] == []
    # absent entries are left out; a bare state dict loads with none of them
    save_checkpoint_file(path, state, config="MODEL:\n  DEVICE: cpu\n")
    assert sorted(torch.load(path, weights_only=True)) == ["config", "format_version", "model"]
    torch.save(state, tmp_path / "bare.pth")
    bare = load_checkpoint_file(tmp_path / "bare.pth")
    assert (bare.config_yaml, bare.metadata, bare.source) == (None, None, None)
    # mapped (to read a large file's config) or, for the old pickle format, read whole: the same
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    for name in ("c.pth", "old.pth"):
        mapped, whole = (load_checkpoint_file(tmp_path / name, mmap=m) for m in (True, False))
        assert (mapped.config_yaml, mapped.metadata) == (whole.config_yaml, whole.metadata)
        assert all(torch.equal(mapped.state_dict[k], v) for k, v in whole.state_dict.items())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"thing_ids": [1, 3]}, r"metadata\['thing_ids'\].*\[0, 3\).*outside: \[3\]"),
        ({"thing_ids": [1, 1]}, r"metadata\['thing_ids'\].*distinct"),
        ({"thing_ids": [1.0]}, r"metadata\['thing_ids'\]\[0\]: expected an int"),
        ({"class_names": ["sky", ""]}, r"metadata\['class_names'\]: entries \[1\]"),
        ({"label_divisor": 0}, r"metadata\['label_divisor'\] must be >= 1"),
        ({"class_colors": [[0, 0, 0]] * 2}, r"metadata\['class_colors'\]: expected 3"),
        ({"class_colors": [[0, 0, 256]] * 3}, r"class_colors'\]: entries \[0, 1, 2\]"),
        ({"isthing": [1]}, r"unknown \['isthing'\]"),
    ],
)
def test_bad_metadata_names_the_file_and_field(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        save_checkpoint_file(tmp_path / "x.pth", {}, metadata={**NAMES, **change})
    # written by hand (another tool): loading names the file
    path = tmp_path / "hand.pth"
    save_atomic({"model": {}, "metadata": {**NAMES, **change}}, path)
    with pytest.raises(ValueError, match=f"hand.pth: .*{message}"):
        load_checkpoint_file(path)


def test_other_bad_entries(tmp_path):
    with pytest.raises(
        ValueError, match=r"checkpoint: metadata needs .*missing \['label_divisor'\]"
    ):
        save_checkpoint_file(
            tmp_path / "x.pth", {}, metadata={"class_names": ["a"], "thing_ids": []}
        )
    with pytest.raises(TypeError, match=r"source\['arr'\]: ndarray cannot be stored"):
        save_checkpoint_file(tmp_path / "x.pth", {}, source={"arr": np.zeros(2)})
    with pytest.raises(ValueError, match="config YAML must be a mapping"):
        save_checkpoint_file(tmp_path / "x.pth", {}, config="- a list")
    with pytest.raises(TypeError, match=r"state_dict entries \['w'\]"):
        save_checkpoint_file(tmp_path / "x.pth", {"w": [1.0]})
    save_atomic({"model": {}, "format_version": 2}, tmp_path / "new.pth")
    with pytest.raises(ValueError, match="new.pth: format_version 2 is newer"):
        load_checkpoint_file(tmp_path / "new.pth")


def test_builtin_metadata_tables():
    city = metadata_for_dataset("cityscapes")
    # cityscapesscripts labels.py: 19 train ids, person..bicycle (11..18) have instances
    assert len(city["class_names"]) == 19 and city["thing_ids"] == list(range(11, 19))
    assert city["class_names"][13] == "car" and city["class_colors"][13] == [0, 0, 142]
    assert city["label_divisor"] == 1000
    assert metadata_for_dataset("cityscapes_fine_panoptic_val") == city
    assert city["class_names"] == [c[0] for c in CITYSCAPES_CLASSES]  # the data code's table
    coco = metadata_for_dataset("coco_2017_val_panoptic")
    # COCO panoptic: 133 categories, the 80 things first (train ids 0..79)
    assert len(coco["class_names"]) == 133 and coco["thing_ids"] == list(range(80))
    assert coco["class_names"][0] == "person" and coco["class_colors"][0] == [220, 20, 60]
    with pytest.raises(KeyError, match="no built-in class metadata for data set 'mapillary'"):
        metadata_for_dataset("mapillary")
    require(COCO_JSON)
    # the built-in table equals the official categories file (names, isthing, colours, order)
    categories = json.loads(COCO_JSON.read_text())
    assert coco["class_names"] == [c["name"] for c in categories]
    assert coco["thing_ids"] == [i for i, c in enumerate(categories) if c["isthing"]]
    assert coco["class_colors"] == [c["color"] for c in categories]


# ------------------------------------------------------------------------------------------------
# Training checkpoints and inference from a checkpoint alone
# ------------------------------------------------------------------------------------------------


def _check_outputs(out: Path, name: str, size: tuple[int, int], names: list[str]) -> dict:
    """PNG ids match the JSON's segments, named from ``names``; the picture exists."""
    ids = read_panoptic_png(out / f"{name}_panoptic.png")
    record = json.loads((out / f"{name}.json").read_text())
    assert ids.shape == size
    values, counts = np.unique(ids, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}
    assert found == {s["id"]: s["area"] for s in record["segments_info"]}
    assert all(s["category_name"] == names[s["category_id"]] for s in record["segments_info"])
    assert cv2.imread(str(out / f"{name}_vis.png")) is not None
    return record


def test_training_checkpoint_carries_config_and_metadata(tmp_path, capsys):
    from axial_deeplab.data.catalog import DatasetCatalog
    from axial_deeplab.data.synthetic_writer import register_synthetic, write_synthetic_dataset
    from axial_deeplab.engine.build import build_trainer

    data = str(tmp_path / "data")
    write_synthetic_dataset(data, splits={"train": 4}, seed=3, formats=("coco",))
    catalog = DatasetCatalog()
    register_synthetic(catalog, data, splits=("train",))
    opts = ["OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.TRAIN", "('synthetic_coco_train',)",
            "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "VIS_PERIOD", "0", "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "1"]  # fmt: skip
    cfg = load_config(CONFIG, [*opts, "SOLVER.MAX_ITER", "2"])
    build_trainer(cfg, torch.device("cpu"), catalog).train()
    path = tmp_path / "run" / "model_0000002.pth"
    stored = load_checkpoint_file(path)
    assert predictor_setup.config_from_yaml(stored.config_yaml, [], source="run") == cfg
    assert stored.metadata["class_names"] == [c[0] for c in SYNTHETIC_CLASSES]
    assert stored.metadata["thing_ids"] == [0, 1, 2]  # disc, square, triangle
    assert stored.metadata["label_divisor"] == 1000
    # resume still works on a checkpoint with the extra entries
    resumed = build_trainer(
        load_config(CONFIG, [*opts, "SOLVER.MAX_ITER", "3"]), torch.device("cpu"), catalog
    )
    assert resumed.resume() and resumed.iteration == 2
    # inference from the checkpoint alone: its config, its class names
    cv2.imwrite(str(tmp_path / "a.png"), _image(40, 56)[..., ::-1].copy())
    argv = ["--weights", str(path), "--input", str(tmp_path / "a.png"), "--output"]
    assert infer_net.main([*argv, str(tmp_path / "out")])["images"] == 1
    printed = capsys.readouterr().out
    assert f"config: stored in {path}" in printed
    assert f"class names: metadata stored in {path}" in printed
    _check_outputs(tmp_path / "out", "a", (40, 56), stored.metadata["class_names"])


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A tiny random Axial-DeepLab saved with its config, names and provenance; the model."""
    from axial_deeplab.modeling.build import build_model

    cfg = load_config(CONFIG, TINY)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_model(cfg).eval()
    path = tmp_path_factory.mktemp("ckpt") / "converted.pth"
    source = {"format": "test", "converter": "tests/test_checkpoint_metadata.py"}
    save_checkpoint_file(path, model.state_dict(), config=cfg, metadata=NAMES, source=source)
    return path, model, cfg


def test_infer_from_checkpoint_alone_names_things_as_instances(tmp_path, random_checkpoint, capsys):
    from axial_deeplab.engine.evaluate import PostProcessing
    from axial_deeplab.engine.inference import Predictor

    path, model, cfg = random_checkpoint
    image = _image(40, 56, seed=2)
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1].copy())
    infer_net.main(["--weights", str(path), "--input", str(tmp_path / "a.png"),
                    "--output", str(tmp_path / "out")])  # fmt: skip
    assert f"class names: metadata stored in {path}" in capsys.readouterr().out
    record = _check_outputs(tmp_path / "out", "a", (40, 56), list(NAMES["class_names"]))
    segments = record["segments_info"]
    assert {s["category_id"] for s in segments if s["isthing"]} <= {1, 2}
    # things are instances: panoptic label = class * 1000 + instance (>= 1)
    assert [s for s in segments if s["isthing"] and s["label"] % 1000 >= 1]
    # the stored weights were loaded (a fresh random init would segment differently)
    post = PostProcessing.from_config(cfg)
    expected = Predictor(model, metadata=NAMES, postprocessing=post).predict(image)
    assert segments == json.loads(json.dumps(expected["segments_info"]))


def test_class_names_and_config_file_win_over_the_checkpoint(tmp_path, random_checkpoint, capsys):
    path, _, cfg = random_checkpoint
    cv2.imwrite(str(tmp_path / "a.png"), _image(40, 56, seed=2)[..., ::-1].copy())
    (tmp_path / "names.txt").write_text("water\nboat\nswimmer\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(cfg.dump().replace("STUFF_AREA: 1\n", "STUFF_AREA: 2\n"))
    infer_net.main(["--config-file", str(explicit), "--weights", str(path), "--thing-ids", "1",
                    "--input", str(tmp_path / "a.png"), "--class-names", str(tmp_path / "names.txt"),
                    "--output", str(tmp_path / "out")])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"--config-file {explicit} is used, not the config stored in {path}" in printed
    assert "differ in 1 keys: MODEL.PANOPTIC_DEEPLAB.STUFF_AREA: stored 1, used 2" in printed
    assert f"class names: {tmp_path / 'names.txt'}" in printed
    record = _check_outputs(tmp_path / "out", "a", (40, 56), ["water", "boat", "swimmer"])
    # --thing-ids 1, not the stored (1, 2): class 2, which this model predicts, is stuff now
    assert any(s["category_id"] == 2 for s in record["segments_info"])
    assert all(s["isthing"] == int(s["category_id"] == 1) for s in record["segments_info"])


def test_text_class_names_keep_the_stored_things(tmp_path, random_checkpoint, capsys):
    # An audit renamed classes with a text file and got every thing class as stuff (instances
    # merged), without a word: the checkpoint's thing ids now stay, and say so.
    path, _, _ = random_checkpoint
    cv2.imwrite(str(tmp_path / "a.png"), _image(40, 56, seed=2)[..., ::-1].copy())
    (tmp_path / "names.txt").write_text("water\nboat\nswimmer\n")
    infer_net.main(["--weights", str(path), "--input", str(tmp_path / "a.png"),
                    "--class-names", str(tmp_path / "names.txt"), "--output", str(tmp_path / "out")])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"thing classes: 1 (boat), 2 (swimmer), as stored in {path}" in printed
    record = _check_outputs(tmp_path / "out", "a", (40, 56), ["water", "boat", "swimmer"])
    assert {s["isthing"] for s in record["segments_info"] if s["category_id"] == 2} == {1}
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")  # another count: nothing to keep
    args = infer_net.parse_args(["--weights", str(path), "--input", "x", "--output", "o",
                                 "--class-names", str(tmp_path / "four.txt")])  # fmt: skip
    stored = {"class_names": ["water", "boat", "swimmer"], "thing_ids": [1, 2]}
    metadata, _ = class_names.choose_metadata(args, None, stored)
    assert metadata.thing_ids == ()
    assert "names the classes but not which are things" in capsys.readouterr().out


def test_checkpoint_without_config_needs_a_config_file(tmp_path, capsys):
    torch.save({"w": torch.zeros(1)}, tmp_path / "bare.pth")
    cv2.imwrite(str(tmp_path / "x.png"), _image(40, 56, seed=2))  # inputs are checked first
    argv = ["--weights", str(tmp_path / "bare.pth"), "--input", str(tmp_path / "x.png"),
            "--output", str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(SystemExit, match=r"bare.pth carries no config: pass --config-file"):
        infer_net.main(argv)
    # KEY VALUE overrides of the defaults may describe the model instead (a notice says so)
    args = infer_net.parse_args([*argv, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    assert predictor_setup.read_checkpoint_info(args) == (None, None)
    assert "the defaults with your KEY VALUE overrides" in capsys.readouterr().out
    save_atomic({"model": {}, "config": "MODEL:\n  NO_SUCH_KEY: 1\n"}, tmp_path / "odd.pth")
    argv[1] = str(tmp_path / "odd.pth")
    with pytest.raises(SystemExit, match=r"odd.pth: the config stored in it does not load"):
        infer_net.main(argv)
