"""Synthetic scenes: determinism, geometry, learnability cues, and round trips through the readers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from axial_deeplab.data.catalog import DatasetCatalog, builtin_catalog
from axial_deeplab.data.check import validate_dataset
from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.data.synthetic import SYNTHETIC_CLASSES, shape_mask, synthetic_scene
from axial_deeplab.data.synthetic_writer import (
    panoptic_ids,
    register_synthetic,
    scene_seed,
    write_synthetic_dataset,
)
from axial_deeplab.utils.cli import DEBUG_ENV


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(str(out), splits={"train": 6, "val": 2}, height=48, width=64, seed=0)
    return out


def test_same_seed_same_bytes_different_seed_differs(written, tmp_path):
    write_synthetic_dataset(str(tmp_path / "a"), splits={"train": 6, "val": 2}, height=48,
                            width=64, seed=0)  # fmt: skip
    write_synthetic_dataset(str(tmp_path / "b"), splits={"train": 6, "val": 2}, height=48,
                            width=64, seed=1)  # fmt: skip
    same, other = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    assert same == file_bytes(written)
    assert same.keys() == other.keys()  # same file names (4 files per image + 2 JSON per split)...
    assert len(same) == 8 * 4 + 4
    changed = [k for k in same if k.endswith(".png") and same[k] != other[k]]
    assert len(changed) == 8 * 4  # ...but every image and PNG differs


def test_shape_areas_match_geometry():
    r = 20.0  # areas in pixels vs the continuous shapes, within 3 %
    assert shape_mask("disc", 45, r, 0.3).sum() == pytest.approx(np.pi * r**2, rel=0.03)
    assert shape_mask("square", 45, r, 0.3).sum() == pytest.approx((1.7 * r) ** 2, rel=0.03)
    # equilateral triangle with circumradius r: area 3 sqrt(3) / 4 r^2
    assert shape_mask("triangle", 45, r, 0.3).sum() == pytest.approx(
        3 * np.sqrt(3) / 4 * r**2, rel=0.03
    )


def test_scenes_have_learnable_cues():
    crowd_seen, touching = 0, 0
    for seed in range(20):
        scene = synthetic_scene(np.random.default_rng(seed), 96, 128)
        classes = [SYNTHETIC_CLASSES[c] for c in scene.classes]
        assert sum(1 for c in classes if not c[1]) >= 2  # sky and ground always
        crowd_seen += sum(scene.crowd)
        for s, cls in enumerate(scene.classes, start=1):
            mask = scene.segments == s
            assert mask.any()  # every listed segment is visible
            interior = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if SYNTHETIC_CLASSES[cls][1] and interior.sum() >= 5:
                # things: the mean colour inside the rim is nearest to the own class colour
                mean = scene.image[interior].mean(axis=0)
                dist = [np.abs(mean - np.array(c[4])).sum() for c in SYNTHETIC_CLASSES]
                assert int(np.argmin(dist)) == cls, (seed, s, mean)
        things = [s for s, c in enumerate(scene.classes, 1) if SYNTHETIC_CLASSES[c][1]]
        touching += any(  # two instances sharing a 4-neighbour border
            np.any((scene.segments[:, :-1] == a) & (scene.segments[:, 1:] == b))
            for a in things
            for b in things
            if a != b
        )
    assert crowd_seen >= 2  # crowd_prob 0.3 over 20 scenes
    assert touching >= 3  # some instances touch or occlude


def test_round_trip_through_both_readers(written):
    catalog = DatasetCatalog()
    register_synthetic(catalog, str(written))
    for name in catalog.names():
        records, meta = catalog.get(name)
        assert validate_dataset(records, meta).ok, name
    records, meta = catalog.get("synthetic_coco_train")
    assert meta.class_names == tuple(c[0] for c in SYNTHETIC_CLASSES)
    assert meta.thing_train_ids == (0, 1, 2)
    # The PNG of scene 3 decodes back to the generated scene's segment map and classes.
    scene = synthetic_scene(np.random.default_rng(scene_seed(0, 0, 3)), 48, 64)
    ids, _ = panoptic_ids(scene, [c[2] for c in SYNTHETIC_CLASSES])
    assert np.array_equal(read_panoptic_png(records[3]["pan_seg_file_name"]), ids)
    assert [s["category_id"] for s in records[3]["segments_info"]] == scene.classes
    # Cityscapes format: detectron2 layout, label ids of the stand-in classes.
    city, city_meta = builtin_catalog(str(written)).get("cityscapes_fine_panoptic_train")
    assert [r["image_id"] for r in city][:2] == ["synth_000000_000019", "synth_000001_000019"]
    names = [city_meta.class_names[s["category_id"]] for s in city[3]["segments_info"]]
    stand_in = {"disc": "person", "square": "car", "triangle": "truck", "sky": "sky",
                "ground": "road", "wall": "building"}  # fmt: skip
    assert names == [stand_in[SYNTHETIC_CLASSES[c][0]] for c in scene.classes]


def test_cli_writes_both_formats(tmp_path):
    from tools.generate_synthetic import main

    main(["--out", str(tmp_path), "--train", "1", "--val", "1", "--height", "32", "--width", "32"])
    assert (tmp_path / "coco" / "panoptic_train.json").is_file()
    assert (tmp_path / "cityscapes" / "gtFine" / "cityscapes_panoptic_val.json").is_file()


def test_cli_refuses_bad_arguments_before_writing(tmp_path, capsys, monkeypatch):
    from tools.generate_synthetic import main

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out, said in ((a_file, "is"), (a_file / "sub", f"lies under {a_file}, which is")):
        with pytest.raises(SystemExit) as info:  # was NotADirectoryError with a traceback
            main(["--out", str(out), "--train", "1", "--val", "1"])
        assert info.value.code == f"error: --out {out} {said} a file; --out must be a folder"
    new = tmp_path / "new"
    for flag, value, minimum in (("--train", "-2", 0), ("--val", "-1", 0), ("--height", "10", 16)):
        with pytest.raises(SystemExit) as info:  # -2 wrote an empty split, 10 raised ValueError
            main(["--out", str(new), flag, value])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: expected an integer >= {minimum}, got '{value}'" in err
    assert not new.exists()
    with pytest.raises(ValueError, match=r"splits: image counts must be >= 0, got \{'train': -2\}"):
        write_synthetic_dataset(str(new), splits={"train": -2})
    assert not new.exists()
