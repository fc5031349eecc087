"""COCO-style mask AP of thing instances, through pycocotools' ``COCOeval`` (``iouType="segm"``).

Ground-truth instances are the thing segments of panoptic annotations (crowd segments kept with
``iscrowd=1``, which COCOeval ignores as it does in COCO); predictions are binary masks with a score
and a category. The state is two lists, so evaluators merge across processes by concatenation
(image ids must differ between them).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping

import numpy as np

AP_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]  # COCOeval.stats[0:6]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


class InstanceAPEvaluator:
    """Streaming mask AP: ``process(...)`` per image, ``evaluate()``, ``merge()``.

    Args:
        categories: COCO-style categories; those with ``isthing=1`` are evaluated.
    """

    def __init__(self, categories: list[dict] | Mapping[int, dict]):
        listed = list(categories.values()) if isinstance(categories, Mapping) else categories
        self.thing_ids = [int(c["id"]) for c in listed if c["isthing"]]
        self.reset()

    def reset(self) -> None:
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.detections: list[dict] = []

    def process(
        self,
        image_id: int,
        gt_ids: np.ndarray,
        gt_segments: list[dict],
        masks: np.ndarray,
        scores: np.ndarray,
        category_ids: np.ndarray,
    ) -> None:
        """Add one image: the ``[H, W]`` gt id map and segments, and N predicted instances as
        ``masks`` ``[N, H, W]`` bool, ``scores`` ``[N]`` and ``category_ids`` ``[N]``."""
        height, width = gt_ids.shape
        if masks.shape[1:] != (height, width) or not len(masks) == len(scores) == len(category_ids):
            raise ValueError(
                f"image {image_id}: masks {masks.shape}, {len(scores)} scores and "
                f"{len(category_ids)} categories do not match a {height}x{width} image"
            )
        self.images.append({"id": image_id, "height": height, "width": width})
        for seg in gt_segments:
            if seg["category_id"] in self.thing_ids:
                mask = gt_ids == seg["id"]
                self.gt.append({
                    "image_id": image_id, "category_id": seg["category_id"],
                    "segmentation": _rle(mask), "area": int(mask.sum()),
                    "iscrowd": int(seg.get("iscrowd", 0)), "bbox": _bbox(mask),
                })  # fmt: skip
        for mask, score, cat in zip(masks, scores, category_ids):
            self.detections.append({
                "image_id": image_id, "category_id": int(cat), "score": float(score),
                "segmentation": _rle(mask),
            })  # fmt: skip

    def merge(self, other: InstanceAPEvaluator) -> None:
        self.images += other.images
        self.gt += other.gt
        self.detections += other.detections

    def evaluate(self) -> dict[str, float]:
        """``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` as fractions (COCOeval's summary; -1
        where it has nothing to average, e.g. no small objects), all 0.0 without detections."""
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError as err:
            raise ImportError("instance AP needs pycocotools: pip install pycocotools") from err
        gt = COCO()
        gt.dataset = {
            "images": self.images,
            "annotations": [{**a, "id": i + 1} for i, a in enumerate(self.gt)],
            "categories": [{"id": c} for c in self.thing_ids],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            if not self.detections:
                return dict.fromkeys(AP_NAMES, 0.0)
            evaluation = COCOeval(gt, gt.loadRes(self.detections), iouType="segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {name: float(v) for name, v in zip(AP_NAMES, evaluation.stats)}


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0, 0, 0, 0]
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]
