"""Panoptic id maps as horizontal runs, read straight from PNG files, and gt x pred overlaps.

A panoptic map is piecewise constant, so PQ's statistics (the area of every gt x pred overlap) can
be counted on maximal horizontal runs instead of pixels. Reading a PNG to runs skips most per-pixel
work: a row stored with the PNG "Sub" filter holds zero wherever the id does not change, so the run
starts are its non-zero pixels and the ids follow from a byte-wise running sum over the runs only.

The fast path reads 8-bit RGB/RGBA non-interlaced PNGs whose rows use the None, Sub or (a few) Up
filters, as OpenCV writes them; it inflates with the system's libdeflate when present (through
ctypes; ~4x faster than zlib) else with :mod:`zlib`. Any other PNG (Average/Paeth rows, palettes,
16 bits, interlacing, many Up rows) is decoded by :func:`~axial_deeplab.data.panoptic_io.
read_panoptic_png`, so the runs never depend on the path taken.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from axial_deeplab.data.panoptic_io import read_panoptic_png

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BYTES_PER_PIXEL = {2: 3, 6: 4}  # PNG colour type -> bytes per pixel (RGB, RGBA) at 8 bits
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


@functools.lru_cache(maxsize=1)
def _libdeflate() -> ctypes.CDLL | None:
    """The system's libdeflate, or None (then zlib is used)."""
    name = ctypes.util.find_library("deflate")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
    lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
    lib.libdeflate_deflate_decompress.restype = ctypes.c_int
    lib.libdeflate_deflate_decompress.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def _inflate(data: bytes, out: np.ndarray) -> bool:
    """Inflate zlib ``data`` into the uint8 buffer ``out`` (exact size); False if it does not fit.

    libdeflate inflates the deflate stream inside the zlib wrapper and skips the wrapper's Adler-32
    check (a tenth of the reading time), as the PNG chunk CRCs are skipped: damage that leaves a
    valid stream of the right size goes unnoticed, as it would in a file without checksums.
    """
    lib = _libdeflate()
    if lib is None:
        try:
            raw = zlib.decompress(data)
        except zlib.error:
            return False
        if len(raw) != out.size:
            return False
        out[:] = np.frombuffer(raw, dtype=np.uint8)
        return True
    if len(data) < 6 or data[0] & 0x0F != 8 or data[1] & 0x20 or (data[0] << 8 | data[1]) % 31:
        return False  # not a zlib header for deflate without a preset dictionary
    stream = np.frombuffer(data, dtype=np.uint8)  # no copy: a pointer past the header
    handle = lib.libdeflate_alloc_decompressor()
    try:
        status = lib.libdeflate_deflate_decompress(
            handle, stream.ctypes.data + 2, len(data) - 2, out.ctypes.data, out.size, None
        )
    finally:
        lib.libdeflate_free_decompressor(handle)
    return status == 0


def _parse(blob: bytes) -> tuple[int, int, int, bytes] | None:
    """``(height, width, bytes_per_pixel, idat)`` of a PNG the fast path handles, else None."""
    if not blob.startswith(_SIGNATURE):
        return None
    pos, header, idat = 8, None, []
    while pos + 8 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        kind = blob[pos + 4 : pos + 8]
        if kind == b"IHDR":
            header = struct.unpack_from(">IIBBBBB", blob, pos + 8)
        elif kind == b"IDAT":
            idat.append(blob[pos + 8 : pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        return None
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in _BYTES_PER_PIXEL or interlace != 0:
        return None
    return height, width, _BYTES_PER_PIXEL[color], b"".join(idat)


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
    """Runs of the inflated PNG rows in ``buffer`` (``H`` rows of ``1 + W * bpp`` bytes and one
    spare byte); None if a filter other than None/Sub/Up is used, or too many None/Up rows."""
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
        # Each pixel's R, G, B bytes (and the next byte: hence the spare one) as a uint32.
        words = np.ndarray(
            (width,), dtype="<u4", buffer=buffer, offset=row * row_bytes + 1, strides=(bpp,)
        ) & np.uint32(0xFFFFFF)  # fmt: skip
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
    """Reads panoptic PNGs as :class:`Runs`, reusing its inflate buffer from image to image
    (a fresh megabyte buffer costs as much in page faults as inflating into it)."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)
        _libdeflate()  # looked up once here, before any worker process is forked

    def read(self, path: str | os.PathLike) -> Runs:
        """Read a panoptic PNG (id = ``R + 256 G + 256^2 B``) as runs; clear error if missing."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"panoptic PNG not found: {path}") from None
        parsed = _parse(blob)
        if parsed is not None:
            height, width, bpp, idat = parsed
            size = height * (1 + width * bpp)
            if self._buffer.size < size + 1:
                self._buffer = np.empty(size + 1, dtype=np.uint8)  # +1: a spare byte
            buffer = self._buffer[: size + 1]
            if _inflate(idat, buffer[:size]):
                runs = _runs_from_filtered(buffer, height, width, bpp)
                if runs is not None:
                    return runs
        return runs_from_ids(read_panoptic_png(path))


def read_panoptic_runs(path: str | os.PathLike) -> Runs:
    """Read one panoptic PNG as runs (see :class:`PanopticPngReader` to read many)."""
    return PanopticPngReader().read(path)
