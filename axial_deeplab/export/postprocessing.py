"""Panoptic-DeepLab post-processing as one graph, for export.

The same function as :func:`axial_deeplab.modeling.postprocessing.get_panoptic_segmentation`
(its docstring states the algorithm), written for ``torch.export`` and ONNX: no Python loop over
the data, no ``.item()``, no host round trip. Two sizes depend on the data, inside the graph;
every other size depends on ``H``, ``W``, ``top_k`` and the number of classes only:

- centres: the ``top_k`` best NMS survivors are candidates; a candidate is kept when it scores
  above the eager bound (the ``top_k``-th best survivor's score when there are at least ``top_k``
  survivors, else 0), which keeps exactly the eager set, since every kept centre is among the
  ``top_k`` best. Kept centres are sorted row-major first, then ``[top_k, 2]`` padding of ``-1``;
- stuff: class areas by ``scatter_add`` into ``[C]``; one lookup per pixel gives the stuff label
  or a marker for thing pixels;
- grouping: only the thing pixels (``nonzero``: ``[P]``, an ONNX ``NonZero``), against the kept
  centres only: a ``while_loop`` (an ONNX ``Loop``) over chunks of :data:`CENTER_CHUNK` centres
  runs ``ceil(kept / CENTER_CHUNK)`` times. Distances less ``|p|^2`` in float64, exact as in the
  eager code (so equal values and equal ties);
- votes: ``scatter_add`` into ``[top_k * C]`` counters.

The results are equal to the eager ones element for element (``tests/test_export.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

CENTER_CHUNK = 16  # centres whose [P, chunk] float64 distances are held at once


def thing_table(thing_ids: Iterable[int], num_classes: int) -> torch.Tensor:
    """``[C]`` bool, True for the thing classes among ``0 .. C - 1``."""
    table = torch.zeros(num_classes, dtype=torch.bool)
    for i in thing_ids:
        if 0 <= int(i) < num_classes:
            table[int(i)] = True
    return table


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
    # At least top_k survivors exactly when the top_k-th best is one (finite), not padding.
    bound = torch.where(best[-1] > float("-inf"), best[-1].clamp(min=0.0), best.new_zeros(()))
    kept = best > bound  # [top_k]; -inf never passes
    order = torch.where(kept, flat, scores.shape[0])  # kept first, by flat (row-major) index
    order, rank = torch.sort(order)
    kept = kept[rank]
    flat = torch.where(kept, order, 0)
    # Row and column of the flat indices. The width is a tensor: the ONNX exporter cannot
    # lower the division of a tensor by a symbolic size.
    width = torch.ones((), dtype=torch.int64, device=center.device) * center.shape[2]
    rows = torch.div(flat, width, rounding_mode="floor")
    points = torch.stack([rows, flat - rows * width], dim=1)  # [top_k, 2]
    return torch.where(kept[:, None], points, -1), kept


def nearest_center(
    points: torch.Tensor, kept: torch.Tensor, vote_y: torch.Tensor, vote_x: torch.Tensor
) -> torch.Tensor:
    """``[P]`` int64: index of the kept centre nearest to each voted location ``(vote_y,
    vote_x)`` (``[P]`` float32 each; ties to the lower index), for ``points`` ``[K, 2]`` and
    ``kept`` ``[K]`` (kept slots first)."""
    # The eager rule (modeling/postprocessing.group_pixels): |p - c|^2 - |p|^2 = |c|^2 - 2 p.c in
    # float64, exact for the coordinates it states, so any order of exact operations gives the
    # same values, ties included: here one [P, 3] x [3, chunk] product per chunk of centres.
    ones = torch.ones_like(vote_y, dtype=torch.float64)
    votes = torch.stack([vote_y.to(torch.float64), vote_x.to(torch.float64), ones], dim=1)
    cy, cx = points[:, 0].to(torch.float64), points[:, 1].to(torch.float64)  # [K] integers
    # An unused slot gets the column (0, 0, inf): its value is inf for every (finite) vote, with
    # no [P, chunk] mask to apply. Such columns also pad K to whole chunks.
    zero = torch.zeros_like(cy)
    coefficients = torch.stack([
        torch.where(kept, -2 * cy, zero),
        torch.where(kept, -2 * cx, zero),
        torch.where(kept, cy * cy + cx * cx, float("inf")),
    ])  # [3, K]  # fmt: skip
    padding = -points.shape[0] % CENTER_CHUNK
    unused = torch.tensor([0.0, 0.0, float("inf")], dtype=torch.float64, device=ones.device)
    coefficients = torch.cat([coefficients, unused[:, None].expand(3, padding)], dim=1)
    # Only the chunks that hold kept centres run (kept slots come first): an ONNX Loop whose
    # trip count is read from ``kept`` inside the graph.
    chunks = (kept.sum() + CENTER_CHUNK - 1) // CENTER_CHUNK
    window = torch.arange(CENTER_CHUNK, device=ones.device)

    def more(index, best_dist, best):
        return index < chunks

    def step(index, best_dist, best):
        start = index * CENTER_CHUNK
        dist = votes @ coefficients.index_select(1, window + start)  # [P, chunk]
        chunk_dist, chunk_index = dist.min(dim=1)  # [P]; first index on ties
        closer = chunk_dist < best_dist  # strict: an earlier centre wins ties
        best = torch.where(closer, chunk_index + start, best)
        return index + 1, torch.minimum(chunk_dist, best_dist), best

    state = (
        torch.zeros((), dtype=torch.int64, device=ones.device),
        torch.full_like(ones, float("inf")),  # [P] best value so far
        torch.zeros(ones.shape, dtype=torch.int64, device=ones.device),  # [P] its centre
    )
    return torch.while_loop(more, step, state)[2]  # (a prototype API in torch 2.14)


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
    points, kept = select_centers(center, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k)

    # Stuff: classes whose area reaches stuff_area keep their label, others are void. Thing
    # classes get a marker (no label: void or a class * label_divisor >= 0), so that one lookup
    # per pixel gives both the stuff labels and the thing pixels. (index_select: an ONNX Gather.)
    area = torch.zeros(num_classes, dtype=torch.int64, device=sem.device)
    area = area.scatter_add(0, sem, torch.ones_like(sem))  # [C]
    classes = torch.arange(num_classes, device=sem.device)
    stuff_lut = torch.where(area >= stuff_area, classes * label_divisor, void_label)  # [C]
    marker = min(void_label, 0) - 1
    panoptic = torch.where(is_thing, marker, stuff_lut).index_select(0, sem)  # [H*W]
    thing = panoptic == marker  # [H*W]

    # Things: only the thing pixels are grouped; NonZero gives their flat indices ([P], a size
    # that depends on the data, inside the graph). Voted location: pixel + offset, in float32
    # as the eager code adds them.
    flat = torch.nonzero(thing)[:, 0]  # [P]
    height, width = offsets.shape[1:]
    rows = torch.arange(height, device=sem.device, dtype=offsets.dtype)[:, None]  # [H, 1]
    cols = torch.arange(width, device=sem.device, dtype=offsets.dtype)[None, :]  # [1, W]
    vote_y = (offsets[0] + rows).reshape(-1).index_select(0, flat)  # [P]
    vote_x = (offsets[1] + cols).reshape(-1).index_select(0, flat)  # [P]
    instance = nearest_center(points, kept, vote_y, vote_x)  # [P]

    # The majority class of each instance, then ids 1, 2, ... per class in centre order.
    slot = instance * num_classes + sem.index_select(0, flat)  # [P]
    class_votes = torch.zeros(top_k * num_classes, dtype=torch.int64, device=sem.device)
    class_votes = class_votes.scatter_add(0, slot, torch.ones_like(slot))
    class_votes = class_votes.reshape(top_k, num_classes)
    label_class = class_votes.argmax(dim=1)  # [K], smallest class on ties
    one_hot = F.one_hot(label_class, num_classes) * (class_votes.sum(dim=1, keepdim=True) > 0)
    rank = one_hot.cumsum(dim=0).gather(1, label_class[:, None])[:, 0]  # [K] id within class
    labels = torch.where(kept.any(), label_class * label_divisor + rank, void_label)  # [K]
    # Every thing pixel is in flat: void without any centre, else its instance's label.
    panoptic = panoptic.scatter(0, flat, labels.index_select(0, instance))
    return panoptic.reshape(semantic.shape), points
