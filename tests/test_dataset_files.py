"""Image and panoptic-PNG files checked as data: a grayscale label map, a truncated JPEG found by
full validation (reading a sound one only by its ends), a PNG photo's EXIF orientation."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from sample_data import DATA, require

from axial_deeplab.data.check import validate_dataset
from axial_deeplab.data.coco_panoptic import load_coco_panoptic
from axial_deeplab.data.panoptic_io import read_panoptic_png
from axial_deeplab.data.validation import DatasetFormatError

COCO = DATA / "coco_panoptic_sample"


def coco_copy(tmp_path: Path) -> Path:
    require(COCO)
    root = tmp_path / "coco"
    shutil.copytree(COCO, root)
    return root


def load_coco(root: Path):
    return load_coco_panoptic(
        str(root / "panoptic_examples.json"), str(root / "panoptic"), str(root / "images")
    )


def test_grayscale_panoptic_png_is_named_as_such(tmp_path):
    """A label map saved as an 8-bit grey PNG: said so, instead of 'segment ids [4605510, ...]
    are in the PNG but not in segments_info'."""
    import cv2

    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), np.full((6, 8), 3, np.uint8))
    with pytest.raises(
        DatasetFormatError, match=r"gray\.png: a grayscale PNG; panoptic PNGs are RGB"
    ):
        read_panoptic_png(path)


def test_full_validation_finds_a_truncated_jpeg(tmp_path):
    """Training stops on a truncated JPEG when it reaches it; full validation now lists it."""
    root = coco_copy(tmp_path)
    photo = root / "images" / "000000439180.jpg"
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    records, meta = load_coco(root)
    problems = validate_dataset(records, meta).problems
    assert [(Path(p.file).name, p.message) for p in problems] == [
        ("000000439180.jpg", "cannot read: corrupt JPEG: truncated: no end-of-image marker after "
         "the image data")
    ]  # fmt: skip


def test_png_with_exif_orientation_is_turned_upright_like_a_jpeg(tmp_path):
    """OpenCV turns JPEGs and PNGs upright by their EXIF orientation; the fast PNG path ignored a
    PNG's eXIf chunk, so tools/infer.py predicted such a photo sideways (the demo did not)."""
    import cv2
    from PIL import Image

    from axial_deeplab.data.images import decode_image_file

    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    upright = decode_image_file(path)
    assert upright.shape == (10, 6, 3)
    np.testing.assert_array_equal(upright, cv2.imread(str(path))[..., ::-1])
    plain = tmp_path / "plain.png"
    Image.fromarray(pixels).save(plain)
    np.testing.assert_array_equal(decode_image_file(plain), pixels)


def test_full_validation_reads_a_sound_jpeg_by_its_ends(monkeypatch):
    """A sound JPEG is checked from its first 64 KiB and last 4 KiB, not read whole (COCO train:
    about 19 GB less to read); a damaged one is read whole (the test above)."""
    from axial_deeplab.data import check

    seen = []
    original = check.jpeg_problem
    monkeypatch.setattr(
        check, "jpeg_problem", lambda data: seen.append(len(data)) or original(data)
    )
    photo = COCO / "images" / "000000142238.jpg"  # 362 KB
    assert check.image_size(str(photo)) == (427, 640)
    assert seen == [check.JPEG_HEAD]
