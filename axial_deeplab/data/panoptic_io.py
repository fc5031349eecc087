"""Reading and writing panoptic PNGs (segment id = R + 256 * G + 256^2 * B)."""

from __future__ import annotations

import os

import numpy as np

from .panoptic_png import png_header, read_png_ids

GRAY_COLOR_TYPES = (0, 4)  # PNG colour types: grey, grey + alpha

MAX_SEGMENT_ID = 256**3 - 1


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB to ``[H, W]`` int64 segment ids."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` integer segment ids (``0 <= id < 2^24``) to ``[H, W, 3]`` uint8 RGB."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(
            f"segment ids must lie in [0, {MAX_SEGMENT_ID}] to fit a panoptic PNG, "
            f"got range [{ids.min()}, {ids.max()}]"
        )
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a panoptic PNG into ``[H, W]`` int64 segment ids; clear error if missing or corrupt.

    8-bit RGB(A) PNGs are checked and decoded by :func:`.panoptic_png.read_png_ids` (10x faster
    than OpenCV on 1024x2048 maps, checksums included), other PNGs by libpng through OpenCV."""
    path = os.fspath(path)
    from .images import ImageDecodeError, decode_image_bytes
    from .validation import DatasetFormatError

    try:
        with open(path, "rb") as f:
            blob = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"panoptic PNG not found: {path}") from None
    try:
        ids = read_png_ids(blob, path)
        if ids is not None:
            return ids.astype(np.int64)
        if png_header(blob, path)[3] in GRAY_COLOR_TYPES:
            raise DatasetFormatError(
                f"{path}: a grayscale PNG; panoptic PNGs are RGB, segment id = R + 256 G + "
                "256^2 B (is this a semantic or label-id map?)"
            )
        bgr = decode_image_bytes(blob, path)  # other PNGs: libpng through OpenCV
    except (ImageDecodeError, ValueError) as exc:
        raise DatasetFormatError(f"panoptic PNG: {exc}") from None
    return rgb2id(bgr[..., ::-1])


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write ``[H, W]`` segment ids as a panoptic PNG, atomically (temp file then rename)."""
    import cv2  # imported here: 0.1 s of the PQ command's start-up otherwise

    path = os.fspath(path)
    tmp = f"{path}.tmp.png"
    if not cv2.imwrite(tmp, id2rgb(ids)[..., ::-1]):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)
