"""Panoptic quality (PQ = SQ x RQ), per class and averaged over All / Things / Stuff.

The matching rules are those of the COCO panoptic API (panopticapi ``pq_compute``) and of
cityscapesscripts ``evalPanopticSemanticLabeling``, which share one algorithm:

- segment id 0 is VOID (unlabeled); ids are < 2^24, the pair key being ``gt * 256^3 + pred``;
- a gt and a predicted segment of the same class match when IoU > 0.5, where the union leaves out
  the prediction's overlap with VOID; crowd gt segments (``iscrowd=1``) are never matched;
- an unmatched gt segment that is not crowd is a false negative;
- an unmatched predicted segment is a false positive unless more than half of its area lies on
  VOID plus the crowd region of its class (the last crowd segment of that class in
  ``segments_info``, as in the official code);
- a class's PQ is ``sum IoU(TP) / (TP + FP / 2 + FN / 2)``; a class with no TP, FP or FN (absent
  from gt and prediction) is left out of the means, as the official tools do.

Two documented differences: areas are counted from the PNGs (the official code takes ground-truth
areas from the JSON; they agree on well-formed files, which validation checks segment by segment
for presence), and an empty group (no Things class seen) averages to 0.0 with ``n = 0`` instead of
raising ``ZeroDivisionError``.

:class:`PanopticEvaluator` streams (``reset`` / ``process`` / ``evaluate``) and merges across
processes; ``python -m axial_deeplab.evaluation.panoptic`` evaluates COCO-format files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from axial_deeplab.data.validation import (
    MAX_SEGMENT_ID,
    DatasetFormatError,
    validate_categories,
    validate_segment_presence,
    validate_segments_info,
)
from axial_deeplab.evaluation.runs import Runs, overlap_runs, runs_from_ids

OFFSET = 256**3  # gt * OFFSET + pred keys a (gt, pred) overlap: ids must be < OFFSET
VOID = 0


@dataclass
class PQStats:
    """Sums over images, one entry per category (in the evaluator's category order)."""

    iou: np.ndarray  # [C] float64, sum of the IoUs of the true positives
    tp: np.ndarray  # [C] int64
    fp: np.ndarray  # [C] int64
    fn: np.ndarray  # [C] int64

    @classmethod
    def zeros(cls, num_categories: int) -> PQStats:
        counts = [np.zeros(num_categories, dtype=np.int64) for _ in range(3)]
        return cls(np.zeros(num_categories, dtype=np.float64), *counts)

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats(
            self.iou + other.iou, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        )


def segment_arrays(
    segments: list[dict], category_index: Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [n], category indices [n], iscrowd [n] bool)`` of a ``segments_info`` list, in order."""
    ids = np.array([s["id"] for s in segments], dtype=np.int64)
    cats = np.array([category_index[s["category_id"]] for s in segments], dtype=np.int64)
    crowd = np.array([s.get("iscrowd", 0) == 1 for s in segments], dtype=bool)
    return ids, cats, crowd


def _dense(ids: np.ndarray, listed: np.ndarray) -> np.ndarray:
    """Position in ``listed`` plus one of each id; VOID (0) -> 0; an id not listed -> n + 1."""
    if listed.size == 0:
        return np.where(ids == VOID, 0, 1)
    order = np.argsort(listed)
    position = np.searchsorted(listed[order], ids).clip(max=listed.size - 1)
    found = listed[order][position] == ids
    return np.where(ids == VOID, 0, np.where(found, order[position] + 1, listed.size + 1))


def intersection_matrix(
    gt_ids: np.ndarray, pred_ids: np.ndarray, lengths: np.ndarray, gt_listed, pred_listed
) -> np.ndarray:
    """Overlap areas ``[n + 2, m + 2]`` from ``(gt id, pred id, length)`` runs ``[S]``.

    Row/column 0 is VOID, 1..n (1..m) the listed segments in order, n + 1 (m + 1) any id not listed.
    """
    cols = pred_listed.size + 2
    key = _dense(gt_ids, gt_listed) * cols + _dense(pred_ids, pred_listed)
    areas = np.bincount(key, weights=lengths, minlength=(gt_listed.size + 2) * cols)
    return areas.astype(np.int64).reshape(-1, cols)  # exact: float64 holds integers < 2^53


def pq_image_stats(
    inter: np.ndarray,
    g_cat: np.ndarray,
    g_crowd: np.ndarray,
    p_cat: np.ndarray,
    num_categories: int,
) -> PQStats:
    """PQ statistics of one image from its overlap areas (pure; the rules in the module doc).

    Args:
        inter: ``[n + 1, m + 1]`` int overlap areas; row/column 0 is VOID, then the gt (pred)
            segments in ``segments_info`` order, each of non-zero area.
        g_cat, p_cat: ``[n]``, ``[m]`` category index of each gt / predicted segment.
        g_crowd: ``[n]`` bool, gt segments with ``iscrowd=1``.
    """
    gt_area = inter[1:].sum(axis=1)  # [n]
    pred_area = inter[:, 1:].sum(axis=0)  # [m]
    pred_void = inter[0, 1:]  # [m]
    shared = inter[1:, 1:]  # [n, m]
    union = gt_area[:, None] + pred_area[None, :] - shared - pred_void[None, :]
    iou = shared / np.maximum(union, 1)
    candidate = (g_cat[:, None] == p_cat[None, :]) & ~g_crowd[:, None] & (shared > 0)
    gt_match, pred_match = np.nonzero(candidate & (iou > 0.5))  # IoU > 0.5: at most one each

    num = num_categories
    stats = PQStats.zeros(num)
    stats.tp += np.bincount(g_cat[gt_match], minlength=num)
    stats.iou += np.bincount(g_cat[gt_match], weights=iou[gt_match, pred_match], minlength=num)
    missed = np.ones(g_cat.size, dtype=bool)
    missed[gt_match] = False
    stats.fn += np.bincount(g_cat[missed & ~g_crowd], minlength=num)

    crowd_of_class = np.full(num, -1, dtype=np.int64)  # the last crowd segment of each class
    for k in np.flatnonzero(g_crowd):
        crowd_of_class[g_cat[k]] = k
    unmatched = np.ones(p_cat.size, dtype=bool)
    unmatched[pred_match] = False
    crowd_row = crowd_of_class[p_cat]  # [m] crowd segment of the prediction's class, or -1
    on_crowd = np.zeros(p_cat.size, dtype=np.int64)  # [m] area on that crowd segment
    has_crowd = np.flatnonzero(crowd_row >= 0)
    on_crowd[has_crowd] = shared[crowd_row[has_crowd], has_crowd]
    ignored = (pred_void + on_crowd) / np.maximum(pred_area, 1) > 0.5
    stats.fp += np.bincount(p_cat[unmatched & ~ignored], minlength=num)
    return stats


def _group_average(
    stats: PQStats, columns: list[int]
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Mean PQ/SQ/RQ over the given category columns that have any TP, FP or FN."""
    per_class, sums, n = {}, [0.0, 0.0, 0.0], 0
    for c in columns:
        tp, fp, fn, iou = int(stats.tp[c]), int(stats.fp[c]), int(stats.fn[c]), float(stats.iou[c])
        entry = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": tp, "fp": fp, "fn": fn}
        if tp + fp + fn > 0:
            n += 1
            denominator = tp + 0.5 * fp + 0.5 * fn
            entry.update(pq=iou / denominator, sq=iou / tp if tp else 0.0, rq=tp / denominator)
            sums = [sums[0] + entry["pq"], sums[1] + entry["sq"], sums[2] + entry["rq"]]
        per_class[c] = entry
    means = [s / n if n else 0.0 for s in sums]
    return {"pq": means[0], "sq": means[1], "rq": means[2], "n": n}, per_class


def summarize_pq(stats: PQStats, categories: Mapping[int, dict]) -> dict:
    """``{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {category id: {..., name}}}``."""
    cat_ids = list(categories)
    results: dict = {}
    for name, keep in (("All", (0, 1)), ("Things", (1,)), ("Stuff", (0,))):
        columns = [i for i, c in enumerate(cat_ids) if int(categories[c]["isthing"]) in keep]
        results[name], per_class = _group_average(stats, columns)
        if name == "All":
            results["per_class"] = {
                cat_ids[i]: {"name": categories[cat_ids[i]]["name"], **entry}
                for i, entry in per_class.items()
            }
    return results


def check_id_map(ids: np.ndarray, source: str) -> np.ndarray:
    """Check an in-memory ``[H, W]`` segment-id map: integers in ``[0, 2^24 - 1]``."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise DatasetFormatError(
            f"{source}: expected an [H, W] integer id map, got {ids.dtype} of shape {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise DatasetFormatError(
            f"{source}: segment ids must lie in [0, 2^24 - 1] (PQ keys a gt/pred pair as "
            f"gt * 256^3 + pred), got range [{ids.min()}, {ids.max()}]"
        )
    return ids


def _check_presence(areas: np.ndarray, listed: np.ndarray, values: np.ndarray, source: str):
    """Raise unless the listed segments (``areas[1:-1]``) all have pixels and no unlisted id has."""
    present = listed[areas[1:-1] > 0].tolist()
    if areas[-1] > 0:  # ids in the PNG but not listed: find them for the message
        present += np.setdiff1d(values, np.concatenate([[VOID], listed])).tolist()
    validate_segment_presence(present, set(listed.tolist()), source)


class PanopticEvaluator:
    """Streaming PQ: ``reset()``, ``process(...)`` once per image, ``evaluate()``.

    Args:
        categories: COCO-style categories (``id``, ``name``, ``isthing``), as a list or an
            ``{id: category}`` mapping; validated here.
        source: where the categories come from, for error messages.
    """

    def __init__(self, categories: list[dict] | Mapping[int, dict], *, source: str = "categories"):
        listed = list(categories.values()) if isinstance(categories, Mapping) else categories
        self.categories = validate_categories(listed, source)
        self._index = {cat_id: i for i, cat_id in enumerate(self.categories)}
        self.reset()

    def reset(self) -> None:
        self.stats = PQStats.zeros(len(self._index))
        self.num_images = 0

    def process(
        self,
        gt_ids: np.ndarray,
        gt_segments: list[dict],
        pred_ids: np.ndarray,
        pred_segments: list[dict],
        *,
        name: str = "image",
    ) -> PQStats:
        """Add one image given ``[H, W]`` id maps and ``segments_info`` lists; returns its stats."""
        gt = runs_from_ids(check_id_map(gt_ids, f"{name} (ground truth)"))
        pred = runs_from_ids(check_id_map(pred_ids, f"{name} (prediction)"))
        return self.process_runs(
            gt, gt_segments, pred, pred_segments,
            gt_source=f"{name} (ground truth)", pred_source=f"{name} (prediction)",
        )  # fmt: skip

    def process_runs(
        self,
        gt: Runs,
        gt_segments: list[dict],
        pred: Runs,
        pred_segments: list[dict],
        *,
        gt_source: str,
        pred_source: str,
        image_size: tuple[int, int] | None = None,
    ) -> PQStats:
        """:meth:`process` on id maps already in runs; ``*_source`` name them in errors."""
        for runs, source in ((gt, gt_source), (pred, pred_source)):
            if image_size is not None and runs.shape != tuple(image_size):
                raise DatasetFormatError(
                    f"{source}: PNG size (H, W) = {runs.shape} differs from the image size "
                    f"{tuple(image_size)}"
                )
        if gt.shape != pred.shape:
            raise DatasetFormatError(
                f"{pred_source}: prediction size (H, W) = {pred.shape} differs from the ground "
                f"truth's {gt.shape} ({gt_source})"
            )
        validate_segments_info(gt_segments, self.categories, gt_source)
        validate_segments_info(pred_segments, self.categories, pred_source)
        g_ids, g_cat, g_crowd = segment_arrays(gt_segments, self._index)
        p_ids, p_cat, _ = segment_arrays(pred_segments, self._index)
        gt_values, pred_values, lengths = overlap_runs(gt, pred)
        inter = intersection_matrix(gt_values, pred_values, lengths, g_ids, p_ids)
        _check_presence(inter.sum(axis=1), g_ids, gt_values, gt_source)
        _check_presence(inter.sum(axis=0), p_ids, pred_values, pred_source)
        stats = pq_image_stats(inter[:-1, :-1], g_cat, g_crowd, p_cat, len(self._index))
        self.add(stats)
        return stats

    def add(self, stats: PQStats, num_images: int = 1) -> None:
        """Add statistics computed elsewhere (another process, a worker)."""
        self.stats = self.stats + stats
        self.num_images += num_images

    def merge(self, other: PanopticEvaluator) -> None:
        """Add another evaluator's state (same categories, same order)."""
        if list(other.categories) != list(self.categories):
            raise ValueError("cannot merge PanopticEvaluators with different categories")
        self.add(other.stats, other.num_images)

    def evaluate(self) -> dict:
        """Results as in :func:`summarize_pq`, plus ``num_images``."""
        return {**summarize_pq(self.stats, self.categories), "num_images": self.num_images}


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m axial_deeplab.evaluation.panoptic --gt-json ... --pred-dir ...``."""
    from axial_deeplab.evaluation.panoptic_files import cli

    cli(argv)


if __name__ == "__main__":
    main()
