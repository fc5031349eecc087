"""Panoptic id maps as horizontal runs, read straight from PNG files, and gt x pred overlaps.

A panoptic map is piecewise constant, so PQ's statistics (the area of every gt x pred overlap) can
be counted on maximal horizontal runs instead of pixels, and a PNG can be read to runs without a
per-pixel decode: the PNG row filters store zeros wherever a pixel is predicted exactly, which on
a piecewise-constant map is nearly everywhere.

The file is checked and inflated by :mod:`axial_deeplab.data.panoptic_png` (chunk CRCs, a size
bound, libdeflate with its Adler-32 check). The inflated rows then become runs in one of two ways,
with the same result (tests compare both with libpng's decode, also on randomly damaged files):
- the compiled reader (``_png_runs.c``, built at install) undoes every PNG filter from the row
  above's runs and the row's non-zero bytes: 0.08 ms for a 640x480 map, PIL's adaptive
  Sub/Up/Paeth rows (the official COCO and Cityscapes PNGs) as fast as our writer's Sub rows;
- where it could not be compiled, numpy: rows using the None, Sub or (a few) Up filters, as
  OpenCV (our writer) stores them, become runs without a per-pixel decode (about 0.2 ms); other
  rows are decoded by the Rust png crate (0.47 ms), then cut into runs from their bytes.
Other PNGs (palettes, grey, 16 bits, interlacing) are decoded by libpng through OpenCV.
The numbers: ``bench/panoptic_eval.py`` (whole command) and README, "Performance".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.data.panoptic_png import (
    BYTES_PER_PIXEL,
    checked_idat,
    decode_pixels,
    inflate_rows,
    pixel_ids,
    png_header,
)

try:  # compiled at install (setup.py); without a C compiler, the numpy path, same runs
    from axial_deeplab.evaluation import _png_runs
except ImportError:
    _png_runs = None

_MAX_SPECIAL_ROWS = 64  # above this many None/Up rows, the per-pixel decoder is as fast


@dataclass(frozen=True)
class Runs:
    """An ``[H, W]`` id map as maximal horizontal runs, pixels flattened row-major.

    Run ``k`` covers flat pixels ``starts[k] .. starts[k + 1] - 1`` (the last one up to ``H * W``)
    and has segment id ``values[k]``; every row begins a run.
    """

    shape: tuple[int, int]  # (H, W)
    starts: np.ndarray  # [K] int64, increasing, starts[0] == 0
    values: np.ndarray  # [K] int64 segment ids


def runs_from_ids(ids: np.ndarray) -> Runs:
    """Runs of an ``[H, W]`` integer id map."""
    height, width = ids.shape
    flat = np.ascontiguousarray(ids).reshape(-1)  # [H * W]
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::width] = True
    starts = np.flatnonzero(change)
    return Runs((height, width), starts, flat[starts].astype(np.int64))


def runs_from_rgb(rgb: np.ndarray) -> Runs:
    """Runs of an ``[H, W, 3]`` uint8 RGB panoptic map (id ``R + 256 G + 256^2 B``): a run starts
    where any byte differs from the byte 3 earlier (found 8 bytes at a time: few differ) and at
    each row start; only the run starts are turned into ids."""
    height, width, _ = rgb.shape
    flat = rgb.reshape(-1)  # [3 H W]
    differs = np.not_equal(flat[3:], flat[:-3])  # [3 (H W - 1)]: byte k + 3 vs byte k
    differs[3 * width - 3 :: 3 * width] = True  # pixel k + 1 begins a row: it begins a run
    pixels = _nonzero_bytes(differs.view(np.uint8)) // 3 + 1  # [P] sorted, up to 3 times each
    new = np.empty(pixels.size + 1, dtype=bool)  # [P + 1] first of equal neighbours; pixel 0
    new[:2] = True
    np.not_equal(pixels[1:], pixels[:-1], out=new[2:])
    starts = np.concatenate([[0], pixels])[new]  # [K]
    first = starts * 3  # [K] each run's R byte
    values = flat[first].astype(np.int64)
    values |= flat[first + 1].astype(np.int64) << 8
    values |= flat[first + 2].astype(np.int64) << 16
    return Runs((height, width), starts, values)


def overlap_runs(gt: Runs, pred: Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of the (gt, pred) pair map: ``(gt_ids [S], pred_ids [S], lengths [S])``.

    Summing ``lengths`` by id pair gives the overlap areas that PQ needs.
    """
    height, width = gt.shape
    both = np.concatenate([gt.starts, pred.starts])  # [Kg + Kp]
    order = np.argsort(both, kind="stable")  # merges the two sorted halves, gt first on ties
    gt_run = np.cumsum(order < gt.starts.size) - 1  # the gt run covering each merged start
    pred_run = np.arange(order.size) - 1 - gt_run
    starts = both[order]
    last = np.empty(starts.size, dtype=bool)  # the last of equal starts has both runs advanced
    np.not_equal(starts[1:], starts[:-1], out=last[:-1])
    last[-1] = True
    starts = starts[last]  # [S]
    lengths = np.diff(starts, append=height * width)
    return gt.values[gt_run[last]], pred.values[pred_run[last]], lengths


def concatenate_runs(runs: Sequence[Runs]) -> tuple[Runs, np.ndarray]:
    """Several id maps laid end to end as one ``[1, N]`` row (``N`` their total pixel count),
    and ``[K]`` the index in ``runs`` of each run. Runs stay apart at image boundaries."""
    sizes = [r.shape[0] * r.shape[1] for r in runs]
    offsets = np.cumsum([0, *sizes]).tolist()  # [B + 1] first pixel of each image, then N
    image = np.repeat(np.arange(len(runs)), [r.starts.size for r in runs])  # [K]
    starts = np.concatenate([r.starts + offset for r, offset in zip(runs, offsets)])
    return Runs((1, offsets[-1]), starts, np.concatenate([r.values for r in runs])), image


def _bytewise_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Add 24-bit words byte by byte, each byte mod 256 (what PNG filters do), on uint32 arrays."""
    low = (a & np.uint32(0x7F7F7F)) + (b & np.uint32(0x7F7F7F))  # no carry out of any byte
    return low ^ ((a ^ b) & np.uint32(0x808080))


def _nonzero_bytes(data: np.ndarray) -> np.ndarray:
    """Positions of the non-zero bytes of a uint8 array: 8-byte words with data are found from
    the flags of 8 words at a time, then their bytes (few words hold data: rows are mostly 0)."""
    whole = data.size // 64 * 64
    words = data[:whole].view(np.uint64)  # [N / 8]
    flags = (words != 0).view(np.uint64)  # [N / 64] eight 0/1 bytes, one per word
    blocks = np.flatnonzero(flags != 0)  # [b] groups of 8 words with data
    inside = np.flatnonzero(flags[blocks].view(np.bool_))  # [k] in the [b, 8] flags
    hot = blocks[inside >> 3] * 8 + (inside & 7)  # [k] words with data
    inside = np.flatnonzero(words[hot].view(np.uint8) != 0)  # [j] in the [k, 8] bytes
    tail = np.flatnonzero(data[whole:]) + whole
    return np.concatenate([hot[inside >> 3] * 8 + (inside & 7), tail])


def _merge_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted union of two sorted int arrays."""
    merged = np.concatenate([a, b])
    merged.sort(kind="stable")  # merges the two sorted halves in linear time
    return merged[np.concatenate([[True], merged[1:] != merged[:-1]])]


def _sub_runs(buffer: np.ndarray, kinds: np.ndarray, width: int, bpp: int) -> Runs:
    """Runs of the Sub-filtered rows of the inflated ``buffer`` (other rows: garbage, one run).

    In a Sub row a pixel equal to its left neighbour is stored as zero bytes, so the run starts
    are the pixels with a non-zero byte, and a run's id is the byte-wise sum of the row's stored
    pixels up to it.
    """
    height = kinds.size
    row_bytes = 1 + width * bpp
    data = buffer[: height * row_bytes]
    data[::row_bytes] = 0  # the filter-type bytes (copied in kinds) are not pixel data
    pos = _nonzero_bytes(data)  # [P] = row * row_bytes + 1 + bpp * (x + row * W) + channel
    row = pos // row_bytes
    pixel = (pos - row - 1) // bpp  # [P] flat pixel index, row * W + x
    if bpp == 4 or (kinds != 1).any():  # skip alpha bytes and rows that are not Sub
        keep = (kinds[row] == 1) & ((pos - row - 1) % bpp < 3)
        pixel = pixel[keep]
    starts = _merge_sorted(pixel, np.arange(height) * width)  # [K] run starts; every row begins one
    row = starts // width
    first = starts * bpp + row + 1  # [K] offset of each run's first byte in buffer
    stored = [buffer[first + c].astype(np.uint64) for c in range(3)]  # R, G, B as stored
    # Byte-wise running sum within each row, with bytes in 21-bit lanes of a uint64: a row's sum
    # (< 2^18 per lane) cannot carry into the next lane, and wrap-around of the global running sum
    # cancels in the row differences.
    total = np.cumsum(stored[0] | (stored[1] << 21) | (stored[2] << 42), dtype=np.uint64)
    before = np.zeros(height, dtype=np.uint64)  # [H] running sum before each row
    before[1:] = total[np.flatnonzero(starts == row * width)[1:] - 1]
    sums = total - before[row]
    values = (sums & 0xFF) | ((sums >> 21 & 0xFF) << 8) | ((sums >> 42 & 0xFF) << 16)
    return Runs((height, width), starts, values.astype(np.int64))


def _row_pixels(runs: Runs, row: int) -> np.ndarray:
    """The ``[W]`` uint32 ids of one row, expanded from its runs."""
    width = runs.shape[1]
    lo, hi = np.searchsorted(runs.starts, [row * width, (row + 1) * width])
    lengths = np.diff(runs.starts[lo:hi], append=(row + 1) * width)
    return np.repeat(runs.values[lo:hi].astype(np.uint32), lengths)


def _runs_from_filtered(buffer: np.ndarray, height: int, width: int, bpp: int) -> Runs | None:
    """Runs of the inflated PNG rows in ``buffer`` (``H`` rows of ``1 + W * bpp`` bytes); None if a filter other than None/Sub/Up is used, or too many None/Up rows."""
    row_bytes = 1 + width * bpp
    kinds = buffer[: height * row_bytes : row_bytes].copy()  # [H] filter type of each row
    special = np.flatnonzero(kinds != 1)  # None and Up rows, decoded one by one below
    if kinds.max(initial=0) > 2 or special.size > _MAX_SPECIAL_ROWS:
        return None
    runs = _sub_runs(buffer, kinds, width, bpp)
    if special.size == 0:
        return runs
    decoded: dict[int, np.ndarray] = {}
    for row in special.tolist():
        first = row * row_bytes + 1  # the row's pixel bytes: R, G, B (and A) of each pixel
        rgb = [buffer[first + c : first + row_bytes - 1 : bpp].astype(np.uint32) for c in range(3)]
        words = rgb[0] | rgb[1] << 8 | rgb[2] << 16  # [W] the row's stored R, G, B bytes
        if kinds[row] == 2:  # Up: add the row above
            above = decoded.get(row - 1) if row else np.zeros(width, dtype=np.uint32)
            words = _bytewise_add(_row_pixels(runs, row - 1) if above is None else above, words)
        decoded[row] = words
    rows = np.array(list(decoded))
    pixels = np.stack(list(decoded.values()))  # [R, W]
    change = np.ones(pixels.shape, dtype=bool)
    change[:, 1:] = pixels[:, 1:] != pixels[:, :-1]
    r, x = np.nonzero(change)
    keep = ~np.isin(runs.starts // width, rows)
    starts = np.concatenate([runs.starts[keep], rows[r] * width + x])
    values = np.concatenate([runs.values[keep], pixels[r, x].astype(np.int64)])
    order = np.argsort(starts, kind="stable")
    return Runs((height, width), starts[order], values[order])


class PanopticPngReader:
    """Reads panoptic PNGs as :class:`Runs` (the compiled reader, or numpy's fast path for
    Sub-filtered rows, else a full decode)."""

    def read(self, path: str | os.PathLike) -> Runs:
        """Read a panoptic PNG (id = ``R + 256 G + 256^2 B``) as runs; clear error if missing or
        corrupt."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"panoptic PNG not found: {path}") from None
        header = png_header(blob, path)
        idat = checked_idat(blob, header, path)
        if idat is None:  # not 8-bit RGB(A): libpng through OpenCV, which checks the checksums
            return runs_from_ids(read_panoptic_png(path))
        rows = inflate_rows(idat, header, path)
        if _png_runs is not None:
            return _compiled_runs(rows, header, path)
        runs = _runs_from_filtered(rows, header[0], header[1], BYTES_PER_PIXEL[header[3]])
        if runs is not None:
            return runs
        pixels = decode_pixels(blob, rows, header, path)  # [H, W, 3 or 4]
        return runs_from_rgb(pixels) if pixels.shape[2] == 3 else runs_from_ids(pixel_ids(pixels))


def compiled_reader_built() -> bool:
    """Whether the compiled reader (``_png_runs.c``) was built at install."""
    return _png_runs is not None


def _compiled_runs(rows: np.ndarray, header: tuple, path: str) -> Runs:
    """Runs of an 8-bit RGB(A) PNG's inflated rows by the compiled reader; ValueError naming
    ``path`` for a row filter type that PNG does not define."""
    height, width, _, color, _ = header
    try:
        starts, values = _png_runs.runs_from_rows(rows, height, width, BYTES_PER_PIXEL[color])
    except ValueError as err:
        raise ValueError(f"cannot decode panoptic PNG ({err}): {path}") from None
    return Runs((height, width), np.frombuffer(starts, np.int64), np.frombuffer(values, np.int64))


def read_panoptic_runs(path: str | os.PathLike) -> Runs:
    """Read one panoptic PNG as runs (see :class:`PanopticPngReader` to read many)."""
    return PanopticPngReader().read(path)
