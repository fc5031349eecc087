"""PQ statistics combined: merged halves, batches of images, and 2 gloo processes gathered give
the numbers of one evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from panoptic_cases import _assert_same, _files, _ours

from axial_deeplab.data.validation import DatasetFormatError
from axial_deeplab.evaluation.panoptic import PanopticEvaluator, RunsImage
from axial_deeplab.evaluation.runs import runs_from_ids
from axial_deeplab.evaluation.synthetic import (
    synthetic_categories,
    synthetic_ground_truth,
    synthetic_prediction,
)


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
