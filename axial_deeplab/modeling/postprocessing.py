"""Panoptic-DeepLab post-processing as pure tensor functions (CPU or GPU, unchanged).

The algorithm is the standard one (Panoptic-DeepLab, Cheng et al. 2020; the same results as
detectron2's ``projects/Panoptic-DeepLab/panoptic_deeplab/post_processing.py``):

1. centres: heatmap values above ``threshold`` that equal their ``nms_kernel x nms_kernel`` max
   pool; with ``top_k``, only those scoring *strictly above* the ``top_k``-th best survivor
   (so at most ``top_k - 1`` when at least ``top_k`` survive, as in detectron2 and deeplab2:
   ``top_k`` 1 keeps none);
   returned in row-major order, which fixes the instance numbering;
2. every thing pixel (semantic class in ``thing_ids``) goes to the centre nearest to
   ``pixel + offset`` (ties to the lower centre index);
3. each instance takes the majority class of its pixels (ties to the smaller class id) and ids
   1, 2, ... per class in centre order; instances are never merged;
4. stuff classes keep their pixels if their total area is at least ``stuff_area``, else void;
   pixels of a negative class id (a model's void channel, :func:`semantic_prediction`) are void.

Unlike the reference, the work is proportional to the thing pixels (not ``K x H x W``): distances
are computed for thing pixels only, in chunks, and the vote is one ``bincount`` over
``(instance, class)`` pairs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

_CHUNK_ELEMENTS = 1 << 18  # pixel x centre distances held at once while grouping
_ROWS = 64  # image rows grouped at once: bounds the memory of the thing-pixel temporaries


def _check(name: str, tensor: torch.Tensor, channels: int) -> None:
    if tensor.dim() != 3 or tensor.shape[0] != channels:
        raise ValueError(f"{name}: expected shape [{channels}, H, W], got {list(tensor.shape)}")


def find_instance_centers(
    center_heatmap: torch.Tensor, *, threshold: float, nms_kernel: int, top_k: int | None
) -> torch.Tensor:
    """Centre points ``[K, 2]`` int64 ``(y, x)`` of a ``[1, H, W]`` heatmap, in row-major order."""
    _check("center_heatmap", center_heatmap, 1)
    if nms_kernel % 2 != 1:
        raise ValueError(f"nms_kernel must be odd, got {nms_kernel}")
    heat = center_heatmap[0].float()
    heat = torch.where(heat > threshold, heat, torch.full_like(heat, -1.0))  # [H, W]
    # A centre equals the max of its k x k window (-inf beyond the border, as max pooling pads).
    candidates = torch.nonzero(heat > -1.0)  # [N, 2], row-major
    pad = nms_kernel // 2
    if len(candidates) * nms_kernel**2 > heat.numel():  # e.g. an untrained model: pool it all
        # k x k max pool as a 1 x k then k x 1 pool (max is separable): [1, 1, H, W]
        pooled = F.max_pool2d(heat[None, None], (1, nms_kernel), stride=1, padding=(0, pad))
        pooled = F.max_pool2d(pooled, (nms_kernel, 1), stride=1, padding=(pad, 0))[0, 0]
        return _top_k(torch.nonzero((heat == pooled) & (heat > -1.0)), heat, top_k)
    # Else only the windows of the pixels above the threshold (a few thousand, not H x W).
    padded = F.pad(heat, (pad, pad, pad, pad), value=float("-inf"))  # [H + 2 pad, W + 2 pad]
    window = torch.arange(nms_kernel, device=heat.device)  # [k]
    rows = candidates[:, 0, None, None] + window[None, :, None]  # [N, k, 1]
    cols = candidates[:, 1, None, None] + window[None, None, :]  # [N, 1, k]
    peak = padded[rows, cols].amax(dim=(1, 2))  # [N] window maxima
    values = heat[candidates[:, 0], candidates[:, 1]]  # [N]
    return _top_k(candidates[values == peak], heat, top_k)


def _top_k(survivors: torch.Tensor, heat: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """The ``[S, 2]`` survivors scoring strictly above the ``top_k``-th best (all if fewer)."""
    scores = heat[survivors[:, 0], survivors[:, 1]]  # [S]
    bound = 0.0
    if top_k is not None and len(scores) >= top_k:
        bound = max(float(torch.topk(scores, top_k).values[-1]), 0.0)
    return survivors[scores > bound]


def group_pixels(
    center_points: torch.Tensor, pixel_y: torch.Tensor, pixel_x: torch.Tensor
) -> torch.Tensor:
    """Index of the centre exactly nearest to each voted location.

    ``center_points`` ``[K, 2]`` ``(y, x)``; ``pixel_y``, ``pixel_x`` ``[P]`` float voted
    locations (pixel + offset). Returns ``[P]`` int64 in ``[0, K)``; ties go to the lower index.

    The squared distance ``|p - c_k|^2`` is ``|p|^2 + s_k`` with ``s_k = |c_k|^2 - 2 p.c_k``,
    and ``s_k`` is computed in float64 (one ``[P, 3] x [3, K]`` product, then argmin). This is
    exact, so ties and near-ties are decided by the true distances, for centres below 4096 and
    voted coordinates in ``(-8192, 8192)`` that are 0 or at least 1/4 in magnitude (float32
    values: every product and sum then needs at most 53 bits, in any summation order); outside
    that, the rounding is below ``2^-25`` pixel^2. Float32 distances (detectron2's) can round two
    near-equal distances to a tie, which then goes to the lower index.
    """
    centers = center_points.to(torch.float64)  # [K, 2] integers, exact
    weights = torch.cat([-2 * centers.T, (centers * centers).sum(1)[None]])  # [3, K]
    out = torch.empty(pixel_y.shape, dtype=torch.int64, device=pixel_y.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(centers)))
    for start in range(0, len(pixel_y), step):
        y, x = pixel_y[start : start + step], pixel_x[start : start + step]
        points = torch.stack([y, x, torch.ones_like(y)], dim=1).to(torch.float64)  # [chunk, 3]
        torch.argmin(
            points @ weights, dim=1, out=out[start : start + step]
        )  # [chunk, K] -> [chunk]
    return out


def _class_lut(ids: Iterable[int], size: int, device: torch.device) -> torch.Tensor:
    lut = torch.zeros(size, dtype=torch.bool, device=device)
    ids = [int(i) for i in ids if 0 <= int(i) < size]
    if ids:
        lut[torch.tensor(ids, device=device)] = True
    return lut


def semantic_prediction(semantic: torch.Tensor, *, void_class: int = -1) -> torch.Tensor:
    """Data-set class ids ``[..., H, W]`` int64 of semantic logits or probabilities ``[..., K,
    H, W]`` (argmax over ``K``, first channel on ties).

    ``void_class >= 0``: that channel is a void class of the model, not a data-set class (deeplab2's
    COCO models: channel 0). The argmax still runs over all ``K`` channels (as the model's
    authors score it); pixels won by the void channel become ``-1`` (void) and channels above it
    shift down by one, to the data set's ``K - 1`` ids. ``-1``: the plain argmax.
    """
    labels = semantic.argmax(-3)  # [..., H, W]
    if void_class < 0:
        return labels
    shifted = labels - (labels > void_class).long()
    return torch.where(labels == void_class, torch.full_like(labels, -1), shifted)


def drop_void_channel(semantic: torch.Tensor, *, void_class: int = -1) -> torch.Tensor:
    """``[..., K, H, W]`` per-class maps (e.g. probabilities of all ``K`` outputs) without the
    void channel ``void_class``: ``[..., K - 1, H, W]``, channel ``c`` = data-set class ``c``, as
    :func:`semantic_prediction` numbers them. ``-1``: unchanged."""
    if void_class < 0:
        return semantic
    keep = [c for c in range(semantic.shape[-3]) if c != void_class]
    return semantic[..., keep, :, :]


def class_probabilities(outputs: dict) -> torch.Tensor:
    """Softmax over the classes of one image's ``outputs["semantic"]`` logits ``[K, H, W]``
    (float32), computed once per image: kept in ``outputs["semantic_prob"]`` for the next caller
    (the AP metric, the Cityscapes writer and the evaluation pictures all need it)."""
    prob = outputs.get("semantic_prob")
    if prob is None:
        prob = outputs["semantic_prob"] = outputs["semantic"].float().softmax(0)
    return prob


def get_panoptic_segmentation(
    semantic: torch.Tensor,
    center_heatmap: torch.Tensor,
    offsets: torch.Tensor,
    *,
    thing_ids: Iterable[int],
    label_divisor: int,
    stuff_area: int,
    void_label: int,
    threshold: float = 0.1,
    nms_kernel: int = 7,
    top_k: int | None = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Panoptic map of one image (see the module docstring for the algorithm).

    Args:
        semantic: ``[1, H, W]`` integer class ids (argmax of the semantic logits); negative
            ids are void pixels (:func:`semantic_prediction` of a model with a void class).
        center_heatmap: ``[1, H, W]`` centre heatmap.
        offsets: ``[2, H, W]`` offsets ``(dy, dx)`` from each pixel to its centre.

    Returns:
        ``panoptic`` ``[1, H, W]`` int64, ``class * label_divisor + instance id`` (instance ids
        from 1 per class, 0 for stuff, ``void_label`` for void), and the centres ``[K, 2]`` int64
        ``(y, x)``.
    """
    _check("semantic", semantic, 1)
    _check("offsets", offsets, 2)
    if center_heatmap.shape[1:] != semantic.shape[1:] or offsets.shape[1:] != semantic.shape[1:]:
        raise ValueError(
            f"spatial sizes differ: semantic {list(semantic.shape)}, center_heatmap "
            f"{list(center_heatmap.shape)}, offsets {list(offsets.shape)}"
        )
    sem = semantic[0].long().reshape(-1)  # [H*W]
    num_classes = max(int(sem.max()), 0) + 1 if sem.numel() else 1
    void_slot = None
    if sem.numel() and int(sem.min()) < 0:  # void pixels: a last slot, neither thing nor kept
        void_slot = num_classes
        sem = torch.where(sem < 0, void_slot, sem)
        num_classes += 1
    is_thing_class = _class_lut(thing_ids, num_classes, sem.device)
    if void_slot is not None:
        is_thing_class[void_slot] = False
    centers = find_instance_centers(
        center_heatmap, threshold=threshold, nms_kernel=nms_kernel, top_k=top_k
    )
    # Stuff classes whose area reaches stuff_area keep their label; thing classes: void for now.
    area = torch.bincount(sem, minlength=num_classes)  # [C]
    classes = torch.arange(num_classes, device=sem.device)
    keep = (area >= stuff_area) & ~is_thing_class
    if void_slot is not None:
        keep[void_slot] = False
    panoptic = torch.where(keep, classes * label_divisor, void_label)[sem]  # [H*W]
    if len(centers):
        _label_things(panoptic, sem, offsets, centers, is_thing_class, label_divisor)
    return panoptic.reshape(semantic.shape), centers


def _label_things(
    panoptic: torch.Tensor,
    sem: torch.Tensor,
    offsets: torch.Tensor,
    centers: torch.Tensor,
    is_thing_class: torch.Tensor,
    label_divisor: int,
) -> None:
    """Write the instance labels of the thing pixels into ``panoptic`` ``[H*W]`` (in place).

    Blocks of :data:`_ROWS` rows bound the memory of the per-pixel temporaries: a first pass
    groups each block's thing pixels (instance indices kept in int32) and counts the class votes;
    a second writes the labels.
    """
    height, width = offsets.shape[1:]
    num_classes = is_thing_class.numel()
    votes = torch.zeros(len(centers) * num_classes, dtype=torch.int64, device=sem.device)
    blocks = []
    for top in range(0, height, _ROWS):
        lo, hi = top * width, min(top + _ROWS, height) * width
        pixels = torch.nonzero(is_thing_class[sem[lo:hi]])[:, 0]  # [P] flat indices in block
        flat = pixels + lo  # [P] flat indices in the image
        off = offsets.reshape(2, -1)[:, flat]  # [2, P]
        pixel_y = (flat // width).to(off.dtype) + off[0]  # [P] pixel + offset, float32
        pixel_x = (flat % width).to(off.dtype) + off[1]  # [P]
        instance = group_pixels(centers, pixel_y, pixel_x)  # [P] in [0, K)
        votes += torch.bincount(
            instance * num_classes + sem[flat], minlength=votes.numel()
        )  # fmt: skip
        blocks.append((flat.to(torch.int32), instance.to(torch.int32)))
    labels = _instance_labels(votes.reshape(len(centers), num_classes), label_divisor)  # [K]
    for flat, instance in blocks:
        panoptic[flat.long()] = labels[instance.long()]


def _instance_labels(votes: torch.Tensor, divisor: int) -> torch.Tensor:
    """Panoptic label ``[K]`` of each instance from its ``[K, C]`` class votes: majority class,
    ids from 1 per class in instance order."""
    label_class = votes.argmax(dim=1)  # [K], first (smallest) class on ties
    one_hot = F.one_hot(label_class, votes.shape[1]) * (votes.sum(dim=1, keepdim=True) > 0)
    rank = one_hot.cumsum(dim=0).gather(1, label_class[:, None])[:, 0]  # [K] id within class
    return label_class * divisor + rank


def get_panoptic_segmentation_batch(
    semantic: torch.Tensor, center_heatmap: torch.Tensor, offsets: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Batched ``get_panoptic_segmentation``: ``semantic`` ``[N, H, W]``, ``center_heatmap``
    ``[N, 1, H, W]``, ``offsets`` ``[N, 2, H, W]`` -> ``([N, H, W]`` int64, ``N`` centre tensors).
    """
    if semantic.dim() != 3 or center_heatmap.dim() != 4 or offsets.dim() != 4:
        raise ValueError(
            "expected semantic [N, H, W], center_heatmap [N, 1, H, W], offsets [N, 2, H, W], got "
            f"{list(semantic.shape)}, {list(center_heatmap.shape)}, {list(offsets.shape)}"
        )
    results = [
        get_panoptic_segmentation(s[None], c, o, **kwargs)
        for s, c, o in zip(semantic, center_heatmap, offsets, strict=True)
    ]
    return torch.cat([r[0] for r in results]), [r[1] for r in results]


def get_instances(
    panoptic: torch.Tensor,
    semantic_prob: torch.Tensor,
    center_heatmap: torch.Tensor,
    *,
    thing_ids: Iterable[int],
    label_divisor: int,
) -> dict[str, torch.Tensor]:
    """Thing instances of a panoptic map with scores for instance AP.

    Score = mean probability of the instance's class over its mask x the centre heatmap at the
    mask's mean pixel ``(int(mean y), int(mean x))`` (as detectron2's Panoptic-DeepLab).

    Args:
        panoptic: ``[1, H, W]`` or ``[H, W]`` panoptic labels.
        semantic_prob: ``[C, H, W]`` softmax probabilities.
        center_heatmap: ``[1, H, W]``.

    Returns:
        ``masks`` ``[M, H, W]`` bool, ``scores`` ``[M]``, ``classes`` ``[M]`` int64 and
        ``labels`` ``[M]`` (the panoptic labels), in increasing label order.
    """
    pan = panoptic.reshape(-1)  # [H*W]
    height, width = semantic_prob.shape[1:]
    if pan.numel() != height * width:
        raise ValueError(
            f"panoptic {list(panoptic.shape)} and semantic_prob {list(semantic_prob.shape)} differ"
        )
    labels, inverse = torch.unique(pan, return_inverse=True)  # [U], [H*W]
    label_class = torch.div(labels, label_divisor, rounding_mode="floor")
    is_thing = torch.zeros_like(labels, dtype=torch.bool)
    for thing in set(int(t) for t in thing_ids):
        is_thing |= (label_class == thing) & (labels >= 0)
    pixel_class = label_class.clamp(0, semantic_prob.shape[0] - 1)[inverse]  # [H*W]
    prob = semantic_prob.reshape(semantic_prob.shape[0], -1).gather(0, pixel_class[None])[0]
    count = torch.bincount(inverse, minlength=len(labels)).clamp(min=1)  # [U]
    mean_prob = torch.bincount(inverse, weights=prob.double(), minlength=len(labels)) / count
    flat = torch.arange(pan.numel(), device=pan.device)
    mean_y = torch.bincount(inverse, weights=(flat // width).double(), minlength=len(labels))
    mean_x = torch.bincount(inverse, weights=(flat % width).double(), minlength=len(labels))
    cy = (mean_y / count).long()  # [U], truncated as int()
    cx = (mean_x / count).long()  # [U]
    center_score = center_heatmap[0, cy, cx].double()  # [U]
    keep = torch.nonzero(is_thing)[:, 0]
    return {
        "masks": pan.reshape(height, width)[None] == labels[keep, None, None],
        "scores": (mean_prob * center_score)[keep].to(semantic_prob.dtype),
        "classes": label_class[keep],
        "labels": labels[keep],
    }
