"""Whole-data-set validation: read every PNG (and image header) and list every problem found."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .catalog import DatasetMetadata
from .images import jpeg_problem
from .panoptic_io import read_panoptic_png
from .validation import DatasetFormatError, validate_segments_info


@dataclass(frozen=True)
class Problem:
    """One problem: the file, the image or segment id concerned, and what was expected."""

    file: str
    image_id: object
    message: str

    def __str__(self) -> str:
        return f"{self.file} (image_id {self.image_id!r}): {self.message}"


@dataclass
class ValidationReport:
    """Every problem found by :func:`validate_dataset` over ``num_images`` records."""

    num_images: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{len(self.problems)} problem(s) in {self.num_images} image(s)"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

    def raise_if_problems(self) -> None:
        if self.problems:
            raise DatasetFormatError(str(self))


def distinct_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer ``[H, W]`` map (bincount when the ids are small)."""
    flat = ids.reshape(-1)
    if flat.size and flat.min() >= 0 and flat.max() < max(4 * flat.size, 1 << 16):
        return np.flatnonzero(np.bincount(flat))
    return np.unique(flat)


# A JPEG's header segments are checked in its first JPEG_HEAD bytes and its end-of-image marker
# looked for in its last JPEG_TAIL, so that full validation reads little more than headers; a file
# that fails either (long metadata, data after the marker, damage) is read whole and decides.
JPEG_HEAD = 1 << 16
JPEG_TAIL = 1 << 12


def image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` read from the image header (no decoding); a JPEG's structure is
    checked too (``images.jpeg_problem``: a truncated file lacks its end-of-image marker), so that
    full validation finds what training would stop on."""
    from PIL import Image  # a torchvision dependency

    with open(path, "rb") as f:
        data = f.read(JPEG_HEAD)
        if data.startswith(b"\xff\xd8"):
            size = _jpeg_size(f, data)
            if size is not None:
                return size
            f.seek(0)
            data = f.read()
    if data.startswith(b"\xff\xd8"):
        problem, size = jpeg_problem(data)
        if problem:
            raise ValueError(f"corrupt JPEG: {problem}")
        if size is not None:
            return size
    with Image.open(path) as img:
        width, height = img.size
    return height, width


def _jpeg_size(f, head: bytes) -> tuple[int, int] | None:
    """The frame size of a JPEG whose first bytes ``head`` hold sound header segments and whose
    last ``JPEG_TAIL`` bytes (read from ``f``) end its data with the end-of-image marker; None
    when either is not so (then the whole file decides)."""
    problem, size = jpeg_problem(head)
    if size is None or problem is None:  # no frame header yet / the marker is in the head
        return size
    if not problem.startswith("truncated: no end-of-image"):
        return None
    f.seek(0, os.SEEK_END)
    f.seek(max(len(head), f.tell() - JPEG_TAIL))
    return size if f.read().rstrip(b"\x00").endswith(b"\xff\xd9") else None


def record_problems(
    record: dict, categories: dict[int, dict], *, check_pixels: bool = True
) -> Iterable[Problem]:
    """Yield the problems of one record (file names, sizes, ids; see :func:`validate_dataset`)."""
    image, png, image_id = record["file_name"], record["pan_seg_file_name"], record["image_id"]
    missing = False
    for path, what in ((image, "image"), (png, "panoptic PNG")):
        if not os.path.isfile(path):
            missing = True
            yield Problem(path, image_id, f"{what} file not found")
    try:
        listed = validate_segments_info(record["segments_info"], categories, png)
    except DatasetFormatError as exc:
        yield Problem(png, image_id, str(exc).removeprefix(f"{png}: "))
        listed = {int(s["id"]) for s in record["segments_info"] if "id" in s}
    if missing or not check_pixels:
        return
    try:
        ids = read_panoptic_png(png)
    except (OSError, ValueError) as exc:
        yield Problem(png, image_id, f"cannot read: {exc}")
        return
    try:
        size = image_size(image)
    except (OSError, ValueError) as exc:
        yield Problem(image, image_id, f"cannot read: {exc}")
        return
    if ids.shape != size:
        yield Problem(png, image_id, f"PNG size (H, W) = {ids.shape}, image {image} has {size}")
    expected = (record.get("height"), record.get("width"))
    if None not in expected and tuple(expected) != size:
        yield Problem(image, image_id, f"image size (H, W) = {size}, the JSON says {expected}")
    present = {int(i) for i in distinct_ids(ids) if i != 0}
    extra, absent = sorted(present - listed), sorted(listed - present)
    if extra:
        yield Problem(
            png, image_id, f"segment ids {extra[:10]} are in the PNG but not in segments_info"
        )
    if absent:
        yield Problem(
            png, image_id, f"segment ids {absent[:10]} are in segments_info but absent from the PNG"
        )


def validate_dataset(
    records: list[dict], metadata: DatasetMetadata, *, check_pixels: bool = True
) -> ValidationReport:
    """Check every record; return a report listing every problem (nothing is raised).

    Checks: image and PNG exist; segment entries (int ids in ``[1, 2^24-1]``, unique, known
    category, ``iscrowd`` 0/1); with ``check_pixels``: PNG size = image size (= JSON size when
    given), every non-zero id in the PNG is listed and every listed id is in the PNG.
    ``category_id`` in the records is a train id (as the readers produce them).
    """
    categories = {c["train_id"]: c for c in metadata.categories}
    report = ValidationReport(num_images=len(records))
    for record in records:
        report.problems.extend(record_problems(record, categories, check_pixels=check_pixels))
    return report
