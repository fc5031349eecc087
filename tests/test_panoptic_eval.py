"""PQ: hand-worked cases, agreement with cityscapesscripts (the COCO panoptic API's algorithm) on
real and synthetic data, validation errors, the file CLI, merging and gathering across ranks."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sample_data import require

from axial_deeplab.data.panoptic_io import read_panoptic_png, write_panoptic_png
from axial_deeplab.data.validation import DatasetFormatError
from axial_deeplab.evaluation.panoptic import (
    PanopticEvaluator,
    PQStats,
    RunsImage,
    pq_image_stats,
)
from axial_deeplab.evaluation.panoptic_files import evaluate_panoptic_files
from axial_deeplab.evaluation.runs import runs_from_ids
from axial_deeplab.evaluation.synthetic import (
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO = DATA / "coco_panoptic_sample"
CITYSCAPES = DATA / "cityscapes_panoptic_sample" / "gtFine"

# person, car: things; sky: stuff (category index 0, 1, 2).
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 27, "name": "sky", "isthing": 0},
]


def _stats(inter, g_cat, g_crowd, p_cat) -> PQStats:
    return pq_image_stats(
        np.array(inter), np.array(g_cat, int), np.array(g_crowd, bool), np.array(p_cat, int), 3
    )


def _summary(stats: PQStats) -> dict:
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.add(stats)
    return evaluator.evaluate()


def test_iou_leaves_out_the_predictions_void_overlap():
    # gt person g1 (50 px: 40 on p1, 10 on VOID); pred person p1 (70 px: 40 on g1, 30 on VOID gt).
    # union = 50 + 70 - 40 - 30 = 50 -> IoU 0.8, a TP. Without the VOID term: 40 / 80 = 0.5, no TP.
    stats = _stats([[0, 30], [10, 40]], [0], [False], [0])
    assert stats.tp.tolist() == [1, 0, 0] and stats.fp.sum() == stats.fn.sum() == 0
    assert stats.iou[0] == pytest.approx(0.8, abs=1e-15)
    result = _summary(stats)
    assert result["All"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "n": 1})


def test_iou_of_exactly_one_half_is_not_a_match():
    # gt person g1 60 px (40 on p1, 20 on VOID); gt sky g2 20 px (on p1); pred person p1 60 px.
    # IoU(g1, p1) = 40 / (60 + 60 - 40) = 0.5, not > 0.5 -> person FN and FP (p1 is not on VOID).
    stats = _stats([[0, 0], [20, 40], [0, 20]], [0, 2], [0, 0], [0])
    assert (stats.tp[0], stats.fn[0], stats.fp[0]) == (0, 1, 1)


def test_crowd_and_void_rules():
    # gt: g1 person crowd (110 px), g2 sky (200 px). pred: p1 person (50 px), p2 car (40), p3 sky.
    #          VOID  p1  p2   p3
    # VOID       0    0  10    0
    # g1 crowd  50   30  30    0
    # g2 sky     0   20   0  180
    # g2-p3: IoU = 180 / (200 + 180 - 180) = 0.9 -> TP sky. The crowd g1 is never an FN.
    # p1: (VOID 0 + person crowd 30) / 50 = 0.6 > 0.5 -> ignored. p2: (10 + no car crowd) / 40
    # = 0.25 -> FP car (a person crowd does not excuse a car).
    stats = _stats([[0, 0, 10, 0], [50, 30, 30, 0], [0, 20, 0, 180]], [0, 2], [1, 0], [0, 1, 2])
    assert stats.tp.tolist() == [0, 0, 1] and stats.fp.tolist() == [0, 1, 0]
    assert stats.fn.tolist() == [0, 0, 0]
    result = _summary(stats)
    # person: no TP/FP/FN -> left out. car: PQ 0. sky: PQ = SQ = 0.9, RQ 1. All: means of the two.
    assert result["All"] == pytest.approx({"pq": 0.45, "sq": 0.45, "rq": 0.5, "n": 2})
    assert result["Things"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1})
    assert result["Stuff"] == pytest.approx({"pq": 0.9, "sq": 0.9, "rq": 1.0, "n": 1})
    assert result["per_class"][1] == {
        "name": "person", "pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0
    }  # fmt: skip


def test_only_the_last_crowd_region_of_a_class_counts_as_in_the_official_code():
    # Two person crowds g1, g2 (13 and 5 px); p1 person (10 px): 8 px on g1, 2 on VOID.
    # panopticapi keeps one crowd id per class, the last listed (g2): (2 + 0) / 10 = 0.2 of p1 is
    # on VOID + crowd -> an FP (with g1 it would be (2 + 8) / 10 -> ignored).
    stats = _stats([[0, 2], [5, 8], [5, 0]], [0, 0], [1, 1], [0])
    assert stats.fp[0] == 1


def test_empty_prediction_counts_every_gt_segment_as_fn():
    # gt person (100 px) and sky (300 px), prediction all VOID: 2 FN, PQ 0 over n = 2 classes.
    stats = _stats([[0], [100], [300]], [0, 2], [0, 0], [])
    assert stats.fn.tolist() == [1, 0, 1] and stats.tp.sum() == stats.fp.sum() == 0
    assert _summary(stats)["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}


def test_all_crowd_image_gives_no_statistics():
    # gt: one person crowd; p1 person entirely on it -> ignored; nothing counts: every group is
    # empty (n = 0, reported as 0.0 where the official code divides by zero).
    stats = _stats([[0, 0], [0, 25]], [0], [1], [0])
    assert stats.tp.sum() == stats.fp.sum() == stats.fn.sum() == 0
    assert _summary(stats)["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


def test_class_absent_from_gt_and_prediction_is_left_out_of_the_mean():
    # A perfect person (IoU 1) alone: n = 1 and PQ 1; car and sky are in neither -> left out.
    assert _summary(_stats([[0, 0], [0, 9]], [0], [0], [0]))["All"]["pq"] == 1.0
    # gt persons g1 (9 px), g2 (3 px); pred p1 person = g1, p2 car = g2. Person: TP + FN, PQ =
    # 1 / (1 + 0.5); car, absent from gt but predicted: one FP, PQ 0, and it counts in the mean:
    # n = 2, PQ = (2/3 + 0) / 2. Sky, in neither, stays out.
    result = _summary(_stats([[0, 0, 0], [0, 9, 0], [0, 0, 3]], [0, 0], [0, 0], [0, 1]))
    assert result["All"]["n"] == 2 and result["All"]["pq"] == pytest.approx(1 / 3, abs=1e-15)


def test_in_memory_process_on_tiny_maps():
    # 4x4: gt person id 5 covers the left half (8 px), sky id 9 the right half (8 px).
    # pred person id 1 covers columns 0..2 (12 px: 8 on person, 4 on sky) -> IoU 8/12 -> TP.
    # pred sky id 2 covers column 3 (4 px) -> IoU 4/8 = 0.5 -> not a match: sky FN + sky FP.
    gt = np.array([[5, 5, 9, 9]] * 4)
    pred = np.array([[1, 1, 1, 2]] * 4)
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.process(
        gt, [{"id": 5, "category_id": 1}, {"id": 9, "category_id": 27}],
        pred, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 27}],
    )  # fmt: skip
    r = evaluator.evaluate()
    assert r["per_class"][1]["pq"] == pytest.approx(8 / 12, abs=1e-15)
    assert (r["per_class"][27]["fn"], r["per_class"][27]["fp"]) == (1, 1)
    assert r["All"]["pq"] == pytest.approx((8 / 12 + 0) / 2, abs=1e-15)
    evaluator.reset()
    assert evaluator.num_images == 0 and evaluator.stats.tp.sum() == 0


@pytest.mark.parametrize(
    "gt_ids, gt_segments, message",
    [
        (np.full((2, 2), 2**24), [{"id": 2**24, "category_id": 1}], r"\[0, 2\^24 - 1\]"),
        (np.full((2, 2), 7), [], "in the PNG but not in segments_info"),
        (np.zeros((2, 2), int), [{"id": 7, "category_id": 1}], "absent from the PNG"),
        (np.full((2, 2), 7), [{"id": 7, "category_id": 99}], "unknown category_id 99"),
        (np.full((2, 2), 7), [{"id": 7, "category_id": 1}] * 2, "duplicate segment id 7"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(gt_ids, gt_segments, message):
    with pytest.raises(DatasetFormatError, match=message):
        PanopticEvaluator(CATEGORIES).process(gt_ids, gt_segments, np.zeros((2, 2), int), [])


def test_categories_are_validated():
    with pytest.raises(DatasetFormatError, match="category id 3 .*no 'isthing'"):
        PanopticEvaluator([{"id": 3, "name": "car"}], source="cats.json")
    with pytest.raises(DatasetFormatError, match="cats.json: duplicate category id 1"):
        PanopticEvaluator(CATEGORIES + CATEGORIES[:1], source="cats.json")


# ------------------------------------------------------------------------------------------
# Agreement with cityscapesscripts' evalPanopticSemanticLabeling (same algorithm as panopticapi)
# ------------------------------------------------------------------------------------------


def _official(tmp_path: Path, images: list, categories: list[dict]) -> dict:
    """Results of cityscapesscripts' single-core PQ on ``images``, written as COCO-format files
    into ``tmp_path`` (``gt/``, ``pred/``, ``gt.json``, ``pred.json``)."""
    cs = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    pairs = _write(tmp_path, images)
    (tmp_path / "gt.json").write_text(
        json.dumps({"annotations": [g for g, _ in pairs], "categories": categories})
    )
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [p for _, p in pairs]}))
    cats = {c["id"]: c for c in categories}
    stats = cs.pq_compute_single_core(
        0, copy.deepcopy(pairs), tmp_path / "gt", tmp_path / "pred", cats
    )
    return cs.average_pq(stats, cats)


def _write(folder: Path, images: list) -> list:
    (folder / "gt").mkdir(exist_ok=True)
    (folder / "pred").mkdir(exist_ok=True)
    pairs = []
    for i, (gt, gt_segments, pred, pred_segments) in enumerate(images):
        write_panoptic_png(folder / "gt" / f"{i}.png", gt)
        write_panoptic_png(folder / "pred" / f"{i}.png", pred)
        pairs.append(
            ({"image_id": i, "file_name": f"{i}.png", "segments_info": gt_segments},
             {"image_id": i, "file_name": f"{i}.png", "segments_info": pred_segments})
        )  # fmt: skip
    return pairs


def _assert_same(ours: dict, official: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == official[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(ours[group][key] - official[group][key]) < 1e-9, (group, key)
    for cat_id, theirs in official["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat_id][key] - theirs[key]) < 1e-9, (cat_id, key)


def _eroded(gt: np.ndarray, gt_segments: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Every segment eroded by a 7x7 square (lost pixels become VOID)."""
    pred = np.zeros_like(gt)
    for seg in gt_segments:
        mask = cv2.erode((gt == seg["id"]).astype(np.uint8), np.ones((7, 7), np.uint8))
        pred[mask > 0] = seg["id"]
    kept = set(np.unique(pred).tolist())
    return pred, [
        {"id": s["id"], "category_id": s["category_id"]} for s in gt_segments if s["id"] in kept
    ]


def _perturbed(gt, gt_segments, categories, seeds) -> list:
    images = [(gt, gt_segments, *_eroded(gt, gt_segments))]
    for seed in seeds:
        rng = np.random.default_rng(seed)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    return images


def _ours(images, categories) -> dict:
    evaluator = PanopticEvaluator(categories)
    for image in images:
        evaluator.process(*image)
    return evaluator.evaluate()


def test_matches_official_on_real_coco_samples(tmp_path):
    require(COCO)
    data = json.loads((COCO / "panoptic_examples.json").read_text())
    images = []
    for ann in data["annotations"]:
        gt = read_panoptic_png(COCO / "panoptic" / ann["file_name"])
        images += _perturbed(gt, ann["segments_info"], data["categories"], seeds=range(3))
    ours, official = (
        _ours(images, data["categories"]),
        _official(tmp_path, images, data["categories"]),
    )
    assert official["All"]["n"] > 10  # a real test: many classes, crowds present
    _assert_same(ours, official)
    # The file-based path (PNG reader, worker processes) gives the same numbers.
    files = evaluate_panoptic_files(
        str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"),
        str(tmp_path / "pred"), workers=2, progress=False,
    )  # fmt: skip
    _assert_same(files, official)


def _cityscapes_categories() -> list[dict]:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    return [
        {"id": lab.trainId, "name": lab.name, "isthing": int(lab.hasInstances)}
        for lab in labels.labels
        if 0 <= lab.trainId < 255
    ]


def test_matches_official_on_real_cityscapes_sample_with_crowd(tmp_path):
    require(CITYSCAPES)
    categories = _cityscapes_categories()
    ann = json.loads((CITYSCAPES / "cityscapes_panoptic_dummy_trainId.json").read_text())
    ann = ann["annotations"][0]
    gt = read_panoptic_png(CITYSCAPES / "cityscapes_panoptic_dummy_trainId" / ann["file_name"])
    images = _perturbed(gt, ann["segments_info"], categories, seeds=range(4))
    _assert_same(_ours(images, categories), _official(tmp_path, images, categories))


def test_matches_official_on_synthetic_scenes(tmp_path):
    categories = synthetic_categories()
    rng = np.random.default_rng(7)
    images = []
    for _ in range(12):
        gt, gt_segments = synthetic_ground_truth(rng, categories, 90, 120)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    official = _official(tmp_path, images, categories)
    assert official["Things"]["n"] > 0 and official["Stuff"]["n"] > 0
    _assert_same(_ours(images, categories), official)


def test_merged_halves_equal_the_whole():
    categories = synthetic_categories()
    rng = np.random.default_rng(3)
    images = []
    for _ in range(6):
        gt, gt_segments = synthetic_ground_truth(rng, categories, 40, 50)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    whole, first, second = (PanopticEvaluator(categories) for _ in range(3))
    for i, image in enumerate(images):
        whole.process(*image)
        (first if i % 2 else second).process(*image)
    first.merge(second)
    assert first.num_images == 6
    assert whole.evaluate()["All"]["n"] > 3
    _assert_same(first.evaluate(), whole.evaluate())


def _scenes(seed: int, sizes: list[tuple[int, int]]) -> tuple[list, list[dict]]:
    categories = synthetic_categories()
    rng = np.random.default_rng(seed)
    images = []
    for height, width in sizes:
        gt, gt_segments = synthetic_ground_truth(rng, categories, height, width)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    return images, categories


def _runs_image(i: int, gt, gt_segments, pred, pred_segments) -> RunsImage:
    return RunsImage(runs_from_ids(gt), gt_segments, runs_from_ids(pred), pred_segments,
                     f"gt {i}", f"pred {i}")  # fmt: skip


def test_a_batch_gives_each_images_statistics_bit_for_bit():
    # Images of different sizes, one with an empty prediction and one all crowd, in one batch:
    # the [B, C] statistics equal those of each image alone, exactly (same sums, same order).
    images, categories = _scenes(5, [(40, 50), (33, 61), (48, 48), (40, 50)])
    gt, gt_segments = images[1][:2]
    images[1] = (gt, gt_segments, np.zeros_like(gt), [])
    crowd = [{**seg, "iscrowd": 1} for seg in images[2][1]]
    images[2] = (images[2][0], crowd, *images[2][2:])
    evaluator = PanopticEvaluator(categories)
    batch = evaluator.image_stats([_runs_image(i, *image) for i, image in enumerate(images)])
    assert batch.tp.shape == (4, len(categories)) and evaluator.num_images == 0  # nothing added
    for i, image in enumerate(images):
        alone = PanopticEvaluator(categories).process(*image)
        for field in ("iou", "tp", "fp", "fn"):
            assert getattr(batch, field)[i].tolist() == getattr(alone, field).tolist()
    assert batch.fn[1].sum() > 0 and batch.tp[1].sum() == batch.fp[1].sum() == 0
    assert batch.tp[2].sum() == batch.fn[2].sum() == 0


def test_file_evaluation_is_the_streaming_result_bit_for_bit_for_any_worker_count(tmp_path):
    # The parent adds per-image statistics in image order, so batches and worker processes do
    # not change a single bit: equal to process() called image by image.
    args, images, categories = _files(tmp_path, num_images=21)
    expected = _ours(images, categories)
    paths = [args[i] for i in (1, 3, 5, 7)]
    for workers in (1, 2, 3):
        result = evaluate_panoptic_files(*paths, workers=workers, progress=False)
        assert result == expected, workers


def test_a_batch_names_the_first_image_whose_ids_do_not_match_its_list():
    images, categories = _scenes(6, [(30, 40)] * 3)
    gt, gt_segments, pred, pred_segments = images[1]
    images[1] = (gt, gt_segments[1:], pred, pred_segments)  # a gt segment left out of the list
    gt, gt_segments, pred, pred_segments = images[2]
    images[2] = (gt, gt_segments, pred, pred_segments + [{"id": 99, "category_id": 1}])
    batch = [_runs_image(i, *image) for i, image in enumerate(images)]
    with pytest.raises(DatasetFormatError, match="gt 1: segment ids .* not in segments_info"):
        PanopticEvaluator(categories).image_stats(batch)
    with pytest.raises(DatasetFormatError, match="pred 2: segment ids \\[99\\] .* absent"):
        PanopticEvaluator(categories).image_stats(batch[2:])


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def _files(tmp_path: Path, num_images: int = 3) -> tuple[list[str], list, list[dict]]:
    categories = synthetic_categories()
    rng = np.random.default_rng(11)
    images = []
    for _ in range(num_images):
        gt, gt_segments = synthetic_ground_truth(rng, categories, 48, 64)
        images.append((gt, gt_segments, *synthetic_prediction(rng, categories, gt, gt_segments)))
    pairs = _write(tmp_path, images)
    gt_json = {"annotations": [g for g, _ in pairs], "categories": categories}
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [p for _, p in pairs]}))
    args = ["--gt-json", str(tmp_path / "gt.json"), "--gt-dir", str(tmp_path / "gt"),
            "--pred-json", str(tmp_path / "pred.json"), "--pred-dir", str(tmp_path / "pred")]  # fmt: skip
    return args, images, categories


def test_cli_prints_tables_and_writes_json(tmp_path, capsys):
    from axial_deeplab.evaluation.panoptic import main

    args, images, categories = _files(tmp_path)
    main(args + ["--output", str(tmp_path / "results.json"), "--workers", "2"])
    printed = capsys.readouterr().out
    expected = _ours(images, categories)
    assert f"{'All':24s}| {100 * expected['All']['pq']:5.1f}" in printed
    assert "thing_1" in printed and "stuff_13" in printed  # per-class table with names
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["All"]["pq"] == pytest.approx(expected["All"]["pq"], abs=1e-12)
    assert saved["per_class"]["1"]["name"] == "thing_1"
    assert not list(tmp_path.glob(".tmp_*"))  # the atomic write left no temporary file


def test_command_process_flushes_its_output_and_exit_status(tmp_path):
    """``python -m`` ends with ``os._exit`` (no interpreter teardown): the table printed into a
    pipe, the JSON and the exit status must still all come out, for a success and for errors."""
    args, images, categories = _files(tmp_path)
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo}
    for name in ("AXIAL_DEEPLAB_DEBUG", "PYTHONUNBUFFERED"):  # stdout block-buffered, as usual
        env.pop(name, None)

    def run(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "axial_deeplab.evaluation.panoptic", *extra]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    done = run(*args, "--output", str(tmp_path / "results.json"), "--workers", "2")
    expected = _ours(images, categories)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"results written to {tmp_path / 'results.json'}")
    assert f"{'All':24s}| {100 * expected['All']['pq']:5.1f}" in done.stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["All"]["pq"] == pytest.approx(expected["All"]["pq"], abs=1e-12)
    usage = run("--gt-json", str(tmp_path / "gt.json"))  # argparse: the other paths missing
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr
    (tmp_path / "pred" / "2.png").unlink()
    missing = run(*args)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == f"error: panoptic PNG not found: {tmp_path / 'pred' / '2.png'}"


def test_cli_errors_name_the_missing_image_or_file(tmp_path, capsys):
    from axial_deeplab.evaluation.panoptic import main

    args, _, _ = _files(tmp_path)
    pred = json.loads((tmp_path / "pred.json").read_text())
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred["annotations"][1:]}))
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--workers", "1"])
    assert exit_info.value.code == 2
    assert "no prediction for 1 ground-truth image(s)" in capsys.readouterr().err
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    (tmp_path / "pred" / "2.png").unlink()
    with pytest.raises(SystemExit):
        main(args + ["--workers", "2"])
    assert f"panoptic PNG not found: {tmp_path / 'pred' / '2.png'}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Distributed: 2 gloo processes give the numbers of 1
# ------------------------------------------------------------------------------------------


def _rank_main(rank: int, world_size: int, folder: str) -> None:
    import torch.distributed as dist

    from axial_deeplab.evaluation.distributed import gather

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world_size
    )
    try:
        _, images, categories = _files(Path(folder) / f"rank{rank}")
        evaluator = PanopticEvaluator(categories)
        for image in images[rank::world_size]:
            evaluator.process(*image)
        merged = gather(evaluator)
        assert merged.num_images == len(images)
        (Path(folder) / f"result{rank}.json").write_text(json.dumps(merged.evaluate()))
    finally:
        dist.destroy_process_group()


def test_gather_over_two_gloo_processes_equals_one_process(tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    for rank in range(2):
        (tmp_path / f"rank{rank}").mkdir()
    mp.spawn(_rank_main, args=(2, str(tmp_path)), nprocs=2, join=True)
    _, images, categories = _files(tmp_path)
    single = json.loads(json.dumps(_ours(images, categories)))  # int keys -> str, as saved
    for rank in range(2):
        gathered = json.loads((tmp_path / f"result{rank}.json").read_text())
        _assert_same(gathered, single)  # sums in another order: equal to 1e-9, not bit for bit
        for cat_id, entry in single["per_class"].items():
            counts = ("tp", "fp", "fn")
            assert [gathered["per_class"][cat_id][k] for k in counts] == [entry[k] for k in counts]
