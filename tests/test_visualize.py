"""Pictures: colors land where the labels say, void stays untouched, offsets encode length."""

import numpy as np
import pytest

from axial_deeplab.utils.visualize import (
    TITLE_HEIGHT,
    _label_box,
    class_legend,
    enlarge,
    enlarge_factor,
    heatmap,
    offset_field,
    palette,
    panoptic_overlay,
    prediction_panels,
    semantic_map,
    tile,
)


def test_palette_is_distinct_and_deterministic():
    colors = palette(40)
    assert colors.shape == (40, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors}) == 40
    assert np.array_equal(colors, palette(40))


def test_semantic_map_colors_and_ignore():
    sem = np.array([[0, 1], [255, -1]])
    out = semantic_map(sem, num_classes=2)
    assert np.array_equal(out[0, 0], palette(2)[0]) and np.array_equal(out[0, 1], palette(2)[1])
    assert not out[1].any()  # ignore (255) and negative ids are black


def test_overlay_blends_segments_and_keeps_void():
    image = np.full((20, 20, 3), 100, np.uint8)
    pan = np.full((20, 20), -1)
    pan[:10] = 0 * 1000  # class 0, stuff
    out = panoptic_overlay(image, pan, label_divisor=1000, class_names=["sky"], alpha=0.5)
    # Void rows 10.. untouched; a stuff pixel far from the text is 0.5 * 100 + 0.5 * color.
    assert np.array_equal(out[15:], image[15:])
    expected = (0.5 * 100 + 0.5 * palette(1)[0].astype(float)).astype(np.uint8)
    assert np.abs(out[0, 0].astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="sizes differ"):
        panoptic_overlay(image, pan[:5], label_divisor=1000, class_names=["sky"])


def test_offset_field_brightness_is_length_and_zero_is_black():
    off = np.zeros((2, 1, 3), np.float32)
    off[1, 0, 1] = 2.0  # dx = 2
    off[1, 0, 2] = 4.0  # dx = 4, the longest: full brightness
    pic = offset_field(off)  # too small for the colour wheel
    assert not pic[0, 0].any()
    assert pic[0, 2].max() == 255 and 120 <= pic[0, 1].max() <= 135  # half length, ~half value
    with pytest.raises(ValueError, match=r"\[2, H, W\]"):
        offset_field(np.zeros((3, 4, 4)))


def test_heatmap_marks_centres_at_their_pixels_and_tile_shapes():
    scores = np.zeros((12, 14))
    scores[:, 7:] = 1.0  # left half score 0, right half score 1
    hm = heatmap(scores, centers=np.array([[2, 9]]))  # (y, x) = (2, 9), off the diagonal
    assert hm.shape == (12, 14, 3)
    plain = heatmap(scores)
    white = np.array([255, 255, 255])
    # The marker is a white cross centred on (y, x) = (2, 9): the centre and its arms are white...
    for y, x in [(2, 9), (0, 9), (5, 9), (2, 6), (2, 12)]:
        assert np.array_equal(hm[y, x], white), (y, x)
    # ...and the pixels away from it (the transposed position (9, 2) included) keep the map.
    assert np.array_equal(hm[7:], plain[7:]) and np.array_equal(hm[:, :5], plain[:, :5])
    # The map itself: score 0 and score 1 get different, non-white colors.
    assert not np.array_equal(plain[10, 0], plain[10, 13]) and (plain != 255).any(axis=-1).all()
    grid = tile({"a": hm, "b": hm, "c": hm}, columns=2)
    assert grid.shape == (2 * (12 + TITLE_HEIGHT), 28, 3)
    footer = np.zeros((5, 28, 3), np.uint8)
    assert tile({"a": hm, "b": hm}, footer=footer).shape == (12 + TITLE_HEIGHT + 5, 28, 3)
    with pytest.raises(ValueError, match="footer width 7"):
        tile({"a": hm}, footer=np.zeros((5, 7, 3), np.uint8))


def test_heatmap_scale_moves_off_the_centres():
    """The colour bar takes the first corner without a centre (nor a cross reaching into it),
    and every cross stays visible."""
    zero = np.zeros((128, 128))

    def red(picture: np.ndarray) -> np.ndarray:
        return (picture[..., 0] > 200) & (picture[..., 2] < 60)

    def corner_of_bar(picture: np.ndarray) -> tuple[bool, bool]:  # (top, right)
        ys, xs = np.nonzero(red(picture))
        return bool(ys.max() < 64), bool(xs.min() >= 64)

    top_right = np.array([[10, 120]])  # (y, x), under the default place of the bar
    pic = heatmap(zero, centers=top_right)
    assert corner_of_bar(pic) == (True, False)  # moved to the top left
    assert np.array_equal(pic[10, 120], [255, 255, 255])
    busy = np.array([[10, 120], [10, 5], [120, 120]])  # three corners taken
    assert corner_of_bar(heatmap(zero, centers=busy)) == (False, False)
    everywhere = np.array([[10, 120], [10, 5], [120, 120], [120, 5]])
    pic = heatmap(zero, centers=everywhere)  # no free corner: the first, crosses on top
    assert corner_of_bar(pic) == (True, True)
    for y, x in everywhere:
        assert np.array_equal(pic[y, x], [255, 255, 255]), (y, x)
    # a cross just outside the box still reaches into it (an audit's "1" read "1+"): the bar
    # moves on (the box of the top-right corner starts at x 82 here; the cross reaches 4 px)
    near = np.array([[10, 80]])
    assert corner_of_bar(heatmap(zero, centers=near)) == (True, False)


def test_labels_never_overlap():
    # Ten labels wanted at the same spot: five places (the spot, then 1 and 2 box heights below
    # and above) are free, the other five labels are left out.
    canvas, taken = np.zeros((300, 300, 3), np.uint8), []
    placed = [_label_box(canvas, "person 0.99", (150, 150), 0.5, taken) for _ in range(10)]
    assert placed == [True] * 5 + [False] * 5
    for i, a in enumerate(taken):
        for b in taken[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert all(0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 300 for x0, y0, x1, y1 in taken)


def test_heatmap_scale_and_offset_wheel():
    # An all-zero heatmap has no red, but its colour bar (0..1) does; only in the corner.
    zero = heatmap(np.zeros((128, 128)))
    red = (zero[..., 0] > 200) & (zero[..., 2] < 60)
    assert red[:64, 64:].any() and not red[:, :64].any() and not red[64:].any()
    assert not (heatmap(np.zeros((128, 128)), scale=False)[..., 0] > 200).any()
    # Offsets all pointing +x: one colour in the field; the wheel shows that colour at its
    # right edge and other directions besides (bottom-right corner only).
    off = np.zeros((2, 128, 128), np.float32)
    off[1] = 4.0
    pic = offset_field(off)
    field = pic[0, 0]
    assert (pic[:64] == field).all() and (pic[:, :64] == field).all()
    corner = pic[64:, 64:].reshape(-1, 3)
    assert (corner == field).all(1).any()  # +x on the wheel
    assert len({tuple(c) for c in corner}) > 50  # the other directions


def test_legend_lists_classes_present_largest_first():
    sem = np.full((10, 10), 2)
    sem[:3] = 0  # class 0: 30 %, class 2: 70 %, class 1 absent
    strip = class_legend(sem, ["sky", "car", "road"], None, width=400)
    colors = palette(3)
    swatches = [tuple(c) for c in strip[8, :].tolist()]
    first_road = swatches.index(tuple(colors[2]))
    assert tuple(colors[0]) in swatches[first_road:]  # road (70 %) before sky
    assert tuple(colors[1]) not in swatches  # car not present: not listed
    with_gt = class_legend(sem, ["sky", "car", "road"], None, width=400, also=[1])
    assert tuple(colors[1]) in [tuple(c) for c in with_gt[8, :].tolist()]


def test_small_inputs_are_enlarged_with_their_maps():
    image = np.zeros((96, 128, 3), np.uint8)
    offset = np.ones((2, 96, 128), np.float32)
    pred = {
        "panoptic": np.zeros((96, 128), int),
        "semantic": np.zeros((96, 128), int),
        "center": np.zeros((96, 128)),
        "offset": offset,
        "centers": np.array([[10, 20]]),
    }
    k = enlarge_factor(image.shape)
    assert k == 4  # 96 * 4 = 384, the readable short side
    big, up = enlarge(image, pred, k)
    assert big.shape == (384, 512, 3) and up["panoptic"].shape == (384, 512)
    assert up["offset"].max() == 4.0 and up["centers"].tolist() == [[42, 82]]
    truth = np.full((96, 128), 1000)  # class 1, instance 0
    panels, strip = prediction_panels(image, pred, class_names=["a", "b"], label_divisor=1000,
                                      ground_truth=truth)  # fmt: skip
    assert list(panels)[:3] == ["input", "prediction", "ground truth"]
    assert all(p.shape == (384, 512, 3) for p in panels.values()) and strip.shape[1] == 3 * 512


def test_ground_truth_labels_number_things_and_leave_crowd_and_void():
    from axial_deeplab.engine.evaluate import VOID_LABEL, ground_truth_labels

    ids = np.array([[0, 5, 5], [7, 9, 11]])
    segments = [
        {"id": 5, "category_id": 2, "isthing": 1, "iscrowd": 0},
        {"id": 7, "category_id": 0, "isthing": 0, "iscrowd": 0},
        {"id": 9, "category_id": 2, "isthing": 1, "iscrowd": 0},
        {"id": 11, "category_id": 2, "isthing": 1, "iscrowd": 1},  # crowd: the class, no instance
    ]
    labels = ground_truth_labels(ids, segments, label_divisor=1000)
    expected = [[VOID_LABEL, 2001, 2001], [0, 2002, 2000]]
    assert labels.dtype == np.int64 and labels.tolist() == expected


def test_eval_pictures_score_segments_by_probabilities(tmp_path, monkeypatch):
    # The evaluation hands its sinks logits; a segment's score is the mean probability of its
    # class (times the centre heatmap for things), so a logit of 10 must show as ~1.0, not 10.
    import torch

    from axial_deeplab.data.catalog import DatasetMetadata
    from axial_deeplab.engine import infer_net
    from axial_deeplab.engine.eval_pictures import EvalPictureWriter

    categories = (
        {"id": 7, "train_id": 0, "name": "sky", "isthing": 0, "color": (70, 130, 180)},
        {"id": 9, "train_id": 1, "name": "disc", "isthing": 1, "color": (220, 20, 60)},
    )
    drawn = []
    monkeypatch.setattr(infer_net, "render", lambda image, prediction, meta, ground_truth: (
        drawn.append(prediction) or {"input": image, "legend": image[:4]}))  # fmt: skip
    writer = EvalPictureWriter(str(tmp_path), DatasetMetadata("toy", categories), count=1)
    logits = torch.zeros(2, 8, 8)
    logits[0] = 10.0  # sky everywhere, probability 1 / (1 + e^-10)
    record = {
        "image": torch.zeros(3, 8, 8),
        "panoptic": np.ones((8, 8), np.int64),
        "segments_info": [{"id": 1, "category_id": 0, "iscrowd": 0}],
        "file_name": "a/scene.png",
    }
    outputs = {
        "semantic": logits,
        "center": torch.zeros(1, 8, 8),
        "offset": torch.zeros(2, 8, 8),
        "centers": torch.zeros(0, 2, dtype=torch.long),
    }
    writer.add(record, np.zeros((8, 8), np.int64), outputs)
    (segment,) = drawn[0]["segments_info"]
    assert segment["score"] == pytest.approx(1 / (1 + np.exp(-10.0)), abs=1e-6)
    assert (tmp_path / "scene_vis.png").exists()


def test_enlarge_factor_caps_the_long_side():
    """Small pictures are enlarged to a readable short side, but a thin strip is not drawn
    hundreds of thousands of pixels long (a 2 x 3000 input made libpng refuse the picture)."""
    assert enlarge_factor((32, 48)) == 12  # 384 x 576
    assert enlarge_factor((20, 2000)) == 1 and enlarge_factor((2, 3000)) == 1
    assert enlarge_factor((1, 900)) == 2  # long side 1800 <= 2048
    assert enlarge_factor((500, 700)) == 1
