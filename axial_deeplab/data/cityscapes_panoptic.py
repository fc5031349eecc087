"""Reader for Cityscapes panoptic ground truth made by cityscapesscripts' ``createPanopticImgs``.

Layout: images ``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png``; one JSON
``gtFine/cityscapes_panoptic_{split}.json`` whose ``annotations`` give ``image_id`` (= ``stem``),
``file_name`` (the PNG in ``gtFine/cityscapes_panoptic_{split}/``) and ``segments_info``. Segment ids
in the PNG are ``label_id * 1000 + k`` for thing instances and ``label_id`` for stuff and crowd
regions; ``category_id`` is the Cityscapes *label id*, or the *train id* with ``--use-train-id``
(files then carry a ``_trainId`` suffix). The JSON's own ``categories`` list is optional: the label
table below supplies names, ``isthing`` and colours.
"""

from __future__ import annotations

import os

from .catalog import DatasetMetadata
from .records import assert_files_exist, image_sizes, panoptic_record, read_json
from .validation import DatasetFormatError, validate_annotations

IMAGE_SUFFIX = "_leftImg8bit.png"

# The 19 evaluated Cityscapes classes (cityscapesscripts helpers/labels.py):
# (name, label id, train id, isthing (= hasInstances), RGB colour).
CITYSCAPES_CLASSES = (
    ("road", 7, 0, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, 0, (244, 35, 232)),
    ("building", 11, 2, 0, (70, 70, 70)),
    ("wall", 12, 3, 0, (102, 102, 156)),
    ("fence", 13, 4, 0, (190, 153, 153)),
    ("pole", 17, 5, 0, (153, 153, 153)),
    ("traffic light", 19, 6, 0, (250, 170, 30)),
    ("traffic sign", 20, 7, 0, (220, 220, 0)),
    ("vegetation", 21, 8, 0, (107, 142, 35)),
    ("terrain", 22, 9, 0, (152, 251, 152)),
    ("sky", 23, 10, 0, (70, 130, 180)),
    ("person", 24, 11, 1, (220, 20, 60)),
    ("rider", 25, 12, 1, (255, 0, 0)),
    ("car", 26, 13, 1, (0, 0, 142)),
    ("truck", 27, 14, 1, (0, 0, 70)),
    ("bus", 28, 15, 1, (0, 60, 100)),
    ("train", 31, 16, 1, (0, 80, 100)),
    ("motorcycle", 32, 17, 1, (0, 0, 230)),
    ("bicycle", 33, 18, 1, (119, 11, 32)),
)


def cityscapes_metadata(
    *, name: str, use_train_id: bool, classes=CITYSCAPES_CLASSES, **kwargs
) -> DatasetMetadata:
    """Metadata whose file category ids are label ids, or train ids when ``use_train_id``."""
    cats = tuple(
        {
            "id": train_id if use_train_id else label_id,
            "train_id": train_id,
            "name": cls_name,
            "isthing": isthing,
            "color": color,
        }
        for cls_name, label_id, train_id, isthing, color in classes
    )
    return DatasetMetadata(
        name=name,
        categories=cats,
        label_divisor=1000,
        evaluator_type="cityscapes_panoptic_seg",
        extra={"use_train_id": use_train_id},
        **kwargs,
    )


def find_images(image_dir: str) -> dict[str, str]:
    """``{stem: path}`` of every ``*_leftImg8bit.png`` under ``image_dir`` (city folders or flat)."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Cityscapes image folder not found: {image_dir}")
    found: dict[str, str] = {}
    for folder, _, files in sorted(os.walk(image_dir)):
        for f in sorted(files):
            if not f.endswith(IMAGE_SUFFIX):
                continue
            stem = f[: -len(IMAGE_SUFFIX)]
            if stem in found:
                raise DatasetFormatError(
                    f"{image_dir}: image '{stem}' found twice: {found[stem]} and {folder}/{f}"
                )
            found[stem] = os.path.join(folder, f)
    return found


def load_cityscapes_panoptic(
    image_dir: str,
    gt_dir: str,
    gt_json: str,
    *,
    name: str = "cityscapes_panoptic",
    use_train_id: bool | None = None,
    check_files: bool = True,
) -> tuple[list[dict], DatasetMetadata]:
    """Records and metadata of one Cityscapes panoptic split (see :mod:`.catalog`).

    ``use_train_id``: whether ``category_id`` in ``gt_json`` is a train id; ``None`` infers it from
    the file name (``..._trainId.json``). Errors name the JSON, the image id and the segment id.
    """
    if use_train_id is None:
        use_train_id = os.path.splitext(gt_json)[0].endswith("_trainId")
    meta = cityscapes_metadata(
        name=name,
        use_train_id=use_train_id,
        image_dir=image_dir,
        panoptic_dir=gt_dir,
        panoptic_json=gt_json,
    )
    data = read_json(gt_json)
    images = find_images(image_dir)
    categories = {c["id"]: c for c in meta.categories}
    id_to_train = meta.dataset_id_to_train_id
    sizes = image_sizes(data, gt_json)
    kind = "train ids" if use_train_id else "label ids"
    records = []
    for image_id, ann in validate_annotations(data["annotations"], gt_json).items():
        if image_id not in images:
            raise DatasetFormatError(
                f"{gt_json}: image_id {image_id!r}: no {image_id}{IMAGE_SUFFIX} under {image_dir}"
            )
        png_path = os.path.join(gt_dir, ann["file_name"])
        height, width, _ = sizes.get(image_id, (None, None, None))
        records.append(
            panoptic_record(
                ann,
                images[image_id],
                png_path,
                (height, width),
                categories,
                id_to_train,
                f"{png_path} (image_id {image_id!r} in {gt_json}, category ids = {kind})",
            )
        )
    if check_files:
        assert_files_exist(records, gt_json)
    return records, meta
