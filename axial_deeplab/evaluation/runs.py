"""Panoptic id maps as horizontal runs, read straight from PNG files, and gt x pred overlaps.

A panoptic map is piecewise constant, so PQ's statistics (the area of every gt x pred overlap) can
be counted on maximal horizontal runs instead of pixels. Reading a PNG to runs skips most per-pixel
work: a row stored with the PNG "Sub" filter holds zero wherever the id does not change, so the run
starts are its non-zero pixels and the ids follow from a byte-wise running sum over the runs only.

Every file's header is checked first: a header claiming more pixels than the file can hold
(deflate expands at most ~1032x) is an error before any decoder allocates. Then, for 8-bit
RGB/RGBA non-interlaced PNGs (every panoptic PNG seen), the chunks are walked here with each
chunk's CRC-32 checked (on the compressed bytes: cheap) and the image data is inflated by
libdeflate (the ``deflate`` package), which checks the stream's Adler-32; damage is an error
naming the file. Two paths then, chosen by measurement (bench/panoptic_eval.py):
- the fast path: rows using the None, Sub or (a few) Up filters, as OpenCV (our writer) stores
  them, become runs without a per-pixel decode: about 0.2 ms for a 640x480 map, 8x less than any
  full decoder measured;
- other rows (PIL's adaptive Up/Paeth rows, as the official COCO and Cityscapes PNGs are written)
  are decoded by libspng (``pyspng``), the fastest full decoder measured here (CPU per 640x480
  map: pyspng 1.4 ms, imagecodecs 1.6, OpenCV 1.9, PIL 3.4), most of which is zlib's inflate:
  libspng is handed the rows libdeflate inflated, as stored deflate blocks (0.6 ms in all).
Other PNGs (palettes, grey, 16 bits, interlacing) are decoded by libpng through OpenCV.
The runs never depend on the path taken: tests compare them with libpng's decode, also on
thousands of randomly damaged files.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import deflate
import numpy as np
import pyspng

from axial_deeplab.data.panoptic_io import read_panoptic_png

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk with its CRC
_BYTES_PER_PIXEL = {2: 3, 6: 4}  # PNG colour type -> bytes per pixel (RGB, RGBA) at 8 bits
_MAX_SPECIAL_ROWS = 64  # above this many None/Up rows, the per-pixel decoder is as fast
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # by colour
_MAX_DEFLATE_RATIO = 1032  # deflate's largest expansion: 258 bytes from one ~2-bit code


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


def png_header(blob: bytes, path: str) -> tuple[int, int, int, int, int]:
    """``(height, width, bit depth, colour type, interlace)`` from a PNG's IHDR, which must come
    first; ValueError naming ``path`` if ``blob`` is not a PNG, or if its header claims more pixels
    than the file could hold (deflate expands at most ~1032x), so that no decoder is asked to
    allocate more than a bounded multiple of the file size."""
    if not blob.startswith(_SIGNATURE) or len(blob) < 33 or blob[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ValueError(f"cannot decode panoptic PNG (not a PNG file): {path}")
    width, height, depth, color, method, filters, interlace = struct.unpack_from(
        ">IIBBBBB", blob, 16
    )
    if (
        not 0 < width < 2**31 or not 0 < height < 2**31
        or depth not in _DEPTHS.get(color, ()) or method or filters or interlace > 1
    ):  # fmt: skip
        raise ValueError(
            f"cannot decode panoptic PNG (invalid IHDR: {width}x{height}, bit depth {depth}, "
            f"colour type {color}, methods {method}/{filters}/{interlace}): {path}"
        )
    if height * (1 + width * (depth + 7) // 8) > _MAX_DEFLATE_RATIO * len(blob):
        raise ValueError(
            f"cannot decode panoptic PNG (corrupt: its header claims {width}x{height} pixels, "
            f"more than a file of {len(blob)} bytes can hold): {path}"
        )
    return height, width, depth, color, interlace


def _checked_idat(blob: bytes, header: tuple, path: str) -> bytes | memoryview | None:
    """The image data of an 8-bit RGB/RGBA non-interlaced PNG, every chunk's CRC-32 checked (on
    the compressed bytes: cheap); ValueError naming ``path`` for a bad CRC or a truncated file.
    None for other PNGs (other depths and colour types, interlacing, unknown critical chunks)."""
    _, _, depth, color, interlace = header
    if depth != 8 or color not in _BYTES_PER_PIXEL or interlace != 0:
        return None
    pos, idat, view, last = 8, [], memoryview(blob), b""
    while True:
        if pos + 12 > len(blob):
            raise ValueError(f"cannot decode panoptic PNG (truncated: no IEND chunk): {path}")
        (length,) = struct.unpack_from(">I", blob, pos)
        end = pos + 8 + length  # the chunk's CRC follows its data
        if end + 4 > len(blob):
            raise ValueError(f"cannot decode panoptic PNG (truncated chunk at byte {pos}): {path}")
        kind = blob[pos + 4 : pos + 8]
        if zlib.crc32(view[pos + 4 : end]) != struct.unpack_from(">I", blob, end)[0]:
            raise ValueError(f"cannot decode panoptic PNG (CRC error in chunk {kind!r}): {path}")
        if kind == b"IDAT":
            if idat and last != b"IDAT":
                raise ValueError(
                    f"cannot decode panoptic PNG (IDAT chunks not consecutive): {path}"
                )
            idat.append(view[pos + 8 : end])
        elif kind == b"IEND":
            break
        elif kind == b"IHDR" and pos > 8 or kind == b"PLTE" and idat:
            raise ValueError(f"cannot decode panoptic PNG ({kind!r} chunk out of place): {path}")
        elif not kind[0] & 0x20 and kind not in (b"IHDR", b"PLTE"):
            return None  # an unknown critical chunk: libpng decides
        pos, last = end + 4, kind
    if not idat:
        raise ValueError(f"cannot decode panoptic PNG (no image data): {path}")
    return idat[0] if len(idat) == 1 else b"".join(idat)


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
    """Reads panoptic PNGs as :class:`Runs`: the fast path for Sub-filtered rows, else libspng."""

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
        idat = _checked_idat(blob, header, path)
        if idat is None:  # not 8-bit RGB(A): libpng through OpenCV, which checks the checksums
            return runs_from_ids(read_panoptic_png(path))
        height, width, _, color, _ = header
        size = height * (1 + width * _BYTES_PER_PIXEL[color])
        try:  # libdeflate checks the zlib stream's Adler-32
            buffer = np.frombuffer(deflate.zlib_decompress(idat, size), dtype=np.uint8)
        except deflate.DeflateError:
            buffer = None
        if buffer is None or buffer.size != size:
            raise ValueError(
                f"cannot decode panoptic PNG (image data corrupt: bad zlib stream, Adler-32 or "
                f"size for {width}x{height} pixels): {path}"
            )
        runs = _runs_from_filtered(buffer, height, width, _BYTES_PER_PIXEL[color])
        return runs if runs is not None else _decoded_runs(blob, buffer, path)


def _decoded_runs(blob: bytes, raw: np.ndarray, path: str) -> Runs:
    """Runs of an 8-bit RGB(A) PNG, already checked and inflated to ``raw`` (its filtered rows),
    decoded by libspng to RGB (alpha, if any, is ignored, as by the COCO API's ``rgb2id``).

    libspng inflates with zlib, 25x slower than libdeflate here (1.3 ms of its 1.6 ms for a
    640x480 map), so it is handed the rows already inflated: the same PNG with one IDAT chunk
    holding them as stored (uncompressed) deflate blocks, checksums recomputed.
    """
    stored = deflate.zlib_compress(raw, 0)  # level 0: stored blocks, with the Adler-32
    rewrapped = b"".join(
        [blob[:33], struct.pack(">I", len(stored)), b"IDAT", stored,
         struct.pack(">I", deflate.crc32(stored, deflate.crc32(b"IDAT"))), _IEND]
    )  # fmt: skip
    try:
        rgb = pyspng.load(rewrapped, "RGB")  # [H, W, 3] uint8
    except RuntimeError as err:
        raise ValueError(f"cannot decode panoptic PNG ({err}): {path}") from None
    height, width, _ = rgb.shape
    flat = rgb.reshape(-1)  # [3 H W]
    ids = np.empty(height * width, dtype=np.uint32)  # [H W]
    # Each pixel's R, G, B bytes and the next pixel's R read as one little-endian uint32 (so all
    # but the last pixel), masked to the id.
    words = np.ndarray((ids.size - 1,), dtype="<u4", buffer=flat, strides=(3,))
    np.bitwise_and(words, np.uint32(0xFFFFFF), out=ids[:-1])
    ids[-1] = int(flat[-3]) | int(flat[-2]) << 8 | int(flat[-1]) << 16
    return runs_from_ids(ids.reshape(height, width))


def read_panoptic_runs(path: str | os.PathLike) -> Runs:
    """Read one panoptic PNG as runs (see :class:`PanopticPngReader` to read many)."""
    return PanopticPngReader().read(path)
