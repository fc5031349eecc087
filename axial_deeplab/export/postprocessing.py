"""Panoptic-DeepLab post-processing with fixed shapes, for export.

The same function as :func:`axial_deeplab.modeling.postprocessing.get_panoptic_segmentation`
(its docstring states the algorithm), written without data-dependent shapes: the eager code
selects thing pixels and centres with ``nonzero`` and counts with ``bincount``, whose output sizes
depend on the data; here every tensor's size depends on ``H``, ``W``, ``top_k`` and the number of
classes only:

- centres: the ``top_k`` best NMS survivors are candidates; a candidate is kept when it scores
  above the eager bound (the ``top_k``-th best survivor's score when there are at least ``top_k``
  survivors, else 0), which keeps exactly the eager set, since every kept centre is among the
  ``top_k`` best. Kept centres are sorted row-major first, then ``[top_k, 2]`` padding of ``-1``;
- grouping: every pixel's squared distance to every kept centre less ``|p|^2``, in float64 and
  exact as in the eager code (so equal values and equal ties), minimised over fixed chunks of
  centres;
- votes and stuff areas: ``scatter_add`` into ``[top_k * C]`` and ``[C]`` counters.

The results are equal to the eager ones element for element (``tests/test_export.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

CENTER_CHUNK = 8  # centres whose [H*W, chunk] float64 distances are held at once


def thing_table(thing_ids: Iterable[int], num_classes: int) -> torch.Tensor:
    """``[C]`` bool, True for the thing classes among ``0 .. C - 1``."""
    table = torch.zeros(num_classes, dtype=torch.bool)
    for i in thing_ids:
        if 0 <= int(i) < num_classes:
            table[int(i)] = True
    return table


def pixel_grid(height, width, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[H*W]`` int64 row and column of every pixel, row-major (no division by a symbolic size,
    which the ONNX exporter cannot lower)."""
    rows = torch.arange(height, device=device)[:, None].expand(height, width)  # [H, W]
    cols = torch.arange(width, device=device)[None, :].expand(height, width)  # [H, W]
    return rows.reshape(-1), cols.reshape(-1)


def select_centers(
    center: torch.Tensor, *, threshold: float, nms_kernel: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of a ``[1, H, W]`` heatmap: ``[top_k, 2]`` int64 ``(y, x)`` (kept ones first, in
    row-major order, then ``-1`` rows) and ``[top_k]`` bool (kept)."""
    if nms_kernel % 2 != 1:
        raise ValueError(f"nms_kernel must be odd, got {nms_kernel}")
    heat = center.float()
    heat = torch.where(heat > threshold, heat, torch.full_like(heat, -1.0))  # [1, H, W]
    pad = nms_kernel // 2
    pooled = F.max_pool2d(heat[None], (1, nms_kernel), stride=1, padding=(0, pad))
    pooled = F.max_pool2d(pooled, (nms_kernel, 1), stride=1, padding=(pad, 0))[0]  # [1, H, W]
    survivor = ((heat == pooled) & (heat > -1.0)).reshape(-1)  # [H*W]
    scores = torch.where(survivor, heat.reshape(-1), float("-inf"))  # [H*W]
    # At least top_k entries, so that topk's k is fixed whatever the image size.
    scores = torch.cat([scores, scores.new_full((top_k,), float("-inf"))])  # [H*W + top_k]
    best, flat = torch.topk(scores, top_k)  # [top_k] each, best first
    count = survivor.sum()
    bound = torch.where(count >= top_k, best[-1].clamp(min=0.0), best.new_zeros(()))
    kept = best > bound  # [top_k]; -inf never passes
    order = torch.where(kept, flat, scores.shape[0])  # kept first, by flat (row-major) index
    order, rank = torch.sort(order)
    kept = kept[rank]
    flat = torch.where(kept, order, 0)
    rows, cols = pixel_grid(center.shape[1], center.shape[2], center.device)
    points = torch.stack([rows[flat], cols[flat]], dim=1)  # [top_k, 2]
    return torch.where(kept[:, None], points, -1), kept


def nearest_center(points: torch.Tensor, kept: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``[H*W]`` int64: index of the kept centre nearest to each ``pixel + offset`` (ties to the
    lower index), for ``points`` ``[K, 2]``, ``kept`` ``[K]`` and ``offsets`` ``[2, H, W]``."""
    height, width = offsets.shape[1:]
    off = offsets.reshape(2, -1)  # [2, H*W]
    rows, cols = pixel_grid(height, width, off.device)
    vote_y, vote_x = rows.to(off.dtype) + off[0], cols.to(off.dtype) + off[1]  # [H*W]
    # The eager rule (modeling/postprocessing.group_pixels): |p - c|^2 - |p|^2 = |c|^2 - 2 p.c in
    # float64, exact for the coordinates it states, so any order of exact operations gives the
    # same values, ties included: here one [H*W, 3] x [3, chunk] product per chunk of centres.
    ones = torch.ones_like(vote_y, dtype=torch.float64)
    votes = torch.stack([vote_y.to(torch.float64), vote_x.to(torch.float64), ones], dim=1)
    cy, cx = points[:, 0].to(torch.float64), points[:, 1].to(torch.float64)  # [K] integers
    coefficients = torch.stack([-2 * cy, -2 * cx, cy * cy + cx * cx])  # [3, K]
    best_dist = torch.full_like(ones, float("inf"))  # [H*W]
    best = torch.zeros(ones.shape, dtype=torch.int64, device=off.device)
    for start in range(0, points.shape[0], CENTER_CHUNK):  # a fixed number of chunks
        stop = min(start + CENTER_CHUNK, points.shape[0])
        dist = votes @ coefficients[:, start:stop]  # [H*W, chunk]
        dist = torch.where(kept[None, start:stop], dist, float("inf"))
        chunk_dist, chunk_index = dist.min(dim=1)  # [H*W]; first index on ties
        closer = chunk_dist < best_dist  # strict: an earlier centre wins ties
        best_dist = torch.where(closer, chunk_dist, best_dist)
        best = torch.where(closer, chunk_index + start, best)
    return best


def panoptic_from_outputs(
    semantic: torch.Tensor,
    center: torch.Tensor,
    offsets: torch.Tensor,
    *,
    is_thing: torch.Tensor,
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    threshold: float,
    nms_kernel: int,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[H, W]`` panoptic labels and ``[top_k, 2]`` centres (``-1`` rows unused) from
    ``semantic`` ``[H, W]`` class ids, ``center`` ``[1, H, W]``, ``offsets`` ``[2, H, W]`` and
    ``is_thing`` ``[C]`` bool (see the eager ``get_panoptic_segmentation``)."""
    num_classes = is_thing.shape[0]
    sem = semantic.reshape(-1)  # [H*W]
    thing = is_thing[sem]  # [H*W]
    points, kept = select_centers(center, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k)

    # Stuff: class areas over the non-thing pixels.
    area = torch.zeros(num_classes, dtype=torch.int64, device=sem.device)
    area = area.scatter_add(0, sem, (~thing).long())  # [C]
    classes = torch.arange(num_classes, device=sem.device)
    stuff_lut = torch.where(area >= stuff_area, classes * label_divisor, void_label)  # [C]

    # Things: nearest centre, then the majority class of each instance.
    instance = nearest_center(points, kept, offsets)  # [H*W]
    slot = torch.where(thing, instance * num_classes + sem, top_k * num_classes)  # [H*W]
    votes = torch.zeros(top_k * num_classes + 1, dtype=torch.int64, device=sem.device)
    votes = votes.scatter_add(0, slot, torch.ones_like(slot))[:-1].reshape(top_k, num_classes)
    label_class = votes.argmax(dim=1)  # [K], smallest class on ties
    one_hot = F.one_hot(label_class, num_classes) * (votes.sum(dim=1, keepdim=True) > 0)
    rank = one_hot.cumsum(dim=0).gather(1, label_class[:, None])[:, 0]  # [K] id within class
    instance_label = (label_class * label_divisor + rank)[instance]  # [H*W]

    has_center = kept.any()
    panoptic = torch.where(thing, void_label, stuff_lut[sem])
    panoptic = torch.where(thing & has_center, instance_label, panoptic)
    return panoptic.reshape(semantic.shape), points
