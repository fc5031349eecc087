# Shared by the data readers and the evaluators. Written with the evaluation code; the data helper
# may extend it (more checks, more fields), keeping these signatures and the DatasetFormatError type.
"""Metadata validation for panoptic data sets: categories and per-image segments.

Every check raises :class:`DatasetFormatError` naming the file and the offending id, so that a bad
annotation or prediction file is reported before any scoring starts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MAX_SEGMENT_ID = 256**3 - 1  # a panoptic PNG stores ids in 3 bytes: ids must be < 2^24


class DatasetFormatError(ValueError):
    """A data set or prediction file that does not follow the expected format."""


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_categories(categories: list[dict], source: str) -> dict[int, dict]:
    """Check a COCO-style ``categories`` list and return it as ``{id: category}``.

    Each entry needs an int ``id``, a ``name`` and an ``isthing`` of 0/1 (or a bool), and may have
    a ``color`` ``[R, G, B]`` in 0..255; ids are unique.
    ``source`` names the file the list came from, for the error messages.
    """
    if not isinstance(categories, (list, tuple)) or not categories:
        raise DatasetFormatError(
            f"{source}: 'categories' must be a non-empty list, got {categories!r}"
        )
    out: dict[int, dict] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat:
            raise DatasetFormatError(f"{source}: category #{i} has no 'id': {cat!r}")
        cat_id = cat["id"]
        if not _is_int(cat_id):
            raise DatasetFormatError(f"{source}: category id {cat_id!r} (#{i}) is not an int")
        if "name" not in cat:
            raise DatasetFormatError(f"{source}: category id {cat_id} has no 'name'")
        if "isthing" not in cat:
            raise DatasetFormatError(
                f"{source}: category id {cat_id} ({cat['name']!r}) has no 'isthing' (0 or 1)"
            )
        if cat["isthing"] not in (0, 1):  # True/False compare equal to 1/0
            raise DatasetFormatError(
                f"{source}: category id {cat_id} has isthing={cat['isthing']!r}, expected 0 or 1"
            )
        color = cat.get("color")
        if color is not None and not (
            isinstance(color, (list, tuple)) and len(color) == 3
            and all(_is_int(c) and 0 <= c <= 255 for c in color)
        ):  # fmt: skip
            raise DatasetFormatError(
                f"{source}: category id {cat_id} ({cat['name']!r}) has color {color!r}, expected "
                "[R, G, B] integers in 0..255 (or no 'color')"
            )
        if int(cat_id) in out:
            raise DatasetFormatError(f"{source}: duplicate category id {cat_id}")
        same = [c["id"] for c in out.values() if c["name"] == cat["name"]]
        if same:  # two table rows, two legend entries, one name: a copy-paste slip
            raise DatasetFormatError(
                f"{source}: category name {cat['name']!r} is used by ids {same[0]} and {cat_id}; "
                "names must be unique"
            )
        out[int(cat_id)] = cat
    return out


def _hashable_id(value: object) -> bool:
    return (_is_int(value) or isinstance(value, str)) and value != ""


def validate_annotations(annotations: object, source: str) -> dict[object, dict]:
    """Check a COCO panoptic ``annotations`` list and return it as ``{image_id: annotation}``.

    Each entry must be an object with an ``image_id`` (int or non-empty string), a ``file_name``
    string and a ``segments_info`` list; an ``image_id`` may appear once (a repeated one would be
    counted twice by PQ, or shadow the other). Shared by the data readers and the PQ command.
    """
    if not isinstance(annotations, list):
        raise DatasetFormatError(f"{source}: 'annotations' must be a list")
    out: dict[object, dict] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise DatasetFormatError(f"{source}: annotation #{i} is not an object: {ann!r:.80}")
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise DatasetFormatError(f"{source}: annotation #{i} has no '{key}'")
        image_id = ann["image_id"]
        if not _hashable_id(image_id):
            raise DatasetFormatError(
                f"{source}: annotation #{i} has image_id {image_id!r:.80}, expected an int or a "
                "non-empty string"
            )
        if not isinstance(ann["file_name"], str) or not ann["file_name"]:
            raise DatasetFormatError(
                f"{source}: image_id {image_id!r}: file_name {ann['file_name']!r:.80} is not a "
                "file name"
            )
        if not isinstance(ann["segments_info"], list):
            raise DatasetFormatError(
                f"{source}: image_id {image_id!r}: segments_info is not a list"
            )
        if image_id in out:
            raise DatasetFormatError(f"{source}: duplicate annotation for image_id {image_id!r}")
        out[image_id] = ann
    return out


def validate_images(images: object, source: str) -> dict[object, tuple[int, int, str | None]]:
    """Check a COCO ``images`` list (absent: ``None``, allowed) and return
    ``{id: (height, width, file_name or None)}``; ids are unique, sizes positive ints."""
    if images is None:
        return {}
    if not isinstance(images, list):
        raise DatasetFormatError(f"{source}: 'images' must be a list")
    out: dict[object, tuple[int, int, str | None]] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img or not _hashable_id(img["id"]):
            raise DatasetFormatError(f"{source}: images entry #{i} has no int or string 'id'")
        image_id = img["id"]
        for key in ("height", "width"):
            value = img.get(key)
            if not _is_int(value) or value < 1:
                raise DatasetFormatError(
                    f"{source}: image id {image_id!r}: '{key}' is {value!r}, expected an int >= 1"
                )
        name = img.get("file_name")
        if name is not None and not isinstance(name, str):
            raise DatasetFormatError(f"{source}: image id {image_id!r}: file_name is not a string")
        if image_id in out:
            raise DatasetFormatError(f"{source}: duplicate images entry for id {image_id!r}")
        out[image_id] = (int(img["height"]), int(img["width"]), name)
    return out


def validate_segments_info(
    segments_info: list[dict], categories: dict[int, dict], png_path: str
) -> set[int]:
    """Check the entries of one ``segments_info`` list (ids, categories, iscrowd); return the ids."""
    if not isinstance(segments_info, (list, tuple)):
        raise DatasetFormatError(f"{png_path}: segments_info must be a list, got {segments_info!r}")
    fast = _plain_segment_ids(segments_info, categories)
    if fast is not None:
        return fast
    # Something is off (or unusual, e.g. numpy ints): check segment by segment, naming the fault.
    ids: set[int] = set()
    for seg in segments_info:
        for key in ("id", "category_id"):
            if not isinstance(seg, dict) or key not in seg or not _is_int(seg[key]):
                raise DatasetFormatError(f"{png_path}: segment {seg!r} needs an int '{key}'")
        seg_id = int(seg["id"])
        if not 0 < seg_id <= MAX_SEGMENT_ID:
            raise DatasetFormatError(
                f"{png_path}: segment id {seg_id} out of range: ids must be in [1, 2^24 - 1] "
                "(0 is VOID; a PNG holds 3 bytes, and PQ combines ids as gt * 256^3 + pred)"
            )
        if seg_id in ids:
            raise DatasetFormatError(f"{png_path}: duplicate segment id {seg_id} in segments_info")
        ids.add(seg_id)
        if int(seg["category_id"]) not in categories:
            raise DatasetFormatError(
                f"{png_path}: segment id {seg_id} has unknown category_id {seg['category_id']}"
            )
        if seg.get("iscrowd", 0) not in (0, 1):
            raise DatasetFormatError(
                f"{png_path}: segment id {seg_id} has iscrowd={seg['iscrowd']!r}, expected 0 or 1"
            )
    return ids


def _plain_segment_ids(segments_info: list | tuple, categories: dict[int, dict]) -> set[int] | None:
    """The ids of a well-formed ``segments_info`` of plain ints, checked in a few set operations
    (the common case, and the hot path of file-based PQ); None if anything needs a closer look."""
    try:
        ids = [seg["id"] for seg in segments_info]
        cats = {seg["category_id"] for seg in segments_info}
        crowd = {seg.get("iscrowd", 0) for seg in segments_info}
    except (TypeError, KeyError, AttributeError):
        return None
    unique = set(ids)
    plain = all(type(i) is int for i in ids) and all(type(c) is int for c in cats)
    if (
        plain
        and len(unique) == len(ids)
        and (not ids or (min(ids) > 0 and max(ids) <= MAX_SEGMENT_ID))
        and cats <= categories.keys()
        and crowd <= {0, 1}
    ):
        return unique
    return None


def validate_segment_presence(
    present_ids: Iterable[int], listed_ids: set[int], png_path: str
) -> None:
    """Check that the ids present in a PNG (0 = VOID aside) are exactly the listed ones."""
    present = {int(i) for i in present_ids if i != 0}
    extra = sorted(present - listed_ids)
    if extra:
        raise DatasetFormatError(
            f"{png_path}: segment ids {extra[:10]} are in the PNG but not in segments_info"
        )
    missing = sorted(listed_ids - present)
    if missing:
        raise DatasetFormatError(
            f"{png_path}: segment ids {missing[:10]} are in segments_info but absent from the PNG"
        )


def validate_segments(
    png_ids: np.ndarray,
    segments_info: list[dict],
    categories: dict[int, dict],
    png_path: str,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Check one image's ``[H, W]`` segment-id map against its ``segments_info``.

    Raises if a segment id is in the PNG but not in ``segments_info`` (0 = VOID excepted), listed but
    absent from the PNG, duplicated, outside ``[1, 2^24 - 1]``, or of an unknown category; or if the
    map's ``(H, W)`` differs from ``image_size`` (``(height, width)``).
    """
    png_ids = np.asarray(png_ids)
    if png_ids.ndim != 2:
        raise DatasetFormatError(
            f"{png_path}: expected an [H, W] id map, got shape {png_ids.shape}"
        )
    if image_size is not None and tuple(png_ids.shape) != tuple(image_size):
        raise DatasetFormatError(
            f"{png_path}: PNG size (H, W) = {tuple(png_ids.shape)} differs from the image size "
            f"{tuple(image_size)}"
        )
    listed = validate_segments_info(segments_info, categories, png_path)
    validate_segment_presence(np.unique(png_ids), listed, png_path)
