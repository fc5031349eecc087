"""Overlap areas of ground-truth and predicted segments, for a batch of images at once.

PQ needs, for every image, the area of each (gt segment, predicted segment) overlap and of each
segment's overlap with VOID. Counting them image by image costs some thirty small numpy calls per
image; here the images of a batch are laid end to end as one row of runs, every id is mapped to a
*slot* of the batch and one ``bincount`` counts every pair. The slots of image ``b`` are
``[VOID, its listed segments in segments_info order..., any id that is not listed]``.

The counts also check each image's PNG against its ``segments_info``: every listed segment has
pixels and no pixel carries an unlisted id (VOID = 0 aside).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from axial_deeplab.data.validation import validate_segment_presence
from axial_deeplab.evaluation.runs import Runs, concatenate_runs, overlap_runs

_ID_SPAN = 256**3  # ids are < 2^24, so image * _ID_SPAN + id names an id of a batch uniquely


@dataclass(frozen=True)
class Overlaps:
    """Non-zero overlap areas of a batch as pairs, sorted by gt segment, then predicted segment.

    Segments are numbered over the batch, image by image in ``segments_info`` order; -1 is VOID.
    """

    gt: np.ndarray  # [S] int64 gt segment, or -1 (VOID)
    pred: np.ndarray  # [S] int64 predicted segment, or -1 (VOID)
    area: np.ndarray  # [S] int64 pixels, > 0


@dataclass(frozen=True)
class _Slots:
    """The slots of one side (gt or prediction) of a batch."""

    first: np.ndarray  # [B + 1] first slot of each image, then the number of slots
    image: np.ndarray  # [T] image of each slot
    segment: np.ndarray  # [T] segment of each slot over the batch; -1 for VOID and "not listed"
    sorted_keys: np.ndarray  # [L] image * _ID_SPAN + id of VOID and of the listed ids, sorted
    sorted_slots: np.ndarray  # [L] slot of each of sorted_keys

    @classmethod
    def of(cls, listed: Sequence[np.ndarray]) -> _Slots:
        """Slots of images whose listed ids are ``listed`` (``[n_b]`` int64 arrays)."""
        counts = np.array([ids.size for ids in listed], dtype=np.int64)  # [B]
        first = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts + 2, out=first[1:])
        image = np.repeat(np.arange(counts.size), counts + 2)  # [T]
        local = np.arange(image.size) - first[image]  # 0 = VOID, n_b + 1 = not listed
        is_listed = (local > 0) & (local <= counts[image])
        segment = np.where(is_listed, np.arange(image.size) - 1 - 2 * image, -1)
        all_listed = np.concatenate([*listed, np.zeros(0, np.int64)])
        ids = np.insert(all_listed, first[:-1] - 2 * np.arange(counts.size), 0)  # VOID first
        known = local <= counts[image]  # VOID and the listed slots, in the order of ids
        keys = image[known] * _ID_SPAN + ids
        order = np.argsort(keys)
        return cls(first, image, segment, keys[order], np.flatnonzero(known)[order])

    def of_ids(self, image: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Slots ``[K]`` of ``ids`` ``[K]`` found in images ``image`` ``[K]``."""
        keys = image * _ID_SPAN + ids
        position = np.searchsorted(self.sorted_keys, keys)
        np.minimum(position, self.sorted_keys.size - 1, out=position)
        found = self.sorted_keys[position] == keys
        return np.where(found, self.sorted_slots[position], self.first[image + 1] - 1)

    def first_bad_image(self, area: np.ndarray) -> int:
        """The first image with a listed segment of no area or an unlisted id with some, or B."""
        bad = (self.segment >= 0) == (area == 0)  # listed and empty, or not listed and present
        bad[self.first[:-1]] = False  # VOID may have any area
        return int(self.image[bad.argmax()]) if bad.any() else self.first.size - 1


def batch_overlaps(
    gt: Sequence[Runs],
    gt_listed: Sequence[np.ndarray],
    pred: Sequence[Runs],
    pred_listed: Sequence[np.ndarray],
    sources: Sequence[tuple[str, str]],
) -> Overlaps:
    """Overlap areas of ``B`` images' gt and predicted segments; raises on an id/list mismatch.

    Args:
        gt, pred: ``[B]`` runs of each image's id maps (the two of an image have one shape).
        gt_listed, pred_listed: ``[B]`` int64 arrays, the ids of each image's ``segments_info``.
        sources: ``[B]`` (gt, prediction) names of each image, for the errors.
    """
    gt_slots, pred_slots = _Slots.of(gt_listed), _Slots.of(pred_listed)
    gt_row, gt_image = concatenate_runs(gt)  # [1, N] row; [K] image of each run
    pred_row, pred_image = concatenate_runs(pred)
    gt_slot = gt_slots.of_ids(gt_image, gt_row.values)  # [K]
    pred_local = pred_slots.of_ids(pred_image, pred_row.values) - pred_slots.first[pred_image]
    g, p, lengths = overlap_runs(
        Runs(gt_row.shape, gt_row.starts, gt_slot),
        Runs(pred_row.shape, pred_row.starts, pred_local),
    )  # [S] runs of the (gt slot, local pred slot) map
    width = int(np.diff(pred_slots.first).max())  # most slots of an image's prediction
    areas = np.bincount(g * width + p, weights=lengths, minlength=gt_slots.first[-1] * width)
    pairs = np.flatnonzero(areas)  # [S'] sorted by gt slot, then pred slot
    g, area = pairs // width, areas[pairs].astype(np.int64)  # exact: float64 holds ints < 2^53
    p = pred_slots.first[gt_slots.image[g]] + pairs % width
    gt_area = np.bincount(g, weights=area, minlength=gt_slots.first[-1])
    pred_area = np.bincount(p, weights=area, minlength=pred_slots.first[-1])
    bad = min(gt_slots.first_bad_image(gt_area), pred_slots.first_bad_image(pred_area))
    if bad < len(gt):
        for runs, listed, slots, slot_area, source in (
            (gt[bad], gt_listed[bad], gt_slots, gt_area, sources[bad][0]),
            (pred[bad], pred_listed[bad], pred_slots, pred_area, sources[bad][1]),
        ):
            _check_presence(
                runs, listed, slot_area[slots.first[bad] : slots.first[bad + 1]], source
            )
    return Overlaps(gt_slots.segment[g], pred_slots.segment[p], area)


def _check_presence(runs: Runs, listed: np.ndarray, area: np.ndarray, source: str) -> None:
    """Raise unless an image's listed segments all have pixels and no unlisted id has any.

    ``area``: ``[n + 2]`` pixels of the image's slots (VOID, listed..., not listed).
    """
    present = listed[area[1:-1] > 0].tolist()
    if area[-1] > 0:  # ids in the PNG but not listed: find them for the message
        present += np.setdiff1d(runs.values, np.concatenate([[0], listed])).tolist()
    validate_segment_presence(present, set(listed.tolist()), source)
