"""Decoding image files with checks that libjpeg and OpenCV leave out.

OpenCV decodes a truncated JPEG with one libjpeg line on stderr and grey rows in place of the
missing data, and stops with an assertion on a PNG whose header claims more pixels than it will
allocate. :func:`decode_image_file` reads the bytes once, checks them, then decodes from memory:

- a JPEG must have its markers in order up to the first scan (each header segment inside the
  file) and an end-of-image marker (``FF D9``) after it; a file cut anywhere lacks that marker
  (``FF D9`` cannot occur inside entropy-coded data, where ``FF`` is always stuffed);
- a PNG or JPEG header may not claim more than :data:`MAX_PIXELS` pixels;
- whatever OpenCV cannot decode raises.

Every failure is an :class:`ImageDecodeError` naming the file. Corruption inside a JPEG's
entropy-coded data that keeps its structure intact is not detected (libjpeg itself decodes it).
"""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np

MAX_PIXELS = 1 << 30  # OpenCV's own decoding limit (CV_IO_MAX_IMAGE_PIXELS)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field (TEM, RSTn)
_SOF = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}


class ImageDecodeError(ValueError):
    """An image file that is truncated, corrupt, too large or not an image."""


def jpeg_problem(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """``(problem or None, (height, width) from the frame header or None)`` of JPEG bytes."""
    pos, size = 2, None
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return f"header segments end early or are corrupt (byte {pos})", size
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            return "truncated in the header", size
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:
            return "end-of-image marker before any scan", size
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2 or pos + length > len(data):
            return f"segment FF{marker:02X} at byte {pos - 2} runs past the end of the file", size
        if marker in _SOF and length >= 7:
            size = struct.unpack(">HH", data[pos + 3 : pos + 7])
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos += length
    if data.find(b"\xff\xd9", pos + length) < 0:
        return "truncated: no end-of-image marker after the image data", size
    return None, size


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` claimed by a PNG header, else ``None``."""
    if data.startswith(_PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    return None


def decode_image_bytes(
    data: bytes, path: str, flags: int = cv2.IMREAD_COLOR, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """OpenCV's decoding of ``data`` (``[H, W, 3]`` BGR with the default ``flags``) after the
    checks of the module docstring; raises :class:`ImageDecodeError` naming ``path``.
    ``max_pixels``: a lower limit on the size a PNG or JPEG header may claim (a server's)."""
    if not data:
        raise ImageDecodeError(f"{path}: empty file (0 bytes), not an image")
    size = header_size(data)
    if data.startswith(b"\xff\xd8"):
        problem, size = jpeg_problem(data)
        if problem:
            raise ImageDecodeError(f"{path}: corrupt JPEG: {problem}")
    max_pixels = min(max_pixels, MAX_PIXELS)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageDecodeError(
            f"{path}: header claims {size[0]}x{size[1]} pixels, more than the {max_pixels} "
            "an image may have here"
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        message = " ".join(str(exc).split())
        raise ImageDecodeError(f"{path}: cannot decode image: {message}") from None
    if image is None or image.size == 0:
        raise ImageDecodeError(f"cannot decode image (truncated, corrupt or not an image): {path}")
    return image


def decode_image_file(path: str | os.PathLike) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file (gray and alpha converted), checked as in the
    module docstring; a missing file raises :class:`FileNotFoundError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    # 8-bit RGB(A) PNGs: every chunk's CRC checked, then libspng; one with an eXIf chunk (before
    # its image data) goes to OpenCV, which turns it upright by its orientation as it does JPEGs.
    if data.startswith(_PNG_MAGIC) and data.find(b"eXIf", 0, max(0, data.find(b"IDAT"))) < 0:
        from .panoptic_png import read_png_rgb

        try:
            rgb = read_png_rgb(data, path)
        except ValueError as exc:
            # The PNG checks are shared with the panoptic label maps, and worded for them.
            message = str(exc).replace("cannot decode panoptic PNG", "cannot decode PNG image")
            raise ImageDecodeError(message if path in message else f"{path}: {message}") from None
        if rgb is not None:
            return rgb
    return np.ascontiguousarray(decode_image_bytes(data, path)[..., ::-1])
