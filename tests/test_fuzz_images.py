"""Generated broken panoptic PNGs and input images through the PQ command, the training reader
and ``infer.py``.

Every case must end in one clear line: a user-error type whose message names the file, key or id
(no traceback, no "unexpected" error), never a silent result or code execution. The cases
break one file of a 2-image synthetic data set; the tools run in-process through their ``main``,
the same top-level handler as the command line.
"""

import os
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
from fuzz_cases import (
    QUICKSTART,
    _break_file,
    _break_png,
    _exit_line,
    _one_clear_line,
    _pq,
    _training_reader,
    _user_error,
)
from fuzz_cases import base as base  # a fixture
from fuzz_cases import data as data  # a fixture

from axial_deeplab.engine import infer_net
from axial_deeplab.engine.inputs import BadInputError, read_image
from axial_deeplab.evaluation import panoptic


# ------------------------------------------------------------------------------------------------
# Panoptic PNG cases: (name, bytes -> bytes); the message must name the PNG
# ------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _huge_png(_: bytes) -> bytes:
    """A valid PNG signature and IHDR claiming 60000 x 60000 RGB pixels, then one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + _png_chunk(b"IEND", b""))  # fmt: skip


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes([b[mid] ^ 0xFF]) + b[mid + 1 :]


def _reencode(shape_or_gray):
    def edit(b: bytes) -> bytes:
        image = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        if shape_or_gray == "gray":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif shape_or_gray == "jpeg":
            return cv2.imencode(".jpg", image)[1].tobytes()
        elif shape_or_gray == "extra_id":
            image = image.copy()
            image[0, 0] = (9, 9, 9)
        else:
            image = cv2.resize(image, shape_or_gray, interpolation=cv2.INTER_NEAREST)
        return cv2.imencode(".png", image)[1].tobytes()

    return edit


PNG_CASES = [
    ("cut_20_bytes", lambda b: b[:20]),
    ("cut_8_bytes", lambda b: b[:8]),
    ("cut_half", lambda b: b[: len(b) // 2]),
    ("cut_last_20", lambda b: b[:-20]),
    ("zero_bytes", lambda b: b""),
    ("random_bytes", lambda b: np.random.default_rng(0).bytes(len(b))),
    ("flipped_byte", _flip_middle),
    ("huge_header", _huge_png),
    ("other_size", _reencode((16, 16))),
    ("gray", _reencode("gray")),
    ("jpeg_named_png", _reencode("jpeg")),
    ("id_not_listed", _reencode("extra_id")),
    ("deleted", None),
]


@pytest.mark.parametrize("name,edit", PNG_CASES, ids=[c[0] for c in PNG_CASES])
@pytest.mark.parametrize("side", ["gt", "pred"])
def test_pq_command_refuses_broken_png(data, capsys, name, edit, side):
    # Every case, a PNG cut only in its last chunks included: the PQ command's reader checks
    # every chunk's CRC (data/panoptic_png.py), so it refuses what the training reader refuses.
    png = _break_png(data["png_dir" if side == "gt" else "pred_dir"], edit)
    with pytest.raises(SystemExit) as info:
        panoptic.main(_pq(data))
    line = _exit_line(info, capsys)
    _one_clear_line(line, png)
    # named once, without an exception class (an audit's: "X.png: cannot decode ... (truncated
    # or corrupt?): ValueError: cannot decode panoptic PNG (truncated chunk at byte 33): X.png")
    assert line.count(png) == 1 and "Error:" not in line, line


@pytest.mark.parametrize("name,edit", PNG_CASES, ids=[c[0] for c in PNG_CASES])
def test_training_reader_refuses_broken_png(data, name, edit):
    png = _break_png(data["png_dir"], edit)
    with pytest.raises(Exception) as info:
        _training_reader(data)
    _user_error(info.value, png)


# ------------------------------------------------------------------------------------------------
# Image cases: (name, bytes -> bytes) on the JPEG of image 0
# ------------------------------------------------------------------------------------------------
def _cut(fraction: float):
    return lambda b: b[: int(len(b) * fraction)]


def _bad_segment_length(b: bytes) -> bytes:
    return b[:4] + b"\xff\xff" + b[6:]  # APP0/DQT length 65535: runs past the end


IMAGE_CASES = [
    ("jpeg_cut_10pc", _cut(0.1)),
    ("jpeg_cut_50pc", _cut(0.5)),
    ("jpeg_cut_90pc", _cut(0.9)),
    ("jpeg_no_eoi", lambda b: b[:-2]),
    ("jpeg_soi_only", lambda b: b[:2]),
    ("jpeg_header_only", lambda b: b[: b.index(b"\xff\xda") + 8]),
    ("jpeg_bad_segment_length", _bad_segment_length),
    ("jpeg_soi_then_garbage", lambda b: b[:2] + np.random.default_rng(1).bytes(300)),
    ("zero_bytes", lambda b: b""),
    ("garbage", lambda b: np.random.default_rng(2).bytes(500)),
    ("text", lambda b: b"not an image at all\n"),
    ("png_huge_header", _huge_png),
    ("png_cut", lambda b: cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()[:40]),
    ("other_size", lambda b: cv2.imencode(".jpg", np.zeros((20, 20, 3), np.uint8))[1].tobytes()),
    ("deleted", None),
]


def _break_image(folder, edit) -> str:
    return _break_file(folder, "synth_000000.jpg", edit)


@pytest.mark.parametrize("name,edit", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_training_reader_refuses_broken_image(data, name, edit):
    image = _break_image(data["image_dir"], edit)
    with pytest.raises(Exception) as info:
        _training_reader(data)
    _user_error(info.value, image)


@pytest.mark.parametrize("name,edit", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_infer_reader_refuses_broken_image(data, name, edit):
    if name == "other_size":
        pytest.skip("a valid image of another size is a good inference input")
    image = _break_image(data["image_dir"], edit)
    with pytest.raises(BadInputError) as info:
        read_image(str(data["image_dir"] / image))
    _user_error(info.value, image)


def test_infer_skips_every_broken_image_and_counts_them(data, tmp_path, capsys):
    """All image cases at once in a folder with one good image: ``--skip-bad`` predicts the good
    one and names each skipped file; without it the first bad file stops the run in one line."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = data["image_dir"] / "synth_000001.png"
    shutil.copy(good, folder / "good.png")
    jpeg = (data["image_dir"] / "synth_000000.jpg").read_bytes()
    bad = [n for n, e in IMAGE_CASES if e is not None and n != "other_size"]
    for name, edit in IMAGE_CASES:
        if name in bad:
            suffix = ".png" if name.startswith("png") else ".jpg"
            (folder / f"{name}{suffix}").write_bytes(edit(jpeg))
    argv = ["--config-file", QUICKSTART, "--allow-random-weights", "--input", str(folder),
            "--output", str(tmp_path / "out"), "--class-names", str(data["json"])]  # fmt: skip
    summary = infer_net.main([*argv[:-2], "--skip-bad", *argv[-2:]])
    assert summary["images"] == 1 and len(summary["skipped"]) == len(bad)
    assert {os.path.basename(p).split(".")[0] for p in summary["skipped"]} == set(bad)
    with pytest.raises(SystemExit) as info:
        infer_net.main(argv)
    _one_clear_line(str(info.value.code), *bad)
