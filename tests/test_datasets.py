"""Readers, catalog and validation on the real samples in ../shared/data and on broken copies."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sample_data import require

from axial_deeplab.config import get_cfg
from axial_deeplab.data.build import build_catalog, load_datasets
from axial_deeplab.data.catalog import DatasetCatalog, builtin_catalog, dataset_root
from axial_deeplab.data.check import validate_dataset
from axial_deeplab.data.cityscapes_panoptic import CITYSCAPES_CLASSES, load_cityscapes_panoptic
from axial_deeplab.data.coco_panoptic import load_coco_panoptic
from axial_deeplab.data.dataset import PanopticDataset
from axial_deeplab.data.panoptic_io import read_panoptic_png, write_panoptic_png
from axial_deeplab.data.validation import DatasetFormatError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = DATA / "coco_panoptic_sample"
CITY = DATA / "cityscapes_panoptic_sample"
CITY_JSON = "gtFine/cityscapes_panoptic_dummy_trainId.json"
CITY_PNG = "gtFine/cityscapes_panoptic_dummy_trainId"


@pytest.fixture(scope="module", autouse=True)
def _sample_present():
    require(DATA)


def coco_copy(tmp_path: Path) -> Path:
    """A writable copy of the COCO sample with the image list merged into the JSON."""
    root = tmp_path / "coco"
    shutil.copytree(COCO, root)
    return root


def load_coco(root: Path, **kwargs):
    return load_coco_panoptic(
        str(root / "panoptic_examples.json"), str(root / "panoptic"), str(root / "images"), **kwargs
    )


def load_city(root: Path, **kwargs):
    return load_cityscapes_panoptic(
        str(root / "leftImg8bit"), str(root / CITY_PNG), str(root / CITY_JSON), **kwargs
    )


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- real samples
def test_coco_sample_reads_and_validates():
    records, meta = load_coco(COCO)
    # Facts from the sample's README and JSON: 2 images, 18 and 32 segments, 133 categories.
    assert [len(r["segments_info"]) for r in records] == [18, 32]
    assert meta.num_classes == 133
    assert (records[0]["height"], records[0]["width"]) == (427, 640)
    assert records[0]["file_name"].endswith("000000142238.jpg")
    # Train id = position in the JSON's categories: person (id 1) is 0, the last (id 200) 132.
    assert meta.dataset_id_to_train_id[1] == 0 and meta.dataset_id_to_train_id[200] == 132
    seg = records[0]["segments_info"][0]
    assert (seg["id"], seg["dataset_category_id"], seg["category_id"]) == (3937500, 1, 0)
    assert len(meta.thing_train_ids) == 80 and len(meta.stuff_train_ids) == 53  # COCO panoptic
    assert validate_dataset(records, meta).ok


def test_cityscapes_sample_reads_and_validates():
    records, meta = load_city(CITY)  # "_trainId" in the JSON name -> category ids are train ids
    assert meta.extra["use_train_id"] is True
    (rec,) = records
    assert rec["image_id"] == "dummy_000000_000000"
    by_id = {s["id"]: s for s in rec["segments_info"]}
    assert len(by_id) == 10  # the sample's README: 10 segments, one crowd region (id 26, car)
    assert by_id[26]["iscrowd"] == 1 and by_id[26]["category_id"] == 13
    assert by_id[26]["isthing"] == 1 and meta.class_names[13] == "car"
    assert by_id[7]["category_id"] == 0 and by_id[7]["isthing"] == 0  # road, stuff
    assert validate_dataset(records, meta).ok


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    """The same scene with label-id category ids (createPanopticImgs without --use-train-id)."""
    root = tmp_path / "city"
    shutil.copytree(CITY, root)
    # train id -> label id from the Cityscapes table: 13 car -> 26, 8 -> 21, 10 -> 23, 2 -> 11, 0 -> 7
    to_label = {train: label for _, label, train, _, _ in CITYSCAPES_CLASSES}
    edit_json(
        root / CITY_JSON,
        lambda d: [
            s.update(category_id=to_label[s["category_id"]])
            for a in d["annotations"]
            for s in a["segments_info"]
        ],
    )
    records, meta = load_city(root, use_train_id=False)
    trained = {s["id"]: s["category_id"] for s in records[0]["segments_info"]}
    original, _ = load_city(CITY)
    assert trained == {s["id"]: s["category_id"] for s in original[0]["segments_info"]}


def test_cityscapes_table_matches_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    official = {
        (lb.name, lb.id, lb.trainId, int(lb.hasInstances), tuple(lb.color))
        for lb in labels.labels
        if not lb.ignoreInEval
    }
    assert set(CITYSCAPES_CLASSES) == official


# ----------------------------------------------------------------------------- broken copies
def test_category_without_isthing(tmp_path):
    root = coco_copy(tmp_path)
    edit_json(root / "panoptic_examples.json", lambda d: d["categories"][5].pop("isthing"))
    with pytest.raises(
        DatasetFormatError, match=r"panoptic_examples\.json.*category id 6.*isthing"
    ):
        load_coco(root)


def test_duplicate_category_id(tmp_path):
    root = coco_copy(tmp_path)
    edit_json(root / "panoptic_examples.json", lambda d: d["categories"][3].update(id=1))
    with pytest.raises(
        DatasetFormatError, match=r"panoptic_examples\.json.*duplicate category id 1"
    ):
        load_coco(root)


def test_duplicate_category_name(tmp_path):
    root = coco_copy(tmp_path)
    edit_json(root / "panoptic_examples.json", lambda d: d["categories"][3].update(name="person"))
    with pytest.raises(
        DatasetFormatError, match=r"category name 'person' is used by ids 1 and \d+; names must"
    ):
        load_coco(root)


def test_unknown_category_id(tmp_path):
    root = coco_copy(tmp_path)
    edit_json(
        root / "panoptic_examples.json",
        lambda d: d["annotations"][0]["segments_info"][0].update(category_id=999),
    )
    with pytest.raises(DatasetFormatError, match=r"000000142238\.png.*3937500.*category_id 999"):
        load_coco(root)


def test_unknown_cityscapes_label_id(tmp_path):
    root = tmp_path / "city"
    shutil.copytree(CITY, root)
    edit_json(
        root / CITY_JSON, lambda d: d["annotations"][0]["segments_info"][0].update(category_id=42)
    )
    with pytest.raises(DatasetFormatError, match=r"dummy_000000_000000_gtFine_panoptic.*26000.*42"):
        load_city(root)


def test_segment_in_png_but_not_listed(tmp_path):
    root = coco_copy(tmp_path)
    edit_json(
        root / "panoptic_examples.json", lambda d: d["annotations"][1]["segments_info"].pop(0)
    )
    records, meta = load_coco(root)
    dropped_id = json.loads((COCO / "panoptic_examples.json").read_text())["annotations"][1][
        "segments_info"
    ][0]["id"]
    report = validate_dataset(records, meta)
    (problem,) = report.problems
    assert problem.file.endswith("000000439180.png") and str(dropped_id) in problem.message
    assert "not in segments_info" in str(report)
    dataset = PanopticDataset(records, metadata=meta)
    with pytest.raises(DatasetFormatError, match=rf"000000439180\.png.*{dropped_id}.*not in"):
        dataset[1]


def test_listed_segment_absent_from_png(tmp_path):
    root = tmp_path / "city"
    shutil.copytree(CITY, root)
    extra = {"id": 13005, "category_id": 13, "iscrowd": 0, "area": 1}
    edit_json(root / CITY_JSON, lambda d: d["annotations"][0]["segments_info"].append(extra))
    records, meta = load_city(root)
    (problem,) = validate_dataset(records, meta).problems
    assert "13005" in problem.message and "absent from the PNG" in problem.message
    assert problem.file.endswith("dummy_000000_000000_gtFine_panoptic.png")
    with pytest.raises(DatasetFormatError, match=r"gtFine_panoptic\.png.*13005.*absent"):
        PanopticDataset(records, metadata=meta)[0]


def test_image_png_size_mismatch(tmp_path):
    root = coco_copy(tmp_path)
    png = root / "panoptic" / "000000142238.png"
    write_panoptic_png(png, read_panoptic_png(png)[:400])  # 427 -> 400 rows
    records, meta = load_coco(root)
    problems = validate_dataset(records, meta).problems
    assert any(
        p.file == str(png) and p.image_id == 142238 and "(400, 640)" in p.message for p in problems
    )
    with pytest.raises(DatasetFormatError, match=r"000000142238\.png.*\(400, 640\).*\(427, 640\)"):
        PanopticDataset(records, metadata=meta)[0]


def test_missing_files(tmp_path):
    root = coco_copy(tmp_path)
    (root / "images" / "000000439180.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_id 439180.*000000439180\.jpg"):
        load_coco(root)
    (root / "panoptic" / "000000142238.png").unlink()
    records, meta = load_coco(root, check_files=False)
    report = validate_dataset(records, meta)  # both problems listed, one per file
    assert sorted(Path(p.file).name for p in report.problems) == [
        "000000142238.png",
        "000000439180.jpg",
    ]
    assert all("not found" in p.message for p in report.problems)


def test_cityscapes_image_missing_for_annotation(tmp_path):
    root = tmp_path / "city"
    shutil.copytree(CITY, root)
    edit_json(
        root / CITY_JSON, lambda d: d["annotations"][0].update(image_id="aachen_000001_000019")
    )
    with pytest.raises(DatasetFormatError, match=r"trainId\.json.*aachen_000001_000019"):
        load_city(root)


# ----------------------------------------------------------------------------- catalog
def test_catalog_register_get_and_errors():
    catalog = DatasetCatalog()
    catalog.register_coco_panoptic(
        "sample",
        json_file=str(COCO / "panoptic_examples.json"),
        png_dir=str(COCO / "panoptic"),
        image_dir=str(COCO / "images"),
    )
    records, meta = catalog.get("sample")
    assert len(records) == 2 and meta.name == "sample"
    with pytest.raises(ValueError, match="already registered"):
        catalog.register("sample", lambda: ([], None))
    with pytest.raises(KeyError, match=r"'nope' is not registered.*sample"):
        catalog.get("nope")


def test_classes_without_colours_get_none_black():
    """Black marks void in every picture: a class given no colour must not be drawn black (the
    first class was, (37 i, 91 i, 173 i) mod 256 at i = 0)."""
    from axial_deeplab.data.coco_panoptic import coco_metadata

    categories = [{"id": 101 + i, "name": f"c{i}", "isthing": i % 2} for i in range(200)]
    colors = [c["color"] for c in coco_metadata(categories, name="x", source="x").categories]
    assert (0, 0, 0) not in colors and len(set(colors)) == len(colors)


def test_missing_relative_json_names_the_folder_it_was_looked_for_from(tmp_path, monkeypatch):
    """A config's relative data paths resolve from the current folder: the error says which."""
    from axial_deeplab.data.records import read_json

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        read_json("data/panoptic_val.json")
    assert str(missing.value) == (
        f"panoptic JSON not found: data/panoptic_val.json (a relative path: from {tmp_path})"
    )
    with pytest.raises(FileNotFoundError, match=r"not found: /nowhere/p.json$"):
        read_json("/nowhere/p.json")


def test_empty_data_set_is_refused(tmp_path):
    """An annotation file listing no image: an error naming it, not a PQ of 0 (evaluation) or
    an error about sampling (training)."""
    data = json.loads((COCO / "panoptic_examples.json").read_text())
    data["annotations"], data["images"] = [], []
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(data))
    catalog = DatasetCatalog()
    catalog.register_coco_panoptic(
        "empty",
        json_file=str(empty),
        png_dir=str(COCO / "panoptic"),
        image_dir=str(COCO / "images"),
    )
    with pytest.raises(ValueError, match=r"data set 'empty' is empty \(.*empty.json lists no"):
        load_datasets(catalog, ["empty"])


def test_builtin_catalog_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert dataset_root() == str(tmp_path)
    catalog = builtin_catalog()
    assert {
        "coco_2017_train_panoptic",
        "coco_2017_val_panoptic",
        "cityscapes_fine_panoptic_train",
        "cityscapes_fine_panoptic_val",
    } <= set(catalog.names())
    expected = tmp_path / "coco" / "annotations" / "panoptic_val2017.json"
    with pytest.raises(FileNotFoundError, match=str(expected)):
        catalog.get("coco_2017_val_panoptic")


def test_custom_datasets_from_config():
    cfg = get_cfg()
    entry = {
        "NAME": "my_coco",
        "JSON_FILE": str(COCO / "panoptic_examples.json"),
        "PNG_DIR": str(COCO / "panoptic"),
        "IMAGE_DIR": str(COCO / "images"),
    }
    city = {
        "NAME": "my_city",
        "FORMAT": "cityscapes_panoptic",
        "JSON_FILE": str(CITY / CITY_JSON),
        "PNG_DIR": str(CITY / CITY_PNG),
        "IMAGE_DIR": str(CITY / "leftImg8bit"),
    }
    cfg.merge_from_list(["DATASETS.CUSTOM", repr([entry, city])])
    catalog = build_catalog(cfg)
    records, meta = load_datasets(catalog, ["my_coco", "my_coco"], full_validation=True)
    assert len(records) == 4 and meta.num_classes == 133
    with pytest.raises(ValueError, match="number their classes differently: 133 against"):
        load_datasets(catalog, ["my_coco", "my_city"])
    bad = get_cfg()
    bad.merge_from_list(["DATASETS.CUSTOM", repr([{"NAME": "x", "JSON_FILE": "j"}])])
    with pytest.raises(ValueError, match=r"CUSTOM\[0\].*PNG_DIR"):
        build_catalog(bad)


def test_sample_panoptic_matches_png():
    records, meta = load_city(CITY)
    sample = PanopticDataset(records, metadata=meta)[0]
    png = read_panoptic_png(CITY / CITY_PNG / "dummy_000000_000000_gtFine_panoptic.png")
    assert np.array_equal(sample["panoptic"].numpy(), png)
    assert (
        sample["image"].shape == (3, 800, 800) and sample["image"].dtype.is_floating_point is False
    )


def test_reader_agrees_with_cityscapesscripts_output(tmp_path):
    """Turn the sample into a gtFine instanceIds map, run cityscapesscripts' createPanopticImgs
    (through datasets/prepare_cityscapes_panoptic.py) and read its label-id output back: same
    segments, same train ids, same crowd flag as the sample's own trainId JSON."""
    pytest.importorskip("cityscapesscripts")
    import cv2

    script = Path(__file__).resolve().parents[1] / "datasets" / "prepare_cityscapes_panoptic.py"
    spec = importlib.util.spec_from_file_location("prepare_cityscapes_panoptic", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a script, not a package module ("datasets" is a PyPI name)
    prepare = module.main

    ids = read_panoptic_png(CITY / CITY_PNG / "dummy_000000_000000_gtFine_panoptic.png")
    city = tmp_path / "cityscapes"
    (city / "gtFine" / "val" / "dummy").mkdir(parents=True)
    (city / "leftImg8bit" / "val" / "dummy").mkdir(parents=True)
    # instanceIds: label id * 1000 + k for instances, label id for stuff and crowd (uint16)
    cv2.imwrite(
        str(city / "gtFine/val/dummy/dummy_000000_000000_gtFine_instanceIds.png"),
        ids.astype(np.uint16),
    )
    shutil.copy(
        CITY / "leftImg8bit" / "dummy_000000_000000_leftImg8bit.png",
        city / "leftImg8bit/val/dummy/dummy_000000_000000_leftImg8bit.png",
    )
    prepare(["--root", str(tmp_path), "--splits", "val"])
    records, meta = builtin_catalog(str(tmp_path)).get("cityscapes_fine_panoptic_val")
    assert meta.extra["use_train_id"] is False and validate_dataset(records, meta).ok
    ours = {s["id"]: (s["category_id"], s["iscrowd"]) for s in records[0]["segments_info"]}
    sample, _ = load_city(CITY)
    assert ours == {s["id"]: (s["category_id"], s["iscrowd"]) for s in sample[0]["segments_info"]}


def test_builtin_cityscapes_skips_an_unfinished_conversion(tmp_path):
    """A conversion stopped half-way leaves the label-id PNG folder without its JSON (written
    last); the complete train-id variant beside it is the one read."""
    gt = tmp_path / "cityscapes" / "gtFine"
    (gt / "cityscapes_panoptic_val").mkdir(parents=True)  # partial: PNGs, no JSON
    (gt / "cityscapes_panoptic_val_trainId").mkdir()
    (gt / "cityscapes_panoptic_val_trainId.json").write_text("{}")
    catalog = builtin_catalog(str(tmp_path))
    with pytest.raises(Exception, match="cityscapes_panoptic_val_trainId"):
        catalog.get("cityscapes_fine_panoptic_val")  # the complete pair is the one opened


def test_guessed_image_name_and_unannotated_images_are_said(tmp_path, capsys):
    """Without an 'images' entry the image is taken to be the PNG's name with .jpg (COCO): a
    missing file says so. Images listed without annotation are left out with a note."""
    root = coco_copy(tmp_path)
    (root / "images" / "000000439180.jpg").rename(root / "images" / "000000439180.png")
    edit_json(root / "panoptic_examples.json", lambda d: d.pop("images"))
    with pytest.raises(FileNotFoundError, match=r"000000439180\.jpg \(the JSON's 'images' list"):
        load_coco(root)
    root = coco_copy(tmp_path / "again")
    edit_json(root / "panoptic_examples.json", lambda d: d["annotations"].pop())
    records, _ = load_coco(root)
    assert len(records) == 1
    assert (
        "1 image(s) of its 'images' list have no entry in 'annotations'" in capsys.readouterr().out
    )
