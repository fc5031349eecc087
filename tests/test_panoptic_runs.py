"""Reading panoptic PNGs as runs: equal to a plain decode for every PNG filter and both inflaters."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sample_data import require

from axial_deeplab.data.panoptic_io import read_panoptic_png, write_panoptic_png
from axial_deeplab.evaluation import runs as runs_module
from axial_deeplab.evaluation.runs import (
    PanopticPngReader,
    concatenate_runs,
    overlap_runs,
    read_panoptic_runs,
    runs_from_ids,
)
from axial_deeplab.evaluation.synthetic import synthetic_categories, synthetic_ground_truth

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _expand(runs) -> np.ndarray:
    height, width = runs.shape
    lengths = np.diff(runs.starts, append=height * width)
    return np.repeat(runs.values, lengths).reshape(height, width)


def _assert_same(runs, ids: np.ndarray) -> None:
    reference = runs_from_ids(ids)  # maximal runs of the plain decode
    assert runs.shape == ids.shape
    np.testing.assert_array_equal(runs.starts, reference.starts)
    np.testing.assert_array_equal(runs.values, reference.values)
    np.testing.assert_array_equal(_expand(runs), ids)


def test_runs_from_ids_by_hand():
    # Rows [7 7 0] and [0 0 0]: runs start at pixels 0 (7), 2 (0) and 3 (row start, 0).
    runs = runs_from_ids(np.array([[7, 7, 0], [0, 0, 0]]))
    assert runs.starts.tolist() == [0, 2, 3] and runs.values.tolist() == [7, 0, 0]


def _scene(seed: int, height: int = 61, width: int = 83) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return synthetic_ground_truth(rng, synthetic_categories(), height, width)[0]


@pytest.mark.parametrize("strategy", [0, 1, 2, 3, 4])  # zlib strategies -> different filters
@pytest.mark.parametrize("alpha", [False, True])
def test_opencv_written_pngs(tmp_path, monkeypatch, strategy, alpha):
    ids = _scene(strategy)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    pixels = rgb[..., ::-1]
    if alpha:  # an alpha channel is ignored, as by the COCO API's rgb2id
        pixels = np.dstack([pixels, np.full(ids.shape, 200, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), pixels, [cv2.IMWRITE_PNG_STRATEGY, strategy])
    expected = read_panoptic_png(tmp_path / "a.png")
    _forbid_fallback(monkeypatch)  # OpenCV's PNGs take the fast path
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), expected)
    np.testing.assert_array_equal(expected, ids)


def test_pil_written_pngs_with_paeth_rows_fall_back(tmp_path):
    ids = _scene(5)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")  # adaptive filters: Paeth/Average rows too
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)


def _png_with_filters(path: Path, ids: np.ndarray, kinds: list[int]) -> None:
    """Write an RGB PNG whose row r uses PNG filter ``kinds[r]`` (0 None, 1 Sub, 2 Up, 3 Average,
    4 Paeth), to cover decoder paths that encoders pick only by their own heuristics."""
    import struct
    import zlib

    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.int64)
    raw = rgb.reshape(ids.shape[0], -1)  # [H, W * 3]
    rows = []
    for r, kind in enumerate(kinds):
        up = raw[r - 1] if r else np.zeros_like(raw[r])
        left = np.concatenate([[0, 0, 0], raw[r, :-3]])
        upleft = np.concatenate([[0, 0, 0], up[:-3]])
        p = left + up - upleft
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        predictor = [0, left, up, (left + up) // 2, paeth][kind]
        rows.append(np.concatenate([[kind], (raw[r] - predictor) % 256]).astype(np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", ids.shape[1], ids.shape[0], 8, 2, 0, 0, 0)
    idat = zlib.compress(np.concatenate(rows).tobytes())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _forbid_fallback(monkeypatch) -> None:
    def fail(path):
        raise AssertionError(f"{path} went through the plain decoder")

    monkeypatch.setattr(runs_module, "read_panoptic_png", fail)


@pytest.mark.parametrize(
    "pattern, fast",
    [
        ([2, 2, 1, 0, 2, 2, 2, 1, 1, 0, 0, 2], True),  # Up first (above: zeros), after None/Sub/Up
        ([0] * 12, True),  # all None
        ([1, 2] * 40, False),  # more None/Up rows than the fast path takes: the plain decoder
        ([1, 3, 1, 4, 2, 1], False),  # Average and Paeth: the plain decoder
    ],
)
def test_every_filter_type(tmp_path, monkeypatch, pattern, fast):
    ids = _scene(4, len(pattern), 37)
    _png_with_filters(tmp_path / "a.png", ids, pattern)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)  # a valid PNG
    if fast:
        _forbid_fallback(monkeypatch)
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)


def test_zlib_path_equals_libdeflate_path(tmp_path, monkeypatch):
    ids = _scene(9, 50, 70)
    write_panoptic_png(tmp_path / "a.png", ids)
    monkeypatch.setattr(runs_module, "_libdeflate", lambda: None)
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)


def test_real_sample_pngs_with_one_reader(tmp_path):
    require(DATA)
    reader = PanopticPngReader()  # buffers reused across images of different sizes
    pngs = sorted(DATA.glob("*/panoptic/*.png")) + sorted(DATA.glob("*/gtFine/*/*.png"))
    assert len(pngs) == 3
    for png in pngs:
        _assert_same(reader.read(png), read_panoptic_png(png))
        resaved = tmp_path / png.name  # re-encoded by OpenCV: the fast path
        write_panoptic_png(resaved, read_panoptic_png(png))
        _assert_same(reader.read(resaved), read_panoptic_png(png))


def test_overlap_runs_sum_to_the_pair_histogram():
    # Reference: np.unique over gt * 2^24 + pred pixel keys, as the COCO API counts overlaps.
    gt, pred = _scene(1), _scene(2)
    gt_ids, pred_ids, lengths = overlap_runs(runs_from_ids(gt), runs_from_ids(pred))
    keys, counts = np.unique(gt * 2**24 + pred, return_counts=True)
    ours = {}
    for key, length in zip(gt_ids * 2**24 + pred_ids, lengths):
        ours[int(key)] = ours.get(int(key), 0) + int(length)
    assert ours == dict(zip(keys.tolist(), counts.tolist()))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="panoptic PNG not found: .*nope.png"):
        read_panoptic_runs(tmp_path / "nope.png")


def test_concatenated_runs_keep_images_apart():
    # Three maps of different sizes, the last one starting with the id that ends the second: one
    # row of runs whose expansion is the maps flattened end to end, each run tagged with its map.
    maps = [_scene(3, 23, 29), _scene(4, 31, 22), np.full((2, 4), _scene(4, 31, 22)[-1, -1])]
    row, image = concatenate_runs([runs_from_ids(m) for m in maps])
    assert row.shape == (1, sum(m.size for m in maps))
    np.testing.assert_array_equal(_expand(row)[0], np.concatenate([m.ravel() for m in maps]))
    assert image.tolist() == sum(
        ([i] * runs_from_ids(m).starts.size for i, m in enumerate(maps)), []
    )


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200, 4099])
def test_nonzero_bytes_equal_flatnonzero(size):
    rng = np.random.default_rng(size)
    data = np.where(rng.random(size) < 0.03, rng.integers(1, 256, size), 0).astype(np.uint8)
    data[-1:] = 7  # a non-zero byte in the tail after the last whole 64-byte block
    np.testing.assert_array_equal(runs_module._nonzero_bytes(data), np.flatnonzero(data))


def test_inflate_checks_the_zlib_header():
    raw = np.arange(1000, dtype=np.uint32).tobytes()
    out = np.empty(len(raw), dtype=np.uint8)
    assert runs_module._inflate(zlib.compress(raw), out) and out.tobytes() == raw
    assert not runs_module._inflate(b"\x00" + zlib.compress(raw)[1:], out)  # not deflate
    assert not runs_module._inflate(zlib.compress(raw), np.empty(len(raw) + 1, np.uint8))
