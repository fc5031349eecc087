"""Panoptic-DeepLab training targets from a panoptic label, fully vectorised.

One pass maps every pixel to its segment (``searchsorted`` on the sorted segment ids); everything
else is a per-segment lookup table (class, crowd, thing, area, mean coordinates) indexed by that
map, so the cost is ``O(H W)`` whatever the number of segments. Only the centre Gaussians are drawn
per instance, all at once as one scatter-max of ``K`` small windows.

Conventions (Panoptic-DeepLab; deeplab2 ``data/sample_generator.py`` for crowd handling):

- semantic target: the segment's category id (train id); void pixels (ids absent from the segment
  list) get ``ignore_label``; crowd pixels keep their class unless ``ignore_crowd_in_semantic``.
- centre of an instance: mean ``(y, x)`` of its pixels; the heatmap peak sits at that mean rounded
  half-to-even (``np.rint``, as Python's ``round`` in the reference implementations); each instance
  adds ``exp(-d^2 / (2 sigma^2))`` on a square window of radius ``round(3 sigma + 1)``; overlapping
  Gaussians merge by max. Crowd regions get no centre.
- offsets: ``(center_y - y, center_x - x)`` on the pixels of non-crowd thing instances, 0 elsewhere.
- weights: semantic ``small_instance_weight`` on non-crowd thing instances smaller than
  ``small_instance_area`` pixels (area on the given, already augmented label), 1 elsewhere and 0 on
  ignored pixels; centre 1 on every non-void, non-crowd pixel (stuff included); offset 1 on
  non-crowd thing pixels.
- ``crowd_as_instance`` (off by default, not in the reference implementations): a crowd region of a
  thing class is trained as one more instance (centre, offsets, weights). The heads then group its
  pixels apart from the individual instances, which PQ ignores, instead of wherever the untrained
  offsets point; crowd pixels absorbed into a matched instance lower its IoU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch


def segment_index_map(panoptic: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Index (0..S-1) into ``segment_ids`` of each pixel's segment; ``S`` for ids not listed (void).

    ``panoptic`` ``[H, W]`` integer ids, ``segment_ids`` ``[S]`` distinct ids. Returns ``[H, W]``
    int64. Small ids (Cityscapes-style ``class * 1000 + k``) go through a dense lookup table,
    large ones (COCO RGB ids) through ``searchsorted``.
    """
    num = len(segment_ids)
    if num == 0 or panoptic.size == 0:
        return np.full(panoptic.shape, num, dtype=np.int64)
    low, high = int(panoptic.min()), int(panoptic.max())
    if low >= 0 and high < 4 * panoptic.size:
        lut = np.full(high + 1, num, dtype=np.int64)
        inside = (segment_ids >= 0) & (segment_ids <= high)
        lut[segment_ids[inside]] = np.nonzero(inside)[0]
        return lut[panoptic]
    order = np.argsort(segment_ids, kind="stable")
    sorted_ids = segment_ids[order]
    pos = np.searchsorted(sorted_ids, panoptic)  # [H, W] in [0, S]
    np.minimum(pos, num - 1, out=pos)
    found = sorted_ids[pos] == panoptic
    # index S (one past the end) marks void pixels
    return np.where(found, order[pos], num)


def gaussian_heatmap(centers: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Max-merged 2-D Gaussians (peak 1) at integer ``centers`` ``[K, 2]`` ``(y, x)``.

    Each Gaussian is cut to a ``(2r+1) x (2r+1)`` window, ``r = round(3 sigma + 1)``.
    Returns ``[H, W]`` float32.
    """
    heat = np.zeros(height * width, dtype=np.float32)
    if len(centers) == 0:
        return heat.reshape(height, width)
    radius = int(round(3 * sigma + 1))
    d = np.arange(-radius, radius + 1)  # [G]
    g1 = np.exp(-(d.astype(np.float64) ** 2) / (2 * sigma**2))  # [G]
    window = (g1[:, None] * g1[None, :]).astype(np.float32)  # [G, G]
    ys = centers[:, 0:1].astype(np.int64) + d[None, :]  # [K, G]
    xs = centers[:, 1:2].astype(np.int64) + d[None, :]  # [K, G]
    valid = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    flat = ys[:, :, None] * width + xs[:, None, :]  # [K, G, G]
    values = np.broadcast_to(window, flat.shape)  # [K, G, G]
    np.maximum.at(heat, flat[valid], values[valid])
    return heat.reshape(height, width)


def panoptic_targets(
    panoptic: np.ndarray,
    segment_ids: Sequence[int],
    category_ids: Sequence[int],
    iscrowd: Sequence[int],
    *,
    thing_ids: Iterable[int],
    ignore_label: int = 255,
    sigma: float = 8.0,
    small_instance_area: int = 4096,
    small_instance_weight: float = 3.0,
    ignore_crowd_in_semantic: bool = False,
    crowd_as_instance: bool = False,
) -> dict[str, np.ndarray]:
    """Panoptic-DeepLab targets for one ``[H, W]`` panoptic id map (see the module docstring).

    Returns numpy arrays: ``sem_seg`` ``[H, W]`` int64, ``sem_seg_weights`` ``[H, W]`` float32,
    ``center`` ``[1, H, W]``, ``center_weights`` ``[1, H, W]``, ``offset`` ``[2, H, W]`` ``(dy, dx)``,
    ``offset_weights`` ``[1, H, W]`` (float32), ``center_points`` ``[K, 2]`` float64 ``(y, x)``
    (unrounded means of the non-crowd thing instances present, in segment-list order;
    crowd regions count as instances with ``crowd_as_instance``).
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
        raise ValueError(
            f"panoptic: expected an [H, W] integer id map, got {panoptic.dtype} {panoptic.shape}"
        )
    ids = np.asarray(segment_ids, dtype=np.int64).reshape(-1)
    cats = np.asarray(category_ids, dtype=np.int64).reshape(-1)
    crowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
    if not len(ids) == len(cats) == len(crowd):
        raise ValueError(
            f"segments: got {len(ids)} ids, {len(cats)} category ids, {len(crowd)} iscrowd flags"
        )
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"segments: segment ids must be distinct, got {ids.tolist()}")
    height, width = panoptic.shape
    num = len(ids)
    index = segment_index_map(panoptic.astype(np.int64, copy=False), ids)  # [H, W]

    is_thing = np.isin(cats, np.fromiter(thing_ids, dtype=np.int64))
    semantic_ignored = ignore_crowd_in_semantic & crowd  # [S]
    if crowd_as_instance:
        crowd = crowd & ~is_thing  # crowd thing regions become instances
    instance = is_thing & ~crowd  # non-crowd thing instances
    # Statistics over the pixels of non-crowd thing instances only.
    pixels = np.flatnonzero(np.append(instance, False)[index])  # [P] flat pixel indices
    segment = index.reshape(-1)[pixels]  # [P]
    pixel_y, pixel_x = np.divmod(pixels, width)  # [P], [P]
    area = np.bincount(segment, minlength=num)  # [S]
    sum_y = np.bincount(segment, weights=pixel_y, minlength=num)  # [S]
    sum_x = np.bincount(segment, weights=pixel_x, minlength=num)  # [S]
    present = area > 0
    center_y = sum_y / np.maximum(area, 1)  # [S] mean row of each instance
    center_x = sum_x / np.maximum(area, 1)  # [S] mean column of each instance

    # Per-segment lookup tables of length S + 1; the last entry describes void pixels.
    sem_lut = np.where(semantic_ignored, ignore_label, cats)
    sem_lut = np.append(sem_lut, ignore_label)
    small = present & (area < small_instance_area)
    sem_w_lut = np.append(np.where(small, small_instance_weight, 1.0), 0.0).astype(np.float32)
    sem_w_lut[sem_lut == ignore_label] = 0.0
    center_w_lut = np.append(~crowd, False).astype(np.float32)
    offset_w_lut = np.append(instance, False).astype(np.float32)

    offset = np.zeros((2, height * width), dtype=np.float32)
    offset[0, pixels] = center_y[segment] - pixel_y
    offset[1, pixels] = center_x[segment] - pixel_x

    points = np.stack([center_y[present], center_x[present]], axis=1)  # [K, 2] (y, x)
    center = gaussian_heatmap(np.rint(points), height, width, sigma)

    return {
        "sem_seg": sem_lut[index],
        "sem_seg_weights": sem_w_lut[index],
        "center": center[None],
        "center_weights": center_w_lut[index][None],
        "offset": offset.reshape(2, height, width),
        "offset_weights": offset_w_lut[index][None],
        "center_points": points,
    }


class PanopticTargetGenerator:
    """Holds the target hyper-parameters; call it on ``(panoptic [H, W], segments_info)``.

    ``segments_info`` is a list of dicts with ``id``, ``category_id`` (a train id) and optional
    ``iscrowd``, as in COCO panoptic / detectron2. Returns the arrays of ``panoptic_targets`` as
    torch tensors (``center_points`` included).
    """

    def __init__(
        self,
        *,
        thing_ids: Iterable[int],
        ignore_label: int = 255,
        sigma: float = 8.0,
        small_instance_area: int = 4096,
        small_instance_weight: float = 3.0,
        ignore_crowd_in_semantic: bool = False,
        crowd_as_instance: bool = False,
    ) -> None:
        self.thing_ids = tuple(int(t) for t in thing_ids)
        self.ignore_label = ignore_label
        self.sigma = sigma
        self.small_instance_area = small_instance_area
        self.small_instance_weight = small_instance_weight
        self.ignore_crowd_in_semantic = ignore_crowd_in_semantic
        self.crowd_as_instance = crowd_as_instance

    def __call__(
        self, panoptic: np.ndarray, segments_info: Sequence[Mapping]
    ) -> dict[str, torch.Tensor]:
        try:
            ids = [int(s["id"]) for s in segments_info]
            cats = [int(s["category_id"]) for s in segments_info]
        except KeyError as exc:
            raise ValueError(
                f"segments_info: every segment needs 'id' and 'category_id', missing {exc}"
            ) from None
        crowd = [int(s.get("iscrowd", 0)) for s in segments_info]
        out = panoptic_targets(
            panoptic,
            ids,
            cats,
            crowd,
            thing_ids=self.thing_ids,
            ignore_label=self.ignore_label,
            sigma=self.sigma,
            small_instance_area=self.small_instance_area,
            small_instance_weight=self.small_instance_weight,
            ignore_crowd_in_semantic=self.ignore_crowd_in_semantic,
            crowd_as_instance=self.crowd_as_instance,
        )
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
