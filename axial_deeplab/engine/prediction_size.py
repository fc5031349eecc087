"""The size a network sees at inference, and a prediction brought back to the image's size.

Evaluation resizes each image so that its short side is ``INPUT.MIN_SIZE_TEST`` (long side at most
``INPUT.MAX_SIZE_TEST``; ``data.transforms.EvalResize``) and writes its predictions at the image
file's size (nearest neighbour, ``engine.predictions``). ``Predictor`` does the same, so that
``tools/infer.py``, the demo and the Python API predict as ``--eval-only`` does, whatever the
size of the image they are given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.transforms import resize_image, resize_shortest_edge_size
from ..modeling.panoptic_deeplab import upsample, upsample_offsets
from .evaluate import labels_to_segments, resize_nearest


def network_size(
    height: int, width: int, test_size: tuple[int, int] | None
) -> tuple[int, int] | None:
    """``(h, w)`` the network predicts an ``height x width`` image at, for ``test_size``
    ``(MIN_SIZE_TEST, MAX_SIZE_TEST)``; None when that is the image's own size (or
    ``MIN_SIZE_TEST`` is 0, as ``EvalResize`` keeps the size then)."""
    if test_size is None or test_size[0] <= 0:
        return None
    size = resize_shortest_edge_size(height, width, test_size[0], test_size[1])
    return None if size == (height, width) else size


def check_rgb_image(image: np.ndarray) -> np.ndarray:
    """``image`` if it is an ``[H, W, 3]`` uint8 RGB numpy array (checked before any resize, so
    that errors describe the caller's array), else a ValueError saying what it is."""
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image: expected an [H, W, 3] uint8 RGB numpy array, got {type(image).__name__}"
            + (" (convert it with .numpy())" if isinstance(image, torch.Tensor) else "")
        )
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"image: expected an [H, W, 3] RGB array, got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels (0-255), got {image.dtype}")
    return image


def predict_at_evaluation_size(
    predict: Callable[[np.ndarray], dict],
    image: np.ndarray,
    test_size: tuple[int, int] | None,
    metadata,
    *,
    align_corners: bool,
) -> dict:
    """``predict(image)`` (a ``Predictor.predict``-style dict at its input's size) run on
    ``image`` (:func:`check_rgb_image`) resized to :func:`network_size`, and the result brought
    back to ``image``'s size (:func:`prediction_at_size`); ``predict(image)`` itself when no
    resize is due."""
    size = network_size(*check_rgb_image(image).shape[:2], test_size)
    if size is None:
        return predict(image)
    prediction = predict(resize_image(image, size))
    return prediction_at_size(prediction, image.shape[:2], metadata, align_corners=align_corners)


def prediction_at_size(
    prediction: dict, size: tuple[int, int], metadata, *, align_corners: bool
) -> dict:
    """``Predictor.predict``'s result at ``size`` ``(H, W)``: the panoptic and semantic maps by
    nearest neighbour (as evaluation writes them), the centre heatmap and the offsets bilinear
    (offsets rescaled to pixels of the new size), the centres scaled; segments and their areas
    are counted again at the new size and keep their scores (a segment that no pixel keeps is
    left out). ``metadata``: the predictor's (label divisor, thing ids)."""
    height, width = prediction["panoptic"].shape
    labels = resize_nearest(prediction["panoptic"], size)
    ids, segments = labels_to_segments(
        labels, label_divisor=metadata.label_divisor, thing_ids=metadata.thing_ids
    )
    before = {s["label"]: s for s in prediction["segments_info"]}
    kept = [int(v) for v in np.unique(labels) if v >= 0]  # the order of labels_to_segments
    for segment, label in zip(segments, kept, strict=True):
        old = before[label]
        segment.update(category_name=old["category_name"], score=old["score"], label=label)
    center = torch.from_numpy(prediction["center"])[None, None]
    offset = torch.from_numpy(prediction["offset"])[None]
    scale = np.array([size[0] / height, size[1] / width])
    centers = np.floor((prediction["centers"] + 0.5) * scale).astype(np.int64)
    return {
        "panoptic": labels,
        "semantic": resize_nearest(prediction["semantic"], size),
        "center": upsample(center, size, align_corners=align_corners)[0, 0].numpy(),
        "offset": upsample_offsets(offset, size, align_corners=align_corners)[0].numpy(),
        "centers": np.minimum(centers, np.array(size) - 1).reshape(-1, 2),
        "segment_ids": ids,
        "segments_info": segments,
    }
