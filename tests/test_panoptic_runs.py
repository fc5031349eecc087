"""Reading panoptic PNGs as runs: equal to a plain decode for every PNG filter, on every path (the
compiled reader; numpy's fast path and its full decode), and on randomly damaged files (a
differential fuzz test against libpng, through OpenCV); the full decoder ``read_panoptic_png``
too."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sample_data import require

from axial_deeplab.data.panoptic_io import read_panoptic_png, rgb2id, write_panoptic_png
from axial_deeplab.evaluation import runs as runs_module
from axial_deeplab.evaluation.runs import (
    PanopticPngReader,
    concatenate_runs,
    overlap_runs,
    read_panoptic_runs,
    runs_from_ids,
    runs_from_rgb,
)
from axial_deeplab.evaluation.synthetic import synthetic_categories, synthetic_ground_truth

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(params=["compiled", "numpy"])
def reader_kind(request, monkeypatch) -> str:
    """Runs the test with the compiled reader (``_png_runs.c``), then with the numpy path that
    replaces it where no C compiler was found at install."""
    if request.param == "compiled":
        assert runs_module._png_runs is not None, "the compiled PNG reader was not built"
    else:
        monkeypatch.setattr(runs_module, "_png_runs", None)
    return request.param


def test_the_compiled_reader_is_built():
    # setup.py builds it at install (optional there, so that an install without a C compiler
    # still works); where the project is set up with `make setup`, it must exist.
    assert runs_module._png_runs is not None, "run `make setup` (a C compiler is needed)"


def test_the_compiled_reader_checks_its_arguments():
    # Its caller sizes the rows from the PNG header; a mismatch is an error, never a read past
    # the buffer. 2 rows of 3 RGB pixels need 2 * (1 + 9) = 20 bytes.
    runs_from_rows = runs_module._png_runs.runs_from_rows
    rows = bytes([1] + [0] * 9) * 2  # two Sub rows of zeros: one run of id 0 per row
    starts, values = runs_from_rows(rows, 2, 3, 3)
    assert np.frombuffer(starts, np.int64).tolist() == [0, 3]
    assert np.frombuffer(values, np.int64).tolist() == [0, 0]
    for args in [(rows[:-1], 2, 3, 3), (rows, 3, 3, 3), (rows, 2, 3, 2), (rows, 0, 3, 3)]:
        with pytest.raises(ValueError, match="rows do not hold"):
            runs_from_rows(*args)


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
def test_opencv_written_pngs(reader_kind, tmp_path, monkeypatch, strategy, alpha):
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


@pytest.mark.parametrize("alpha", [False, True])
def test_pil_written_pngs(reader_kind, tmp_path, monkeypatch, alpha):
    ids = _scene(5)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    if alpha:  # ignored, as by the COCO API's rgb2id
        rgb = np.dstack([rgb, (ids * 7 % 256).astype(np.uint8)])
    Image.fromarray(rgb).save(tmp_path / "a.png")  # adaptive filters: Paeth/Average rows too
    if reader_kind == "compiled":  # no per-pixel decode (numpy's path decodes these rows)
        _forbid_fallback(monkeypatch)
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)


def _png_with_filters(
    path: Path, ids: np.ndarray, kinds: list[int], alpha: np.ndarray | None = None
) -> None:
    """Write an RGB PNG (RGBA with ``alpha`` [H, W]) whose row r uses PNG filter ``kinds[r]``
    (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), to cover decoder paths that encoders pick only by
    their own heuristics."""
    channels = [ids % 256, ids // 256 % 256, ids // 65536] + ([] if alpha is None else [alpha])
    bpp = len(channels)
    raw = np.stack(channels, axis=-1).astype(np.int64).reshape(ids.shape[0], -1)  # [H, W * bpp]
    rows = []
    for r, kind in enumerate(kinds):
        up = raw[r - 1] if r else np.zeros_like(raw[r])
        left = np.concatenate([[0] * bpp, raw[r, :-bpp]])
        upleft = np.concatenate([[0] * bpp, up[:-bpp]])
        p = left + up - upleft
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        predictor = [0, left, up, (left + up) // 2, paeth][kind]
        rows.append(np.concatenate([[kind], (raw[r] - predictor) % 256]).astype(np.uint8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", ids.shape[1], ids.shape[0], 8, 2 if bpp == 3 else 6, 0, 0, 0)
    idat = zlib.compress(np.concatenate(rows).tobytes())
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _forbid_fallback(monkeypatch) -> None:
    def fail(*args):
        raise AssertionError(f"{args[-1]} went through the plain decoder")

    monkeypatch.setattr(runs_module, "decode_pixels", fail)
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
def test_every_filter_type(reader_kind, tmp_path, monkeypatch, pattern, fast):
    ids = _scene(4, len(pattern), 37)
    _png_with_filters(tmp_path / "a.png", ids, pattern)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)  # a valid PNG
    if fast or reader_kind == "compiled":  # the compiled reader decodes every filter itself
        _forbid_fallback(monkeypatch)
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)


@pytest.mark.parametrize("seed", range(40))
def test_random_filters_on_random_maps(reader_kind, tmp_path, seed):
    # Any filter on any row, on maps that are piecewise constant (as panoptic maps are), noise of
    # ids differing in one, two or three bytes (most pixels start a run) or stripes (Up rows
    # repeat), at sizes down to one pixel: the compiled reader undoes each filter from the row
    # above's runs, so every case where a pixel changes without a stored byte changing counts.
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 24)), int(rng.integers(1, 48))
    palette = np.array([0, 1, 255, 256, 65536, 65793, 0xFFFFFF, 0x10203, 0x7F7F7F, 0x808080])
    kind = seed % 3
    if kind == 0:
        ids = _scene(seed)[:height, :width]
    elif kind == 1:
        ids = palette[rng.integers(0, palette.size, (height, width))]
    else:
        ids = np.repeat(palette[rng.integers(0, palette.size, (1, width))], height, axis=0)
        ids[rng.integers(0, height, 3), rng.integers(0, width, 3)] = 0x123456
    alpha = rng.integers(0, 256, ids.shape) if seed % 4 == 1 else None  # ignored, as by rgb2id
    _png_with_filters(tmp_path / "a.png", ids, rng.integers(0, 5, height).tolist(), alpha)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)  # a valid PNG
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)


def test_undefined_filter_type_is_an_error_naming_the_file(reader_kind, tmp_path):
    ids = _scene(8)[:6, :9]
    _png_with_filters(tmp_path / "a.png", ids, [1, 2, 4, 0, 3, 1])
    chunks = dict(_chunks((tmp_path / "a.png").read_bytes()))
    rows = bytearray(zlib.decompress(chunks[b"IDAT"]))
    rows[3 * (1 + 9 * 3)] = 7  # row 3's filter type: PNG defines 0-4
    (tmp_path / "a.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", chunks[b"IHDR"])
        + _chunk(b"IDAT", zlib.compress(bytes(rows))) + _chunk(b"IEND", b"")
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot decode panoptic PNG .*a.png"):
        read_panoptic_runs(tmp_path / "a.png")
    assert _reference_ids((tmp_path / "a.png").read_bytes()) is None  # libpng refuses it too


def test_real_sample_pngs_with_one_reader(reader_kind, tmp_path):
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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos < len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        out.append((blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def test_header_claiming_more_pixels_than_the_file_holds(tmp_path):
    # A valid-CRC IHDR of 2^20 x 2^20 RGB pixels (3 TiB) in a 57-byte file: rejected before any
    # decoder allocates (deflate cannot expand 57 bytes past ~59 kB).
    header = struct.pack(">IIBBBBB", 2**20, 2**20, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x01" + b"\x00" * 30)
    blob = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )
    (tmp_path / "big.png").write_bytes(blob)
    with pytest.raises(ValueError, match="big.png"):
        read_panoptic_runs(tmp_path / "big.png")


@pytest.mark.parametrize("damage", ["idat_crc", "adler"])
def test_checksums_are_verified(reader_kind, tmp_path, damage):
    # A wrong IDAT CRC or a wrong zlib Adler-32 (with the CRC fixed up) is an error naming the
    # file, never a map with changed ids.
    ids = _scene(6, 20, 30)
    write_panoptic_png(tmp_path / "a.png", ids)
    blob = bytearray((tmp_path / "a.png").read_bytes())
    chunks = _chunks(bytes(blob))
    idat = bytearray(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    idat[-1] ^= 1  # the last byte of the Adler-32
    body = _chunk(b"IDAT", bytes(idat))
    if damage == "idat_crc":
        body = body[:-1] + bytes([body[-1] ^ 1])
    header = next(data for kind, data in chunks if kind == b"IHDR")
    blob = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + body + _chunk(b"IEND", b"")
    (tmp_path / "a.png").write_bytes(blob)
    with pytest.raises(ValueError, match="a.png"):
        read_panoptic_runs(tmp_path / "a.png")


def _reference_ids(blob: bytes) -> np.ndarray | None:
    """The id map libpng (through OpenCV) decodes; None if it rejects the file."""
    try:
        bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV's limit
        return None
    return None if bgr is None else rgb2id(bgr[..., ::-1])


def _mutants(blob: bytes, rng: np.random.Generator, count: int):
    """Randomly damaged copies of a PNG: raw byte flips and truncations (CRCs then fail), and
    chunk-aware damage with the CRC recomputed (bytes of IHDR or IDAT changed, chunks dropped or
    repeated), which reaches the header checks, the inflater and the row filters."""
    chunks = _chunks(blob)
    for _ in range(count):
        kind = rng.integers(4)
        if kind == 0:  # flip a few bytes anywhere
            data = bytearray(blob)
            for pos in rng.integers(0, len(data), rng.integers(1, 4)):
                data[pos] ^= int(rng.integers(1, 256))
            yield bytes(data)
        elif kind == 1:  # truncate
            yield blob[: int(rng.integers(8, len(blob)))]
        else:  # change one chunk's data (or drop / repeat it) and fix its CRC
            parts = [list(c) for c in chunks]
            i = int(rng.integers(len(parts)))
            data = bytearray(parts[i][1])
            if kind == 2 and data:
                for pos in rng.integers(0, len(data), rng.integers(1, 3)):
                    data[pos] ^= int(rng.integers(1, 256))
                parts[i][1] = bytes(data)
            elif rng.random() < 0.5:
                del parts[i]
            else:
                parts.insert(i, parts[i])
            yield b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(k, d) for k, d in parts)


def test_damaged_pngs_match_the_reference_decoder(reader_kind, tmp_path):
    # Differential fuzz against libpng (the PNG reference library, through OpenCV): for 400
    # damaged files (OpenCV- and PIL-written originals), the reader returns exactly libpng's id
    # map or raises a ValueError naming the file, and it raises whenever libpng rejects the file.
    # (It may be stricter: a CRC error in an ancillary chunk, which libpng only warns about.)
    rng = np.random.default_rng(0)
    ids = _scene(7, 24, 40)
    write_panoptic_png(tmp_path / "cv.png", ids)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pil.png")
    reader, decoded, rejected = PanopticPngReader(), 0, 0
    for name in ("cv.png", "pil.png"):
        for i, blob in enumerate(_mutants((tmp_path / name).read_bytes(), rng, 200)):
            path = tmp_path / f"m{i}.png"
            path.write_bytes(blob)
            expected = _reference_ids(blob)
            try:
                runs = reader.read(path)
            except ValueError as err:
                assert f"m{i}.png" in str(err)
                with pytest.raises(ValueError, match=f"m{i}.png"):  # the full decoder too
                    read_panoptic_png(path)
                rejected += 1
                continue
            assert expected is not None, f"{name} mutant {i}: libpng rejects it, the reader not"
            _assert_same(runs, expected)
            np.testing.assert_array_equal(read_panoptic_png(path), expected)
            decoded += 1
    assert decoded >= 20 and rejected >= 200  # both outcomes are exercised


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 1), (13, 29), (40, 64)])
def test_runs_from_rgb_equal_runs_from_ids(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    # Few distinct ids differing in one, two or three bytes, in horizontal stretches.
    palette = np.array([0, 1, 256, 65536, 65537, 0xFFFFFF, 0x10203], dtype=np.int64)
    ids = palette[rng.integers(0, palette.size, size=shape)]
    ids[:, 1::2] = ids[:, ::2][:, : ids[:, 1::2].shape[1]]  # pairs of equal pixels
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    runs, reference = runs_from_rgb(rgb), runs_from_ids(ids)
    np.testing.assert_array_equal(runs.starts, reference.starts)
    np.testing.assert_array_equal(runs.values, reference.values)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("kornia_refuses", [False, True])
def test_pil_pngs_with_ancillary_chunks_and_the_libspng_fallback(
    reader_kind, tmp_path, monkeypatch, alpha, kornia_refuses
):
    # Ancillary chunks (transparency, gamma, significant bits) must not change the ids; a file
    # the Rust decoder refuses goes to libspng, with the same result.
    ids = _scene(6)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    if alpha:
        rgb = np.dstack([rgb, (ids * 5 % 256).astype(np.uint8)])
    Image.fromarray(rgb).save(tmp_path / "a.png")
    blob = (tmp_path / "a.png").read_bytes()
    extra = _chunk(b"gAMA", struct.pack(">I", 100000)) + _chunk(b"sBIT", bytes([5] * (3 + alpha)))
    if not alpha:
        extra += _chunk(b"tRNS", b"\x00\x01\x00\x02\x00\x03")
    (tmp_path / "a.png").write_bytes(blob[:33] + extra + blob[33:])
    if kornia_refuses:
        import kornia_rs.io

        def refuse(*args):
            raise RuntimeError("refused")

        monkeypatch.setattr(kornia_rs.io, "decode_image_png_u8", refuse)
    _assert_same(read_panoptic_runs(tmp_path / "a.png"), ids)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)
    np.testing.assert_array_equal(rgb2id(cv2.imread(str(tmp_path / "a.png"))[..., ::-1]), ids)
