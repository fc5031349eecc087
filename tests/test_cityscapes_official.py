"""cityscapesscripts' own instance-, pixel- and panoptic-level evaluations on our saved predictions,
on the real Cityscapes-format sample in ../shared/data (one 800x800 street scene, 5 cars + a car
crowd): predictions equal to the ground truth, and perturbed ones with hand-worked expectations or
compared with our evaluators where the metrics are the same (PQ, IoU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip(
    "cityscapesscripts",
    reason="cityscapesscripts not installed (pip install cityscapesscripts): the official "
    "Cityscapes evaluations cannot run",
)

from sample_data import require  # noqa: E402

from axial_deeplab.data.panoptic_io import read_panoptic_png, write_panoptic_png  # noqa: E402
from axial_deeplab.evaluation.cityscapes_official import (  # noqa: E402
    CityscapesEvaluationError,
    cityscapes_id_maps,
    evaluate_instances_official,
    run_cityscapes_official,
)
from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files  # noqa: E402
from axial_deeplab.evaluation.semantic import SemanticEvaluator  # noqa: E402
from axial_deeplab.evaluation.synthetic import synthetic_prediction  # noqa: E402
from axial_deeplab.evaluation.writers import (  # noqa: E402
    write_cityscapes_instances,
    write_cityscapes_semantic,
)

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = SAMPLE / "cityscapes_panoptic_sample" / "gtFine"
STEM = "dummy_000000_000000"
CAR = 26  # Cityscapes label id (train id 13)


@pytest.fixture(scope="module", autouse=True)
def _sample_present():
    require(SAMPLE)


@pytest.fixture(scope="module")
def sample():
    """``(ids [H, W], segments_info with train ids, train id -> label id, categories)``."""
    from cityscapesscripts.helpers.labels import labels

    ann = json.loads((SAMPLE / "cityscapes_panoptic_dummy_trainId.json").read_text())
    ann = ann["annotations"][0]
    ids = read_panoptic_png(SAMPLE / "cityscapes_panoptic_dummy_trainId" / ann["file_name"])
    train = [lab for lab in labels if 0 <= lab.trainId < 255]
    categories = [
        {"id": lab.trainId, "name": lab.name, "isthing": int(lab.hasInstances)} for lab in train
    ]
    return ids, ann["segments_info"], {lab.trainId: lab.id for lab in train}, categories


def _write_gt(root: Path, ids, segments, train_to_label) -> Path:
    """``gtFine/dummy/<stem>_gtFine_{labelIds,instanceIds}.png`` as the official scripts read."""
    folder = root / "gtFine" / "dummy"
    folder.mkdir(parents=True, exist_ok=True)
    label_ids, instance_ids = cityscapes_id_maps(ids, segments, train_to_label)
    cv2.imwrite(str(folder / f"{STEM}_gtFine_labelIds.png"), label_ids)
    cv2.imwrite(str(folder / f"{STEM}_gtFine_instanceIds.png"), instance_ids)
    return root / "gtFine"


def _cars(ids, segments) -> list[np.ndarray]:
    """Masks of the 5 non-crowd cars, in segments_info order (958 px first)."""
    return [ids == s["id"] for s in segments if s["category_id"] == 13 and not s["iscrowd"]]


def test_id_maps_follow_the_cityscapes_encoding(sample):
    ids, segments, train_to_label, _ = sample
    label_ids, instance_ids = cityscapes_id_maps(ids, segments, train_to_label)
    # Cars: 26000..26004 in list order; the car crowd (segment id 26) and stuff keep the label
    # id (car 26, road 7, sky 23, ...); VOID stays 0.
    assert sorted(np.unique(instance_ids[instance_ids >= 1000]).tolist()) == list(
        range(26000, 26005)
    )
    crowd = ids == 26
    assert (instance_ids[crowd] == CAR).all() and (label_ids[crowd] == CAR).all()
    assert (label_ids[ids == 7] == 7).all() and (label_ids[ids == 23] == 23).all()
    assert (label_ids[ids == 0] == 0).all() and (instance_ids[ids == 0] == 0).all()


def test_instance_ap_of_the_ground_truth_is_one(sample, tmp_path):
    ids, segments, train_to_label, _ = sample
    gt_dir = _write_gt(tmp_path, ids, segments, train_to_label)
    cars = _cars(ids, segments)
    write_cityscapes_instances(
        str(tmp_path / "inst"), STEM, np.stack(cars), np.full(5, CAR), np.linspace(0.5, 1, 5)
    )
    result = run_cityscapes_official(str(gt_dir), instance_dir=str(tmp_path / "inst"))
    inst = result["instance"]
    # Every car found with IoU 1 at every threshold: AP = AP50 = 1 (to rounding: the script
    # integrates with a convolution). The 7 other thing classes (person, ..., bicycle) have no
    # ground truth: NaN, left out of the mean.
    one = pytest.approx(1.0, abs=1e-12)
    assert inst["AP"] == one and inst["AP50"] == one
    assert inst["per_class"]["car"] == {"AP": one, "AP50": one}
    others = [v for name, v in inst["per_class"].items() if name != "car"]
    assert len(others) == 7 and all(np.isnan(v["AP"]) for v in others)


def test_instance_ap_with_a_missed_car_and_a_low_scored_false_positive(sample, tmp_path):
    ids, segments, train_to_label, _ = sample
    gt_dir = _write_gt(tmp_path, ids, segments, train_to_label)
    cars = _cars(ids, segments)
    sky = ids == 23
    # Cars 2..5 found exactly (score 0.9), car 1 (958 px) missed, and the sky predicted as a car
    # (score 0.5: on no car, no crowd, no VOID -> a false positive). Ranked by score, the 4 true
    # positives come first: precision 1 up to recall 4/5, then the false positive; the
    # Cityscapes step integration gives AP = 1 * 4/5 at every IoU threshold 0.5..0.95, so
    # AP = AP50 = 0.8. (Scored above the true positives, the false positive would cost more.)
    write_cityscapes_instances(
        str(tmp_path / "inst"), STEM, np.stack(cars[1:] + [sky]), np.full(5, CAR),
        np.array([0.9, 0.9, 0.9, 0.9, 0.5]),
    )  # fmt: skip
    result = run_cityscapes_official(str(gt_dir), instance_dir=str(tmp_path / "inst"))["instance"]
    assert result["per_class"]["car"]["AP"] == pytest.approx(0.8, abs=1e-12)
    assert result["per_class"]["car"]["AP50"] == pytest.approx(0.8, abs=1e-12)
    assert result["AP"] == pytest.approx(0.8, abs=1e-12)


def _train_ids(ids, segments) -> np.ndarray:
    """Semantic train-id map of the panoptic sample; VOID -> 255 (ignored)."""
    out = np.full(ids.shape, 255, dtype=np.int64)
    for seg in segments:
        out[ids == seg["id"]] = seg["category_id"]
    return out


def test_pixel_level_iou_equals_ours_on_a_shifted_prediction(sample, tmp_path):
    ids, segments, train_to_label, categories = sample
    gt_dir = _write_gt(tmp_path, ids, segments, train_to_label)
    gt_train = _train_ids(ids, segments)
    pred_train = np.roll(gt_train, (9, -14), axis=(0, 1))  # every boundary off by a few pixels
    pred_train[pred_train == 255] = 0  # a prediction labels every pixel (road here)
    pred_train[:50, :50] = 5  # and a pole that is not there
    (tmp_path / "sem").mkdir()
    write_cityscapes_semantic(str(tmp_path / "sem" / f"{STEM}.png"), pred_train, train_to_label)
    official = run_cityscapes_official(str(gt_dir), semantic_dir=str(tmp_path / "sem"))
    official = official["semantic"]
    ours = SemanticEvaluator(19, class_names=[c["name"] for c in categories])
    ours.process(gt_train, pred_train)
    ours = ours.evaluate()
    assert 0.3 < official["mIoU"] < 0.95  # a real test: imperfect, not empty
    assert official["mIoU"] == pytest.approx(ours["mIoU"], abs=1e-12)
    for name, iou in ours["per_class"].items():
        assert official["per_class"][name] == pytest.approx(iou, abs=1e-12, nan_ok=True), name


def test_all_three_official_evaluations_of_the_ground_truth(sample, tmp_path):
    ids, segments, train_to_label, categories = sample
    gt_dir = _write_gt(tmp_path, ids, segments, train_to_label)
    (tmp_path / "sem").mkdir()
    write_cityscapes_semantic(
        str(tmp_path / "sem" / f"{STEM}.png"), _train_ids(ids, segments) % 255, train_to_label
    )  # VOID predicted as road: VOID is not scored
    write_cityscapes_instances(
        str(tmp_path / "inst"), STEM, np.stack(_cars(ids, segments)), np.full(5, CAR), np.ones(5)
    )
    panoptic = _write_panoptic(tmp_path, ids, segments, ids, segments, categories)
    result = run_cityscapes_official(
        str(gt_dir), semantic_dir=str(tmp_path / "sem"), instance_dir=str(tmp_path / "inst"),
        panoptic=panoptic,
    )  # fmt: skip
    assert result["semantic"]["mIoU"] == 1.0 and result["semantic"]["iIoU"] == 1.0
    assert result["instance"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert result["panoptic"]["All"]["pq"] == 1.0 and result["panoptic"]["All"]["n"] == 5


def _write_panoptic(root: Path, gt, gt_segments, pred, pred_segments, categories):
    """COCO-format gt and prediction files; returns (gt json, gt dir, pred json, pred dir)."""
    paths = []
    for name, ids, segs in (("pan_gt", gt, gt_segments), ("pan_pred", pred, pred_segments)):
        (root / name).mkdir()
        write_panoptic_png(root / name / f"{STEM}.png", ids)
        ann = {"image_id": STEM, "file_name": f"{STEM}.png", "segments_info": segs}
        json_path = root / f"{name}.json"
        json_path.write_text(json.dumps({"annotations": [ann], "categories": categories}))
        paths += [str(json_path), str(root / name)]
    return tuple(paths)


def test_official_panoptic_equals_ours_on_a_perturbed_prediction(sample, tmp_path):
    ids, segments, _, categories = sample
    rng = np.random.default_rng(1)
    pred, pred_segments = synthetic_prediction(rng, categories, ids, segments)
    files = _write_panoptic(tmp_path, ids, segments, pred, pred_segments, categories)
    official = run_cityscapes_official(str(tmp_path), panoptic=files)["panoptic"]
    ours = evaluate_panoptic_files(*files[:2], *files[2:], workers=1, progress=False)
    assert 0.1 < official["All"]["pq"] < 0.9
    for group in ("All", "Things", "Stuff"):
        assert official[group]["n"] == ours[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert official[group][key] == pytest.approx(ours[group][key], abs=1e-12)


def test_no_environment_or_global_state_leaks(sample, tmp_path, monkeypatch):
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as script

    ids, segments, train_to_label, _ = sample
    # Variables pointing elsewhere are not read; the script's own args and cache stay untouched;
    # nothing is written to the working folder (the script writes matches.json there).
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(tmp_path / "nowhere"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = dict(vars(script.args))
    first_car = next(s["id"] for s in segments if s["category_id"] == 13 and not s["iscrowd"])
    for round in range(2):
        # Round 2 rewrites the gt files in place without the first car (now road; the others
        # renumbered 26000..26003) and predicts the 4 others: AP 1 again. With the instances
        # of round 1 still cached (the script keeps them in a JSON file that it reuses when
        # present) the gt would not match its image: AP 0.395 (checked by forcing the reuse).
        if round == 1:
            ids = np.where(ids == first_car, 7, ids)
            segments = [s for s in segments if s["id"] != first_car]
        gt_dir = _write_gt(tmp_path, ids, segments, train_to_label)
        cars = _cars(ids, segments)
        inst = tmp_path / f"inst{round}"
        write_cityscapes_instances(
            str(inst), STEM, np.stack(cars), np.full(len(cars), CAR), np.ones(len(cars))
        )
        result = run_cityscapes_official(str(gt_dir), instance_dir=str(inst))
        assert result["instance"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert os.getcwd() == str(work) and not list(work.iterdir())
    assert not os.path.exists(script.args.gtInstancesFile)
    assert vars(script.args).keys() == before.keys()
    assert all(vars(script.args)[k] is v for k, v in before.items())


def test_bad_prediction_file_gives_the_scripts_message(sample, tmp_path):
    ids, segments, train_to_label, _ = sample
    gt_dir = _write_gt(tmp_path, ids, segments, train_to_label)
    (tmp_path / "inst").mkdir()
    (tmp_path / "inst" / f"{STEM}.txt").write_text("../elsewhere.png 26 1.0\n")
    gt = [str(gt_dir / "dummy" / f"{STEM}_gtFine_instanceIds.png")]
    with pytest.raises(CityscapesEvaluationError, match="points outside of prediction path"):
        evaluate_instances_official(
            gt, [str(tmp_path / "inst" / f"{STEM}.txt")], prediction_root=str(tmp_path / "inst")
        )
