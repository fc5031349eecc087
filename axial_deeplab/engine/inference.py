"""Panoptic prediction on one RGB image, with optional flip / multi-scale test-time augmentation.

:class:`Predictor` takes a ready model (any module mapping ``[N, 3, H, W]`` 0-255 RGB to
``{"semantic", "center", "offset"}`` at input size), post-processing settings and class metadata.
Test-time augmentation (TTA) runs the model on resized and/or horizontally flipped copies, maps
each pass back to the input size (:func:`undo_pass`), averages semantic probabilities, centre
heatmaps and offsets over the passes, and post-processes once. The CLI is
:mod:`axial_deeplab.engine.infer_net` (``tools/infer.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.catalog import DatasetMetadata
from ..layers.precision import warn_if_slow
from ..modeling.fusion import inference_model
from ..modeling.panoptic_deeplab import upsample, upsample_offsets
from ..modeling.postprocessing import drop_void_channel, get_instances, semantic_prediction
from ..utils.host_memory import keep_freed_memory_for_models
from .evaluate import PaddedModel, PostProcessing, labels_to_segments, panoptic_prediction
from .prediction_size import check_rgb_image, predict_at_evaluation_size


@dataclass(frozen=True)
class InferenceMetadata:
    """What prediction needs to know of the classes: names (train-id order), thing train ids,
    the panoptic label divisor and, optionally, one RGB colour per class."""

    class_names: tuple[str, ...]
    thing_ids: tuple[int, ...] = ()
    label_divisor: int = 1000
    class_colors: tuple[tuple[int, int, int], ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.class_names)
        bad = [t for t in self.thing_ids if not 0 <= int(t) < n]
        if bad:
            raise ValueError(f"metadata: thing_ids {bad} outside [0, {n}) for {n} class names")
        if self.label_divisor < 1:
            raise ValueError(f"metadata: label_divisor must be >= 1, got {self.label_divisor}")
        if self.class_colors is not None and len(self.class_colors) != n:
            raise ValueError(f"metadata: {len(self.class_colors)} class_colors for {n} class names")

    @classmethod
    def generic(cls, num_classes: int, thing_ids: Sequence[int] = ()) -> InferenceMetadata:
        """Names ``class_0, class_1, ...``."""
        return cls(tuple(f"class_{i}" for i in range(num_classes)), tuple(thing_ids))

    @classmethod
    def from_dataset(cls, metadata: DatasetMetadata) -> InferenceMetadata:
        colors = [c.get("color") for c in metadata.categories]
        return cls(
            class_names=metadata.class_names,
            thing_ids=metadata.thing_train_ids,
            label_divisor=metadata.label_divisor,
            class_colors=None if None in colors else tuple(tuple(map(int, c)) for c in colors),
        )


def as_metadata(obj: InferenceMetadata | DatasetMetadata | Mapping) -> InferenceMetadata:
    """An :class:`InferenceMetadata` from itself, a data set's metadata, or a dict with keys
    ``class_names`` and optionally ``thing_ids``, ``label_divisor``, ``class_colors``."""
    if isinstance(obj, InferenceMetadata):
        return obj
    if isinstance(obj, DatasetMetadata):
        return InferenceMetadata.from_dataset(obj)
    if isinstance(obj, Mapping):
        unknown = sorted(set(obj) - {"class_names", "thing_ids", "label_divisor", "class_colors"})
        if unknown or "class_names" not in obj:
            raise ValueError(
                f"metadata dict: needs 'class_names' and only thing_ids, label_divisor, "
                f"class_colors besides; got keys {sorted(obj)}"
            )
        colors = obj.get("class_colors")
        return InferenceMetadata(
            class_names=tuple(str(n) for n in obj["class_names"]),
            thing_ids=tuple(int(t) for t in obj.get("thing_ids", ())),
            label_divisor=int(obj.get("label_divisor", 1000)),
            class_colors=None if colors is None else tuple(tuple(map(int, c)) for c in colors),
        )
    raise TypeError(f"metadata: expected InferenceMetadata, DatasetMetadata or dict, got {obj!r}")


@dataclass(frozen=True)
class TestTimeAugmentation:
    """Input scale factors and whether to add a horizontally flipped pass at each scale."""

    __test__ = False  # not a pytest test class despite the name

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"TTA scales must be positive and non-empty, got {self.scales}")

    def passes(self) -> list[tuple[float, bool]]:
        """``(scale, flipped)`` of every model pass."""
        flips = (False, True) if self.flip else (False,)
        return [(float(s), f) for s in self.scales for f in flips]


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(round(H * scale), round(W * scale))``, at least 1 pixel each."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def undo_pass(
    outputs: Mapping[str, torch.Tensor],
    size: tuple[int, int],
    *,
    flipped: bool,
    align_corners: bool,
) -> dict[str, torch.Tensor]:
    """Map one pass's raw outputs (at the pass's input size ``h x w``) back to the original image.

    Returns ``"semantic"`` softmax probabilities ``[N, K, H, W]``, ``"center"`` ``[N, 1, H, W]``
    and ``"offset"`` ``[N, 2, H, W]`` ``(dy, dx)`` in original pixels: offsets are rescaled by
    the resize factor of each axis (:func:`upsample_offsets`); a flipped pass is flipped back
    along ``x`` and its ``dx`` negated (a vector pointing right in the flipped image points left
    in the original).
    """
    prob = upsample(
        F.softmax(outputs["semantic"].float(), dim=1), size, align_corners=align_corners
    )
    center = upsample(outputs["center"].float(), size, align_corners=align_corners)
    offset = upsample_offsets(outputs["offset"].float(), size, align_corners=align_corners)
    if flipped:
        prob, center, offset = prob.flip(-1), center.flip(-1), offset.flip(-1)
        offset = offset * offset.new_tensor([1.0, -1.0]).view(1, 2, 1, 1)  # (dy, dx) -> (dy, -dx)
    return {"semantic": prob, "center": center, "offset": offset}


def run_with_tta(
    model: nn.Module, images: torch.Tensor, tta: TestTimeAugmentation, *, align_corners: bool
) -> dict[str, torch.Tensor]:
    """Mean of :func:`undo_pass` over ``tta.passes()`` for ``images`` ``[N, 3, H, W]`` 0-255."""
    size = (images.shape[2], images.shape[3])
    total: dict[str, torch.Tensor] = {}
    passes = tta.passes()
    for scale, flipped in passes:
        x = upsample(images, scaled_size(size, scale), align_corners=align_corners)
        x = x.flip(-1) if flipped else x
        out = undo_pass(model(x), size, flipped=flipped, align_corners=align_corners)
        for key, value in out.items():
            total[key] = value if key not in total else total[key] + value
    return {key: value / len(passes) for key, value in total.items()}


def segment_scores(
    panoptic: torch.Tensor,
    prob: torch.Tensor,
    center: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    label_divisor: int,
) -> dict[int, float]:
    """Score of each panoptic label of ``panoptic`` ``[H, W]``: the mean probability of its class
    over its mask (``prob`` ``[K, H, W]``), times, for things, the centre heatmap ``[1, H, W]`` at
    the mask's mean pixel (:func:`get_instances`, as detectron2's Panoptic-DeepLab)."""
    pan = panoptic.reshape(-1)  # [H*W]
    labels, inverse = torch.unique(pan, return_inverse=True)  # [U], [H*W]
    classes = torch.div(labels, label_divisor, rounding_mode="floor").clamp(0, prob.shape[0] - 1)
    pixel_prob = prob.reshape(prob.shape[0], -1).gather(0, classes[inverse][None])[0]  # [H*W]
    count = torch.bincount(inverse, minlength=len(labels)).clamp(min=1)
    mean = torch.bincount(inverse, weights=pixel_prob.double(), minlength=len(labels)) / count
    scores = {lab: s for lab, s in zip(labels.tolist(), mean.tolist(), strict=True) if lab >= 0}
    things = get_instances(
        panoptic[None], prob, center, thing_ids=thing_ids, label_divisor=label_divisor
    )
    scores.update(zip(things["labels"].tolist(), things["scores"].tolist(), strict=True))
    return scores


class Predictor:
    """Panoptic prediction of one image with a ready model.

    Args:
        model: maps ``[N, 3, H, W]`` 0-255 RGB to raw ``{"semantic", "center", "offset"}``.
        metadata: class names and thing ids (see :func:`as_metadata`).
        postprocessing: :func:`get_panoptic_segmentation` settings (default: its defaults).
        tta: test-time augmentation (default: one plain pass).
        device: where the model runs.
        mixed_precision: run the network in bfloat16 (CPU) or float16 (GPU), as ``TEST.AMP``
            (see :mod:`axial_deeplab.layers.precision`); outputs and post-processing stay float32.
        pad_to: ``(h, w)``: pad every network input at the bottom and right to at least this
            size with ``pad_value`` (the pixel mean) and crop the outputs back, as evaluation
            does with ``TEST.PAD_TO_CROP`` (``evaluate.PaddedModel``); None: no padding.
        test_size: ``(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``: :meth:`predict` resizes the
            image as evaluation does (short side to the first, long side at most the second)
            and returns the prediction at the image's own size
            (:mod:`.prediction_size`); None or a short side of 0: the image's own size.

    The predictor runs an eval-mode copy of ``model`` on ``device`` with its batch norms folded
    into the convolutions, channels-last on the CPU
    (:func:`axial_deeplab.modeling.fusion.inference_model`: the same function, faster); later
    changes to ``model`` do not reach it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        metadata: InferenceMetadata | DatasetMetadata | Mapping,
        postprocessing: PostProcessing | None = None,
        tta: TestTimeAugmentation | None = None,
        device: torch.device | str = "cpu",
        mixed_precision: bool = False,
        pad_to: tuple[int, int] | None = None,
        pad_value: Sequence[float] = (123.675, 116.28, 103.53),
        test_size: tuple[int, int] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.test_size = None if test_size is None else (int(test_size[0]), int(test_size[1]))
        cpu = self.device.type == "cpu"
        if mixed_precision:
            warn_if_slow(self.device)
        self.model = inference_model(model, channels_last=cpu, mixed_precision=mixed_precision).to(
            self.device
        )
        if pad_to is not None:
            self.model = PaddedModel(self.model, pad_to, pad_value)
        keep_freed_memory_for_models(self.device)  # CPU: no page faults per large activation
        self.metadata = as_metadata(metadata)
        self.postprocessing = postprocessing or PostProcessing()
        self.tta = tta or TestTimeAugmentation()
        self.align_corners = bool(getattr(model, "align_corners", True))

    @torch.no_grad()
    def raw(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """TTA-averaged ``"semantic"`` probabilities ``[K, H, W]``, ``"center"`` ``[1, H, W]`` and
        ``"offset"`` ``[2, H, W]`` of an ``[H, W, 3]`` uint8 RGB image."""
        check_rgb_image(image)
        if not image.flags.writeable:  # np.asarray(PIL image): torch warns on read-only memory
            image = image.copy()
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1)[None].float()  # [H, W, 3] -> [1, 3, H, W]
        out = run_with_tta(self.model, x, self.tta, align_corners=self.align_corners)
        num_classes = out["semantic"].shape[1]
        void = int(self.postprocessing.void_class >= 0)  # a void output channel: not a class
        if num_classes != len(self.metadata.class_names) + void:
            raise ValueError(
                f"model predicts {num_classes} classes"
                + (f" (channel {self.postprocessing.void_class} void)" if void else "")
                + f" but metadata names {len(self.metadata.class_names)}"
            )
        return {key: value[0] for key, value in out.items()}

    def predict(self, image: np.ndarray) -> dict:
        """Predict an ``[H, W, 3]`` uint8 RGB image.

        Returns numpy arrays ``"panoptic"`` ``[H, W]`` int64 (``class * label_divisor +
        instance``, instances from 1, stuff 0, ``VOID_LABEL`` (-1) for void), ``"semantic"``
        ``[H, W]`` int64, ``"center"`` ``[H, W]`` float32, ``"offset"`` ``[2, H, W]`` float32
        ``(dy, dx)``, ``"centers"`` ``[M, 2]`` int64 ``(y, x)``, ``"segment_ids"`` ``[H, W]``
        int64 (0 void, segments 1, 2, ... as in a panoptic PNG) and ``"segments_info"``: one
        dict per segment with ``id``, ``category_id`` (train id), ``category_name``, ``isthing``,
        ``iscrowd`` (0), ``area``, ``score`` and ``label`` (its panoptic label).
        """
        return predict_at_evaluation_size(
            self._predict_as_given, image, self.test_size, self.metadata,
            align_corners=self.align_corners,
        )  # fmt: skip

    def _predict_as_given(self, image: np.ndarray) -> dict:
        """:meth:`predict` at the size ``image`` has."""
        raw = self.raw(image)
        meta, post = self.metadata, self.postprocessing
        panoptic, centers = panoptic_prediction(
            raw, post, thing_ids=meta.thing_ids, label_divisor=meta.label_divisor
        )
        return prediction_dict(panoptic, centers, raw, meta, void_class=post.void_class)


def prediction_dict(
    panoptic: torch.Tensor,
    centers: torch.Tensor,
    raw: dict[str, torch.Tensor],
    meta: InferenceMetadata,
    *,
    void_class: int = -1,
) -> dict:
    """``Predictor.predict``'s result from the panoptic map ``[H, W]``, the kept centres
    ``[M, 2]`` and the raw outputs (``semantic`` probabilities ``[K, H, W]``: the scores are
    their means, so logits would give wrong scores; ``center`` ``[1, H, W]``, ``offset``
    ``[2, H, W]``); the exported backends share it. ``void_class``: the model's void output
    channel (-1: none); ``"semantic"`` is then void (-1) where it wins, and class ids are the
    data set's (:func:`semantic_prediction`)."""
    scores = segment_scores(
        panoptic,
        drop_void_channel(raw["semantic"], void_class=void_class),
        raw["center"],
        thing_ids=meta.thing_ids,
        label_divisor=meta.label_divisor,
    )
    labels = panoptic.cpu().numpy()
    ids, segments = labels_to_segments(
        labels, label_divisor=meta.label_divisor, thing_ids=meta.thing_ids
    )
    kept = [int(v) for v in np.unique(labels) if v >= 0]  # the order of labels_to_segments
    for segment, label in zip(segments, kept, strict=True):
        segment["category_name"] = meta.class_names[segment["category_id"]]
        segment["score"] = round(scores[label], 6)
        segment["label"] = label
    return {
        "panoptic": labels,
        "semantic": semantic_prediction(raw["semantic"], void_class=void_class).cpu().numpy(),
        "center": raw["center"][0].cpu().numpy(),
        "offset": raw["offset"].cpu().numpy(),
        "centers": centers.cpu().numpy(),
        "segment_ids": ids,
        "segments_info": segments,
    }


# The --backend that runs each kind of weights file, by suffix (tools/infer.py, the demo).
BACKEND_OF_SUFFIX = {
    ".pth": "torch",
    ".pt": "torch",
    ".pt2": "torch-export",
    ".onnx": "onnxruntime",
}


def check_backend_suffix(path: str, backend: str) -> None:
    """ValueError naming the right ``--backend`` when ``path``'s suffix says it is a file of
    another one (an exported ``.pt2`` given to the eager path, a ``.pth`` to ONNX Runtime...)."""
    suffix = os.path.splitext(path)[1].lower()
    expected = BACKEND_OF_SUFFIX.get(suffix)
    if expected is not None and expected != backend:
        raise ValueError(
            f"{path}: a {suffix} file is run with --backend {expected}, not --backend {backend}"
        )


def resolve_device(requested: str) -> torch.device:
    """``torch.device(requested)``; ``"cuda..."`` without a GPU prints one line and gives CPU."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        print(f"device {requested!r} asked for (--device, MODEL.DEVICE or the checkpoint's "
              "config) but no GPU is available: running on the CPU.")  # fmt: skip
        return torch.device("cpu")
    return torch.device(requested)


def build_tta(cfg) -> TestTimeAugmentation:
    """``TEST.AUG``: ``SCALES`` and ``FLIP`` when ``ENABLED``, else one plain pass."""
    aug = cfg.TEST.AUG
    if not aug.ENABLED:
        return TestTimeAugmentation()
    return TestTimeAugmentation(scales=tuple(float(s) for s in aug.SCALES), flip=bool(aug.FLIP))


def build_predictor(
    cfg, metadata: InferenceMetadata | DatasetMetadata | Mapping, device: torch.device
) -> Predictor:
    """Model from ``cfg`` (``MODEL.WEIGHTS`` loaded weights-only when set: all of the model's
    weights, see ``checkpoint.io.load_weights``), post-processing from
    ``MODEL.PANOPTIC_DEEPLAB``, TTA from ``TEST.AUG``, mixed precision from ``TEST.AMP``, input
    padding from ``TEST.PAD_TO_CROP`` (as evaluation pads) and the network's input size from
    ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST`` (as evaluation resizes)."""
    from ..modeling.build import build_model
    from .build import load_model_weights

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS, whole=True, cfg=cfg)
    return Predictor(
        model,
        metadata=metadata,
        postprocessing=PostProcessing.from_config(cfg),
        tta=build_tta(cfg),
        device=device,
        mixed_precision=cfg.TEST.AMP,
        pad_to=tuple(cfg.INPUT.CROP.SIZE) if cfg.TEST.PAD_TO_CROP else None,
        pad_value=tuple(cfg.MODEL.PIXEL_MEAN),
        test_size=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
    )
