"""Joint image/label augmentation: hand-worked sizes and indices, and alignment checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from axial_deeplab.data.catalog import DatasetMetadata
from axial_deeplab.data.dataset import PanopticDataset, read_image
from axial_deeplab.data.panoptic_io import write_panoptic_png
from axial_deeplab.data.transforms import (
    EvalResize,
    TrainAugmentation,
    nearest_indices,
    pad_pair,
    resize_label,
    resize_pair,
    resize_shortest_edge_size,
    scale_choices,
)

MEAN = (123.675, 116.28, 103.53)
MEAN_U8 = np.array([124, 116, 104], dtype=np.uint8)  # MEAN rounded to the nearest integer


def coded_pair(rng: np.random.Generator, height: int, width: int):
    """A label of blocky segments and an image whose colour is a function of the label
    (``lut[label]``, VOID -> the pad colour), so alignment can be checked pixel by pixel."""
    blocks = rng.integers(1, 6, size=(height // 4 + 1, width // 4 + 1))
    label = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:height, :width] * 1000 + 7
    lut = rng.integers(0, 256, size=(6000, 3)).astype(np.uint8)
    lut[0] = MEAN_U8
    return lut[label], label, lut


def test_scale_choices():
    # 0.5, 0.75, ..., 2.0: (2.0 - 0.5) / 0.25 + 1 = 7 values
    np.testing.assert_allclose(scale_choices(0.5, 2.0, 0.25), [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2])
    assert len(scale_choices(0.5, 2.0, 0.1)) == 16
    with pytest.raises(ValueError, match="scale range"):
        scale_choices(2.0, 0.5, 0.25)


def test_nearest_indices_hand_worked():
    # upsample x2: output i takes floor((i + 0.5) / 2) -> 0,0,1,1,2,2,3,3
    assert nearest_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # downsample /2: floor((i + 0.5) * 2) -> 1,3,5,7 (pixel centres, not the top-left corner)
    assert nearest_indices(8, 4).tolist() == [1, 3, 5, 7]


def test_resize_label_matches_naive_loop():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 50, size=(7, 11)) * 1000
    out = resize_label(label, (10, 5))
    naive = np.empty((10, 5), dtype=label.dtype)
    for i in range(10):
        for j in range(5):  # centre of output pixel mapped back, then floor
            naive[i, j] = label[min(int((i + 0.5) * 7 / 10), 6), min(int((j + 0.5) * 11 / 5), 10)]
    assert np.array_equal(out, naive)
    assert set(np.unique(out)) <= set(np.unique(label))


def test_pad_pair_fill_and_offset():
    image = np.full((2, 3, 3), 9, dtype=np.uint8)
    label = np.full((2, 3), 5, dtype=np.int64)
    out_image, out_label = pad_pair(image, label, (4, 4), fill=MEAN, offset=(1, 0))
    assert out_image.shape == (4, 4, 3) and out_label.shape == (4, 4)
    assert np.array_equal(out_label[1:3, :3], label) and (out_label == 5).sum() == 6
    assert np.array_equal(out_image[0, 0], MEAN_U8) and np.array_equal(out_image[1, 0], [9, 9, 9])
    assert (out_label == 0).sum() == 16 - 6  # everything else is VOID


def test_crop_flip_keeps_image_and_label_aligned():
    rng = np.random.default_rng(1)
    image, label, lut = coded_pair(rng, 40, 50)
    aug = TrainAugmentation(crop_size=(48, 32), min_scale=1, max_scale=1, scale_step=0.25)
    for seed in range(10):  # 40 rows < 48: padded; 50 cols > 32: cropped; flips vary
        out_image, out_label = aug(image, label, np.random.default_rng(seed))
        assert out_image.shape == (48, 32, 3) and out_label.shape == (48, 32)
        assert np.array_equal(out_image, lut[out_label])  # exact: no resize at scale 1
        assert (out_label[40:] == 0).all()  # padding at the bottom, VOID


def test_flip_only():
    image, label, _ = coded_pair(np.random.default_rng(2), 12, 16)
    aug = TrainAugmentation(crop_size=None, min_scale=1, max_scale=1, flip_prob=1.0)
    out_image, out_label = aug(image, label, np.random.default_rng(0))
    assert np.array_equal(out_label, label[:, ::-1]) and np.array_equal(out_image, image[:, ::-1])


def test_scales_come_from_the_grid_and_labels_stay_nearest():
    image, label, _ = coded_pair(np.random.default_rng(3), 32, 48)
    aug = TrainAugmentation(crop_size=None, min_scale=0.5, max_scale=2.0, scale_step=0.5)
    heights = set()
    for seed in range(30):
        out_image, out_label = aug(image, label, np.random.default_rng(seed))
        heights.add(out_label.shape[0])
        assert out_image.shape[:2] == out_label.shape
        assert set(np.unique(out_label)) <= set(np.unique(label))  # no interpolated ids
    # scales 0.5, 1, 1.5, 2 of 32 rows; 30 draws hit all four with prob > 0.99
    assert heights == {16, 32, 48, 64}


def test_random_pad_position_and_determinism():
    image, label, _ = coded_pair(np.random.default_rng(4), 8, 8)
    fixed = TrainAugmentation(crop_size=(16, 16), min_scale=1, max_scale=1, flip_prob=0)
    moving = TrainAugmentation(
        crop_size=(16, 16), min_scale=1, max_scale=1, flip_prob=0, random_pad=True
    )
    corners = set()
    for seed in range(8):
        _, out = fixed(image, label, np.random.default_rng(seed))
        assert np.array_equal(out[:8, :8], label)  # top-left placement
        _, out = moving(image, label, np.random.default_rng(seed))
        ys, xs = np.nonzero(out)
        corners.add((ys.min(), xs.min()))
    assert len(corners) > 1
    a = moving(image, label, np.random.default_rng(7))
    b = moving(image, label, np.random.default_rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_eval_resize_sizes():
    # short side 200, long side capped at 250: scale = min(200/427, 250/640) = 0.390625
    # -> (427 * 0.390625, 640 * 0.390625) = (166.8, 250) -> (167, 250)
    assert resize_shortest_edge_size(427, 640, 200, 250) == (167, 250)
    assert resize_shortest_edge_size(800, 800, 400) == (400, 400)
    image, label, _ = coded_pair(np.random.default_rng(5), 30, 40)
    out_image, out_label = EvalResize(short_edge=15, pad_to=(16, 24))(image, label)
    assert out_label.shape == (16, 24) and out_image.shape == (16, 24, 3)
    assert (out_label[15:] == 0).all() and (out_label[:, 20:] == 0).all()


def test_target_generator_sees_the_augmented_label(tmp_path):
    image, label, _ = coded_pair(np.random.default_rng(6), 20, 24)
    cv2.imwrite(str(tmp_path / "im.png"), image[..., ::-1])
    write_panoptic_png(tmp_path / "pan.png", label)
    segs = [{"id": int(i), "category_id": 0} for i in np.unique(label)]
    record = {"file_name": str(tmp_path / "im.png"), "pan_seg_file_name": str(tmp_path / "pan.png"),
              "image_id": 0, "height": 20, "width": 24, "segments_info": segs}  # fmt: skip
    meta = DatasetMetadata("t", ({"id": 0, "train_id": 0, "name": "x", "isthing": 1},))
    seen = []

    def generator(panoptic, segments_info):
        seen.append(panoptic.copy())
        return {"area": np.int64((panoptic != 0).sum())}

    aug = TrainAugmentation(crop_size=(32, 16), min_scale=1, max_scale=1)
    sample = PanopticDataset([record], metadata=meta, transform=aug, target_generator=generator)[0]
    assert np.array_equal(seen[0], sample["panoptic"].numpy())
    assert sample["panoptic"].shape == (32, 16)
    assert sample["area"] == 20 * 16  # 20 labelled rows x 16 cropped columns; the rest padding


@pytest.mark.parametrize("seed", range(6))
def test_crop_window_resize_equals_resize_then_crop(seed):
    # The label is resized only inside the crop window when no padding is needed: the same
    # draws and the same pixels as resizing the whole pair and then cropping.
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    label = rng.integers(0, 9, (37, 53)).astype(np.int64)
    aug = TrainAugmentation(crop_size=(16, 24), min_scale=0.5, max_scale=2.0, flip_prob=0.0)
    scale = aug.sample_scale(np.random.default_rng(seed))
    size = (int(round(37 * scale)), int(round(53 * scale)))
    expected = aug._crop(*resize_pair(image, label, size), np.random.default_rng(seed + 100))
    got = aug._resize_and_crop(image, label, size, np.random.default_rng(seed + 100))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("alpha", [False, True])
def test_read_image_png_equals_opencv(tmp_path, alpha):
    # 8-bit RGB(A) PNGs are decoded by libspng after a CRC check: the same RGB as OpenCV's.
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (21, 34, 4 if alpha else 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    expected = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), expected)
    blob = bytearray((tmp_path / "a.png").read_bytes())
    blob[60] ^= 1  # inside the image data: the IDAT CRC no longer matches
    (tmp_path / "b.png").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="b.png"):
        read_image(str(tmp_path / "b.png"))
