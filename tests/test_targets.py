"""Panoptic-DeepLab target generation: hand-worked toy labels and a per-segment loop reference."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sample_data import require

from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.modeling.targets import (
    PanopticTargetGenerator,
    gaussian_heatmap,
    panoptic_targets,
    segment_index_map,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CITYSCAPES = DATA / "cityscapes_panoptic_sample" / "gtFine"


def _toy():
    """6 x 8 label: stuff 7 (class 0), thing 101 (class 5, 2x3 px), crowd 102 (class 5), void 0."""
    pan = np.full((6, 8), 7, dtype=np.int64)
    pan[1:3, 2:5] = 101  # rows 1-2, cols 2-4: mean (1.5, 3.0)
    pan[4:6, 6:8] = 102  # crowd
    pan[0, 0] = 0  # void (not listed)
    return pan, [7, 101, 102], [0, 5, 5], [0, 0, 1]


def test_toy_targets_by_hand():
    pan, ids, cats, crowd = _toy()
    t = panoptic_targets(pan, ids, cats, crowd, thing_ids={5}, sigma=1.0, small_instance_area=7)
    # semantic: class per segment, crowd keeps its class, void -> 255
    assert t["sem_seg"][0, 0] == 255 and t["sem_seg"][1, 2] == 5 and t["sem_seg"][5, 7] == 5
    assert t["sem_seg"][3, 3] == 0
    # semantic weights: instance area 6 < 7 -> 3; crowd and stuff 1; void 0
    assert t["sem_seg_weights"][1, 3] == 3 and t["sem_seg_weights"][5, 7] == 1
    assert t["sem_seg_weights"][3, 3] == 1 and t["sem_seg_weights"][0, 0] == 0
    # centre (1.5, 3.0) -> peak at (2, 3) (1.5 rounds half-to-even to 2); crowd has none
    np.testing.assert_allclose(t["center_points"], [[1.5, 3.0]])
    assert t["center"][0, 2, 3] == 1.0
    assert t["center"][0, 2, 4] == pytest.approx(math.exp(-0.5))  # one pixel away, sigma 1
    assert t["center"][0, 5, 7] == pytest.approx(math.exp(-(9 + 16) / 2))  # (3, 4) away
    # offsets (center - pixel) on the instance only: pixel (1, 2) -> (0.5, 1.0)
    np.testing.assert_allclose(t["offset"][:, 1, 2], [0.5, 1.0])
    np.testing.assert_allclose(t["offset"][:, 2, 4], [-0.5, -1.0])
    assert not t["offset"][:, 5, 7].any() and not t["offset"][:, 3, 3].any()
    # weights: centre 0 on void and crowd, offset only on the non-crowd thing
    assert t["center_weights"][0].sum() == 48 - 1 - 4
    assert t["offset_weights"][0].sum() == 6 and t["offset_weights"][0, 1, 2] == 1


def test_small_instance_area_is_strict_and_crowd_can_be_ignored():
    pan, ids, cats, crowd = _toy()
    t = panoptic_targets(pan, ids, cats, crowd, thing_ids={5}, small_instance_area=6)
    assert t["sem_seg_weights"][1, 3] == 1  # area 6 is not < 6
    t = panoptic_targets(pan, ids, cats, crowd, thing_ids={5}, ignore_crowd_in_semantic=True)
    assert t["sem_seg"][5, 7] == 255 and t["sem_seg_weights"][5, 7] == 0


def test_crowd_as_instance_gives_the_crowd_region_a_centre_and_offsets():
    pan, ids, cats, crowd = _toy()
    t = panoptic_targets(
        pan, ids, cats, crowd, thing_ids={5}, sigma=1.0, crowd_as_instance=True,
        ignore_crowd_in_semantic=True,
    )  # fmt: skip
    # crowd 102 covers rows 4-5, cols 6-7: mean (4.5, 6.5), peak at (4, 6) (half-to-even)
    np.testing.assert_allclose(t["center_points"], [[1.5, 3.0], [4.5, 6.5]])
    assert t["center"][0, 4, 6] == 1.0
    np.testing.assert_allclose(t["offset"][:, 5, 7], [-0.5, -0.5])
    assert t["offset_weights"][0].sum() == 6 + 4 and t["center_weights"][0].sum() == 48 - 1
    assert t["sem_seg"][5, 7] == 255  # the semantic rule for crowds is unchanged
    # a crowd of a stuff class is not an instance
    t = panoptic_targets(pan, ids, [0, 5, 0], crowd, thing_ids={5}, crowd_as_instance=True)
    assert len(t["center_points"]) == 1 and t["center_weights"][0, 5, 7] == 0


def test_gaussian_window_is_cut_at_radius():
    # sigma 1 -> radius round(3 + 1) = 4: 4 px away along an axis is inside, 5 px is outside
    heat = gaussian_heatmap(np.array([[10, 10]]), 21, 21, 1.0)
    assert heat[10, 14] == pytest.approx(math.exp(-8)) and heat[10, 15] == 0
    assert heat[14, 14] == pytest.approx(math.exp(-16))  # square window: corners included


def test_segment_index_map_small_and_large_ids_agree():
    ids = np.array([5, 3, 9])
    pan = np.array([[3, 5, 9, 4]])
    np.testing.assert_array_equal(segment_index_map(pan, ids), [[1, 0, 2, 3]])
    big = np.array([5, 3, 9]) + 2**24  # COCO-style large ids take the searchsorted path
    np.testing.assert_array_equal(segment_index_map(pan + 2**24, big), [[1, 0, 2, 3]])


def test_rejects_mismatched_segments():
    with pytest.raises(ValueError, match="2 ids, 1 category ids"):
        panoptic_targets(np.zeros((2, 2), int), [1, 2], [0], [0, 0], thing_ids=())
    with pytest.raises(ValueError, match=r"\[H, W\] integer"):
        panoptic_targets(np.zeros((2, 2), float), [1], [0], [0], thing_ids=())


def _loop_reference(pan, segments, thing_ids, sigma=8.0):
    """One full-image mask per segment (the straightforward algorithm)."""
    h, w = pan.shape
    sem = np.full((h, w), 255)
    center = np.zeros((h, w))
    offset = np.zeros((2, h, w))
    center_w = np.zeros((h, w))
    yy, xx = np.mgrid[:h, :w]
    r = int(round(3 * sigma + 1))
    for s in segments:
        mask = pan == s["id"]
        sem[mask] = s["category_id"]
        if s["iscrowd"]:
            continue
        center_w[mask] = 1
        if s["category_id"] in thing_ids and mask.any():
            cy, cx = yy[mask].mean(), xx[mask].mean()
            offset[0][mask], offset[1][mask] = cy - yy[mask], cx - xx[mask]
            py, px = round(cy), round(cx)
            win = (abs(yy - py) <= r) & (abs(xx - px) <= r)
            g = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sigma**2)) * win
            center = np.maximum(center, g)
    return sem, center, offset, center_w


def test_cityscapes_sample_matches_loop_reference():
    png = (
        CITYSCAPES / "cityscapes_panoptic_dummy_trainId" / "dummy_000000_000000_gtFine_panoptic.png"
    )
    require(png)
    pan = read_panoptic_png(png)
    info = json.loads((CITYSCAPES / "cityscapes_panoptic_dummy_trainId.json").read_text())
    segments = info["annotations"][0]["segments_info"]
    things = set(range(11, 19))
    t = PanopticTargetGenerator(thing_ids=things)(pan, segments)
    sem, center, offset, center_w = _loop_reference(pan, segments, things)
    np.testing.assert_array_equal(t["sem_seg"].numpy(), sem)
    np.testing.assert_allclose(t["center"][0].numpy(), center, atol=1e-6)
    np.testing.assert_allclose(t["offset"].numpy(), offset, atol=1e-4)
    np.testing.assert_array_equal(t["center_weights"][0].numpy(), center_w)
    assert len(t["center_points"]) == 5  # five non-crowd cars; the crowd car region has none
    # the crowd region (id 26, 6178 px) keeps class 13 but has no centre/offset weight
    crowd = pan == 26
    assert crowd.sum() == 6178 and (t["sem_seg"].numpy()[crowd] == 13).all()
    assert not t["offset_weights"][0].numpy()[crowd].any()
    # car 26000 has 958 px < 4096: semantic weight 3; car 26003 (32768 px): 1
    assert (t["sem_seg_weights"].numpy()[pan == 26000] == 3).all()
    assert (t["sem_seg_weights"].numpy()[pan == 26003] == 1).all()
