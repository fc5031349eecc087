"""Reader for COCO panoptic format: a JSON, a folder of panoptic PNGs and a folder of images.

The JSON holds ``annotations`` (``file_name`` of the PNG, ``image_id``, ``segments_info``),
``categories`` (``id``, ``name``, ``isthing``, optional ``color``) and, usually, ``images``
(``id``, ``file_name``, ``height``, ``width``). Train ids are the positions of the categories in
the JSON's list (COCO's 133 classes -> 0..132). Any data set in this format can be read, not only
COCO.
"""

from __future__ import annotations

import os

from .catalog import DatasetMetadata, fallback_color
from .records import assert_files_exist, image_sizes, panoptic_record, read_json
from .validation import DatasetFormatError, validate_annotations, validate_categories


def coco_metadata(categories: list[dict], *, name: str, source: str, **kwargs) -> DatasetMetadata:
    """Metadata with train ids in the order of ``categories`` (validated, errors name ``source``)."""
    validate_categories(categories, source)
    cats = tuple(
        {
            "id": int(c["id"]),
            "train_id": i,
            "name": str(c["name"]),
            "isthing": int(c["isthing"]),
            "color": tuple(c.get("color", fallback_color(i))),
        }
        for i, c in enumerate(categories)
    )
    return DatasetMetadata(name=name, categories=cats, **kwargs)


def load_coco_panoptic(
    json_file: str,
    png_dir: str,
    image_dir: str,
    *,
    name: str = "coco_panoptic",
    check_files: bool = True,
) -> tuple[list[dict], DatasetMetadata]:
    """Records and metadata of a COCO-panoptic-format data set (see :mod:`.catalog`).

    Checks, before any pixel is read: the categories (``isthing`` present, ids unique), every
    segment's id and category, duplicate image ids and, with ``check_files``, that every image and
    PNG exists. Errors name the file and the id. Pixel-level checks: :func:`.check.validate_dataset`.
    """
    data = read_json(json_file)
    if "categories" not in data:
        raise DatasetFormatError(f"{json_file}: no 'categories' list (needed for isthing)")
    meta = coco_metadata(
        data["categories"],
        name=name,
        source=json_file,
        evaluator_type="coco_panoptic_seg",
        image_dir=image_dir,
        panoptic_dir=png_dir,
        panoptic_json=json_file,
    )
    categories = {c["id"]: c for c in meta.categories}
    id_to_train = meta.dataset_id_to_train_id
    sizes = image_sizes(data, json_file)
    records, guessed = [], set()
    annotations = validate_annotations(data["annotations"], json_file)
    for image_id, ann in annotations.items():
        height, width, image_name = sizes.get(image_id, (None, None, None))
        if image_name is None:  # COCO convention: the image is the PNG's name with .jpg
            image_name = os.path.splitext(ann["file_name"])[0] + ".jpg"
            guessed.add(image_id)
        png_path = os.path.join(png_dir, ann["file_name"])
        records.append(
            panoptic_record(
                ann,
                os.path.join(image_dir, image_name),
                png_path,
                (height, width),
                categories,
                id_to_train,
                f"{png_path} (image_id {image_id!r} in {json_file})",
            )
        )
    unannotated = len(set(sizes) - set(annotations))
    if unannotated:
        print(f"note: {json_file}: {unannotated} image(s) of its 'images' list have no entry in "
              "'annotations' and are left out")  # fmt: skip
    if check_files:
        for rec in records:
            if rec["image_id"] in guessed and not os.path.isfile(rec["file_name"]):
                raise FileNotFoundError(
                    f"{json_file}: image of image_id {rec['image_id']!r} not found: "
                    f"{rec['file_name']} (the JSON's 'images' list gives no file name for it, so "
                    "the PNG's name with .jpg was assumed, as in COCO: list it under 'images')"
                )
        assert_files_exist(records, json_file)
    return records, meta
