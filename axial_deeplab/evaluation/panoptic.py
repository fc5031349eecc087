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

if __name__ == "__main__":  # the command, run by this module imported under its name (once)
    import os

    # PQ needs no BLAS: one OpenBLAS thread spares numpy's import ~30 ms of thread start-up.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import sys

    from axial_deeplab.evaluation.panoptic import main

    try:
        code = main()
    except SystemExit as exc:  # the usage errors of argparse and run_cli's one-line errors
        code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what SystemExit does with a message
        code = 1
    # The results are printed and written, the workers waited for: exit without the interpreter's
    # teardown of every module and object, ~15 ms of a 0.1-0.3 s command (bench/panoptic_eval.py).
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be shown
            pass
    os._exit(code or 0)

from collections.abc import Mapping, Sequence  # noqa: E402 - after the command's start-up
from dataclasses import dataclass  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402

from axial_deeplab.data.validation import (  # noqa: E402
    MAX_SEGMENT_ID,
    DatasetFormatError,
    validate_categories,
    validate_segments_info,
)
from axial_deeplab.evaluation.overlaps import Overlaps, batch_overlaps  # noqa: E402
from axial_deeplab.evaluation.runs import Runs, runs_from_ids  # noqa: E402


@dataclass
class PQStats:
    """Sums per category (in the evaluator's category order): ``[C]`` over images, or ``[B, C]``
    for each of ``B`` images."""

    iou: np.ndarray  # [..., C] float64, sum of the IoUs of the true positives
    tp: np.ndarray  # [..., C] int64
    fp: np.ndarray  # [..., C] int64
    fn: np.ndarray  # [..., C] int64

    @classmethod
    def zeros(cls, num_categories: int) -> PQStats:
        counts = [np.zeros(num_categories, dtype=np.int64) for _ in range(3)]
        return cls(np.zeros(num_categories, dtype=np.float64), *counts)

    def __add__(self, other: PQStats) -> PQStats:
        return PQStats(
            self.iou + other.iou, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        )

    def image(self, index: int) -> PQStats:
        """One image's ``[C]`` statistics out of ``[B, C]``."""
        return PQStats(self.iou[index], self.tp[index], self.fp[index], self.fn[index])


@dataclass(frozen=True)
class SegmentTable:
    """The listed segments of ``B`` images, image by image in ``segments_info`` order."""

    image: np.ndarray  # [n] int64 image of each segment, in [0, B)
    category: np.ndarray  # [n] int64 category index
    crowd: np.ndarray  # [n] bool, iscrowd = 1

    @classmethod
    def of(cls, segments: Sequence[list[dict]], category_index: Mapping[int, int]) -> SegmentTable:
        """The table of ``B`` ``segments_info`` lists (already validated)."""
        image = np.repeat(np.arange(len(segments)), [len(s) for s in segments])
        flat = [s for listed in segments for s in listed]
        category = np.array([category_index[s["category_id"]] for s in flat], dtype=np.int64)
        crowd = np.array([s.get("iscrowd", 0) == 1 for s in flat], dtype=bool)
        return cls(image, category, crowd)


def pq_pair_stats(
    overlaps: Overlaps,
    gt: SegmentTable,
    pred: SegmentTable,
    num_images: int,
    num_categories: int,
) -> PQStats:
    """``[B, C]`` PQ statistics of ``B`` images from their overlap areas (pure; rules above).

    Args:
        overlaps: ``[S]`` (gt segment, predicted segment, area) pairs, sorted by gt segment
            (-1 = VOID); segments numbered as in ``gt`` and ``pred``.
        gt, pred: the listed segments of the ``B`` images.
    """
    num_gt, num_pred, cells = gt.image.size, pred.image.size, num_images * num_categories
    on_gt, on_pred = overlaps.gt >= 0, overlaps.pred >= 0
    gt_area = _sum_by(overlaps.gt, overlaps.area, on_gt, num_gt)  # [n]
    pred_area = _sum_by(overlaps.pred, overlaps.area, on_pred, num_pred)  # [m]
    pred_void = _sum_by(overlaps.pred, overlaps.area, on_pred & ~on_gt, num_pred)  # [m]
    both = on_gt & on_pred
    g, p, shared = overlaps.gt[both], overlaps.pred[both], overlaps.area[both]  # [s]
    iou = shared / (gt_area[g] + pred_area[p] - shared - pred_void[p])  # union leaves out VOID
    match = (gt.category[g] == pred.category[p]) & ~gt.crowd[g] & (iou > 0.5)  # <= 1 per segment
    gt_cell = gt.image * num_categories + gt.category  # [n] (image, category) of each segment
    pred_cell = pred.image * num_categories + pred.category  # [m]

    matched_gt = np.zeros(num_gt, dtype=bool)
    matched_gt[g[match]] = True
    tp = np.bincount(gt_cell[g[match]], minlength=cells)
    iou_sum = np.bincount(gt_cell[g[match]], weights=iou[match], minlength=cells)  # in gt order
    fn = np.bincount(gt_cell[~matched_gt & ~gt.crowd], minlength=cells)

    crowd_of_cell = np.full(cells, -1, dtype=np.int64)  # the last crowd segment of each cell
    crowd = np.flatnonzero(gt.crowd)
    np.maximum.at(crowd_of_cell, gt_cell[crowd], crowd)
    on_crowd_pair = crowd_of_cell[pred_cell[p]] == g  # [s] on the crowd of the pred's class
    on_crowd = _sum_by(p, shared, on_crowd_pair, num_pred)  # [m]
    matched_pred = np.zeros(num_pred, dtype=bool)
    matched_pred[p[match]] = True
    ignored = (pred_void + on_crowd) / np.maximum(pred_area, 1) > 0.5
    fp = np.bincount(pred_cell[~matched_pred & ~ignored], minlength=cells)
    shape = (num_images, num_categories)
    return PQStats(*(a.reshape(shape) for a in (iou_sum, tp, fp, fn)))


def _sum_by(index: np.ndarray, values: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    """``[size]`` int64 sums of ``values[keep]`` by ``index[keep]``."""
    return np.bincount(index[keep], weights=values[keep], minlength=size).astype(np.int64)


def pq_image_stats(
    inter: np.ndarray,
    g_cat: np.ndarray,
    g_crowd: np.ndarray,
    p_cat: np.ndarray,
    num_categories: int,
) -> PQStats:
    """``[C]`` PQ statistics of one image from its dense overlap areas.

    Args:
        inter: ``[n + 1, m + 1]`` int overlap areas; row/column 0 is VOID, then the gt (pred)
            segments in ``segments_info`` order, each of non-zero area.
        g_cat, p_cat: ``[n]``, ``[m]`` category index of each gt / predicted segment.
        g_crowd: ``[n]`` bool, gt segments with ``iscrowd=1``.
    """
    inter = np.asarray(inter, dtype=np.int64)
    rows, cols = np.nonzero(inter)  # row-major: sorted by gt segment
    overlaps = Overlaps(rows - 1, cols - 1, inter[rows, cols])
    g_cat, p_cat = np.asarray(g_cat, dtype=np.int64), np.asarray(p_cat, dtype=np.int64)
    gt = SegmentTable(np.zeros_like(g_cat), g_cat, np.asarray(g_crowd, dtype=bool))
    pred = SegmentTable(np.zeros_like(p_cat), p_cat, np.zeros(p_cat.size, dtype=bool))
    return pq_pair_stats(overlaps, gt, pred, 1, num_categories).image(0)


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


class RunsImage(NamedTuple):
    """One image's input to :meth:`PanopticEvaluator.image_stats`."""

    gt: Runs
    gt_segments: list[dict]
    pred: Runs
    pred_segments: list[dict]
    gt_source: str  # names the gt PNG in errors
    pred_source: str
    image_size: tuple[int, int] | None = None  # (H, W) both maps must have, if given
    gt_listing: str | None = None  # names gt_segments in their errors (default: gt_source)
    pred_listing: str | None = None  # e.g. the JSON and the image of pred_segments
    size_source: str | None = None  # where image_size comes from (the gt JSON's images entry)


def _check_sizes(image: RunsImage) -> None:
    """Raise unless the gt and predicted maps have one shape, the image's size if it is given."""
    for runs, source in ((image.gt, image.gt_source), (image.pred, image.pred_source)):
        if image.image_size is not None and runs.shape != tuple(image.image_size):
            given = f" given in {image.size_source}" if image.size_source else ""
            raise DatasetFormatError(
                f"{source}: PNG size (H, W) = {runs.shape} differs from the image size "
                f"{tuple(image.image_size)}{given}: one of the two is wrong"
            )
    if image.gt.shape != image.pred.shape:
        raise DatasetFormatError(
            f"{image.pred_source}: prediction size (H, W) = {image.pred.shape} differs from the "
            f"ground truth's {image.gt.shape} ({image.gt_source})"
        )


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
        image = RunsImage(gt, gt_segments, pred, pred_segments, gt_source, pred_source, image_size)
        stats = self.image_stats([image])
        self.add_images(stats)
        return stats.image(0)

    def image_stats(self, images: Sequence[RunsImage]) -> PQStats:
        """``[B, C]`` statistics of each of ``B`` images, in one batch; added to nothing."""
        if not images:
            empty = PQStats.zeros(len(self._index))
            return PQStats(*(a[None][:0] for a in (empty.iou, empty.tp, empty.fp, empty.fn)))
        for image in images:
            _check_sizes(image)
            gt_listing = image.gt_listing or image.gt_source
            validate_segments_info(image.gt_segments, self.categories, gt_listing)
            pred_listing = image.pred_listing or image.pred_source
            validate_segments_info(image.pred_segments, self.categories, pred_listing)
        listed = [
            [np.array([s["id"] for s in segments], dtype=np.int64) for segments in side]
            for side in ([i.gt_segments for i in images], [i.pred_segments for i in images])
        ]  # fmt: skip
        overlaps = batch_overlaps(
            [i.gt for i in images], listed[0], [i.pred for i in images], listed[1],
            [(i.gt_source, i.pred_source) for i in images],
        )  # fmt: skip
        gt = SegmentTable.of([i.gt_segments for i in images], self._index)
        pred = SegmentTable.of([i.pred_segments for i in images], self._index)
        return pq_pair_stats(overlaps, gt, pred, len(images), len(self._index))

    def add_images(self, stats: PQStats) -> None:
        """Add ``[B, C]`` per-image statistics one image after the other, so that the sums are
        those of :meth:`process` called image by image, however the images were batched."""
        old = self.stats
        iou = np.add.accumulate(np.vstack([old.iou, stats.iou]), axis=0)[-1]  # image by image
        self.stats = PQStats(
            iou, old.tp + stats.tp.sum(0), old.fp + stats.fp.sum(0), old.fn + stats.fn.sum(0)
        )
        self.num_images += len(stats.tp)

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
    from axial_deeplab.utils.cli import run_cli

    run_cli(cli, argv)
