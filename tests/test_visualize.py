"""Pictures: colors land where the labels say, void stays untouched, offsets encode length."""

import numpy as np
import pytest

from axial_deeplab.utils.visualize import (
    heatmap,
    offset_field,
    palette,
    panoptic_overlay,
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
    pic = offset_field(off)
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
    assert grid.shape == (2 * (12 + 24), 28, 3)
