"""Building the per-image records shared by the COCO and Cityscapes readers."""

from __future__ import annotations

import json
import os

from .validation import DatasetFormatError, validate_images, validate_segments_info


def read_json(path: str, role: str = "panoptic") -> dict:
    """A COCO panoptic JSON object from ``path``, with errors that name the file (and ``role``)."""
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (a relative path: from {os.getcwd()})"
        raise FileNotFoundError(f"{role} JSON not found: {path}{where}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DatasetFormatError(f"{path}: expected an object with an 'annotations' list")
    return data


def train_segments(
    segments_info: list[dict],
    categories: dict[int, dict],
    id_to_train: dict[int, int],
    source: str,
) -> list[dict]:
    """Check one image's ``segments_info`` (file category ids) and map them to train ids.

    ``source`` names the PNG (and JSON) in errors. Returns new dicts with ``id``, ``category_id``
    (train id), ``dataset_category_id``, ``iscrowd``, ``isthing`` and ``area`` when given.
    """
    validate_segments_info(segments_info, categories, source)
    out = []
    for seg in segments_info:
        cat = int(seg["category_id"])
        new = {
            "id": int(seg["id"]),
            "category_id": id_to_train[cat],
            "dataset_category_id": cat,
            "iscrowd": int(seg.get("iscrowd", 0)),
            "isthing": int(categories[cat]["isthing"]),
        }
        if "area" in seg:
            new["area"] = int(seg["area"])
        out.append(new)
    return out


def panoptic_record(
    ann: dict,
    image_path: str,
    png_path: str,
    size: tuple[int | None, int | None],
    categories: dict[int, dict],
    id_to_train: dict[int, int],
    source: str,
) -> dict:
    """One image's record (detectron2's panoptic dataset-dict keys) from its JSON annotation
    ``ann``; ``size`` is ``(height, width)`` from the JSON's images (None if absent); ``source``
    names the PNG and JSON in errors."""
    return {
        "file_name": image_path,
        "pan_seg_file_name": png_path,
        "image_id": ann["image_id"],
        "height": size[0],
        "width": size[1],
        "segments_info": train_segments(
            ann.get("segments_info", []), categories, id_to_train, source
        ),
    }


def assert_files_exist(records: list[dict], source: str) -> None:
    """Raise on the first record whose image or panoptic PNG is missing."""
    for rec in records:
        for key, what in (("file_name", "image"), ("pan_seg_file_name", "panoptic PNG")):
            if not os.path.isfile(rec[key]):
                raise FileNotFoundError(
                    f"{source}: {what} of image_id {rec['image_id']!r} not found: {rec[key]}"
                )


def image_sizes(data: dict, source: str = "panoptic JSON") -> dict:
    """``{image id: (height, width, file_name)}`` from a JSON's optional ``images`` list
    (checked: unique ids, int sizes; errors name ``source``)."""
    return validate_images(data.get("images"), source)
