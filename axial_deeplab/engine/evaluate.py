"""Evaluate a Panoptic-DeepLab model on a data set: post-processing, PQ, mIoU and mask AP, across
ranks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..data.catalog import DatasetMetadata
from ..evaluation.distributed import gather
from ..evaluation.instance_ap import InstanceAPEvaluator
from ..evaluation.panoptic import PanopticEvaluator
from ..evaluation.semantic import SemanticEvaluator
from ..layers.precision import autocast_name, warn_if_slow
from ..modeling.fusion import inference_model
from ..modeling.postprocessing import (
    class_probabilities,
    drop_void_channel,
    get_instances,
    get_panoptic_segmentation,
    semantic_prediction,
)
from ..utils.host_memory import keep_freed_memory_for_models
from ..utils.progress import progress
from .distributed import is_main_process

VOID_LABEL = -1


class PredictionSink(Protocol):
    def add(self, record: dict, labels: np.ndarray, outputs: dict[str, torch.Tensor]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PostProcessing:
    """Settings of :func:`get_panoptic_segmentation` (``MODEL.PANOPTIC_DEEPLAB.*``) and the
    model's void output channel (``MODEL.SEM_SEG_HEAD.VOID_CLASS``, -1: none; see
    :func:`semantic_prediction`)."""

    stuff_area: int = 2048
    threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    void_class: int = -1

    def __post_init__(self) -> None:
        if self.nms_kernel < 1 or self.nms_kernel % 2 != 1:  # a window centred on each pixel
            raise ValueError(
                "nms_kernel (MODEL.PANOPTIC_DEEPLAB.NMS_KERNEL) must be odd and positive, "
                f"got {self.nms_kernel}"
            )

    @classmethod
    def from_config(cls, cfg) -> PostProcessing:
        pd = cfg.MODEL.PANOPTIC_DEEPLAB
        return cls(
            pd.STUFF_AREA,
            pd.CENTER_THRESHOLD,
            pd.NMS_KERNEL,
            pd.TOP_K_INSTANCE,
            void_class=cfg.MODEL.SEM_SEG_HEAD.VOID_CLASS,
        )


def panoptic_prediction(
    outputs: dict[str, torch.Tensor],
    settings: PostProcessing,
    *,
    thing_ids: Iterable[int],
    label_divisor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's raw outputs (``[K, H, W]``, ``[1, H, W]``, ``[2, H, W]``) to ``[H, W]`` labels
    ``class * label_divisor + instance`` (``VOID_LABEL`` where void) and centers ``[M, 2] (y, x)``.
    Classes are the data set's: with ``settings.void_class``, pixels the model assigns to its
    void channel are void and ``thing_ids`` count without that channel."""
    semantic = semantic_prediction(outputs["semantic"], void_class=settings.void_class)[None]
    panoptic, centers = get_panoptic_segmentation(
        semantic,
        outputs["center"],
        outputs["offset"],
        thing_ids=thing_ids,
        label_divisor=label_divisor,
        stuff_area=settings.stuff_area,
        void_label=VOID_LABEL,
        threshold=settings.threshold,
        nms_kernel=settings.nms_kernel,
        top_k=settings.top_k,
    )
    return panoptic[0], centers


def labels_to_segments(
    labels: np.ndarray, *, label_divisor: int, thing_ids: Iterable[int]
) -> tuple[np.ndarray, list[dict]]:
    """``[H, W]`` labels (``class * label_divisor + instance``, negative = void) to a segment-id
    map (``0`` = void, segments numbered from 1) and its ``segments_info`` (train-id categories)."""
    things = set(int(t) for t in thing_ids)
    values, inverse, areas = np.unique(labels, return_inverse=True, return_counts=True)
    keep = values >= 0
    new_ids = np.zeros(len(values), np.int64)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    segments = [
        {
            "id": int(new_ids[i]),
            "category_id": int(values[i]) // label_divisor,
            "isthing": int(int(values[i]) // label_divisor in things),
            "iscrowd": 0,
            "area": int(areas[i]),
        }
        for i in np.flatnonzero(keep)
    ]
    return new_ids[inverse.reshape(labels.shape)], segments


def ground_truth_labels(
    ids: np.ndarray, segments_info: Sequence[dict], label_divisor: int
) -> np.ndarray:
    """The ground truth ``ids`` ``[H, W]`` (segment ids, 0 void) with their ``segments_info``
    (train-id ``category_id``) in the prediction's encoding: ``[H, W]`` int64 ``class *
    label_divisor + instance`` (instances numbered from 1 per class; stuff and crowd regions 0),
    ``VOID_LABEL`` where no segment is listed."""
    out = np.full(ids.shape, VOID_LABEL, np.int64)
    count: dict[int, int] = {}
    for seg in segments_info:
        cls = int(seg["category_id"])
        inst = 0
        if seg.get("isthing") and not seg.get("iscrowd"):
            inst = count[cls] = count.get(cls, 0) + 1
        out[ids == int(seg["id"])] = cls * label_divisor + inst
    return out


def semantic_labels(
    panoptic_ids: np.ndarray, segments_info: list[dict], ignore_label: int
) -> np.ndarray:
    """``[H, W]`` train-id semantic map of a ground-truth segment-id map (void -> ignore)."""
    lut_ids = np.array([0] + [s["id"] for s in segments_info], np.int64)
    lut_cls = np.array([ignore_label] + [s["category_id"] for s in segments_info], np.int64)
    order = np.argsort(lut_ids)
    pos = np.searchsorted(lut_ids[order], panoptic_ids)
    pos = np.clip(pos, 0, len(order) - 1)
    found = lut_ids[order][pos] == panoptic_ids
    return np.where(found, lut_cls[order][pos], ignore_label)


def pad_stack(
    tensors: Sequence[torch.Tensor], size: tuple[int, int], fill: float | torch.Tensor
) -> torch.Tensor:
    """``[..., h_i, w_i]`` tensors padded bottom/right to ``size = (H, W)`` with ``fill`` (a
    scalar, or ``[C]`` per channel of ``[C, h_i, w_i]`` tensors) and stacked: ``[N, ..., H, W]``."""
    out = tensors[0].new_empty((len(tensors), *tensors[0].shape[:-2], *size))
    fill = torch.as_tensor(fill, dtype=out.dtype, device=out.device)
    out[:] = fill.view(-1, 1, 1) if fill.dim() else fill  # per-channel fill for images
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out


def pad_images(
    images: torch.Tensor, size: tuple[int, int] | None, fill: Sequence[float]
) -> torch.Tensor:
    """``[N, 3, H, W]`` images padded at the bottom and right to at least ``size`` ``(h, w)`` with
    the per-channel ``fill`` (the pixel mean, as training crops are padded); ``None``: unchanged."""
    if size is None:
        return images
    h, w = images.shape[-2:]
    out_size = (max(h, size[0]), max(w, size[1]))
    if out_size == (h, w):
        return images
    return pad_stack(images, out_size, torch.as_tensor(fill))


class PaddedModel(nn.Module):
    """``model`` on its ``[N, 3, H, W]`` inputs padded at the bottom and right to at least
    ``size`` ``(h, w)`` with the per-channel ``fill`` (``pad_images``), its outputs cropped back
    to ``H x W``: ``TEST.PAD_TO_CROP``, the same in evaluation and in ``Predictor``."""

    def __init__(self, model: nn.Module, size: tuple[int, int], fill: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.size = tuple(size)
        self.fill = tuple(float(v) for v in fill)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        outputs = self.model(pad_images(images, self.size, self.fill))
        return {k: v[..., :height, :width] for k, v in outputs.items()}


def pq_percent(pq_result: dict) -> dict[str, float]:
    """``PQ``, ``SQ``, ``RQ`` and their ``_th`` / ``_st`` forms, in percent, of a
    :meth:`PanopticEvaluator.evaluate` result."""
    return {
        f"{metric.upper()}{suffix}": 100.0 * pq_result[group][metric]
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st"))
        for metric in ("pq", "sq", "rq")
    }


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` or ``[N, H, W]`` integer/bool array resized to ``size`` ``(h, w)``."""
    if array.shape[-2:] == tuple(size):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array)).double()
    t = torch.nn.functional.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=size, mode="nearest")
    return t.reshape(*array.shape[:-2], *size).numpy().astype(array.dtype)  # [..., h, w]


class PanopticMetrics:
    """PQ (per class too), mIoU and mask AP of thing instances, fed one image at a time.

    ``void_class``: the model's void output channel (-1: none). Its pixels are void in the
    panoptic map and, for mIoU, a miss of their ground-truth class (:class:`SemanticEvaluator`
    ``void_prediction``); instance scores use the probabilities of the data-set classes."""

    def __init__(self, metadata: DatasetMetadata, *, void_class: int = -1) -> None:
        self.metadata = metadata
        self.void_class = void_class
        categories = metadata.train_id_categories
        self.pq = PanopticEvaluator(categories, source=f"metadata of {metadata.name}")
        self.miou = SemanticEvaluator(
            metadata.num_classes,
            ignore_label=metadata.ignore_label,
            class_names=metadata.class_names,
            void_prediction=VOID_LABEL,
        )
        self.ap = InstanceAPEvaluator(categories) if metadata.thing_train_ids else None

    def process(self, record: dict, labels: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        """``record``: the sample (``panoptic``, ``segments_info``, ``file_name``, ``image_id``;
        ``panoptic_full``: the ground truth at the file's size when the sample was resized);
        ``labels`` ``[H, W]`` its predicted panoptic labels; ``outputs`` its raw outputs.

        A sample evaluated at another size than its files' is scored at the files' size, its
        predictions resized back (nearest), as the saved predictions are and as the official
        tools score them; the ground truth is never resized (that could drop or merge segments).
        """
        meta = self.metadata
        full = record.get("panoptic_full")
        gt_ids = (record["panoptic"] if full is None else full).numpy()
        size, gt_segments = gt_ids.shape, record["segments_info"]
        pred_ids, pred_segments = labels_to_segments(
            resize_nearest(labels.cpu().numpy(), size),
            label_divisor=meta.label_divisor,
            thing_ids=meta.thing_train_ids,
        )
        name = str(record["file_name"])
        self.pq.process(gt_ids, gt_segments, pred_ids, pred_segments, name=name)
        semantic = outputs["semantic"]  # [K, H, W] logits
        gt_sem = semantic_labels(gt_ids, gt_segments, meta.ignore_label)
        pred_sem = semantic_prediction(semantic, void_class=self.void_class)  # [H, W]
        self.miou.process(gt_sem, resize_nearest(pred_sem.cpu().numpy(), size))
        if self.ap is not None:
            prob = drop_void_channel(class_probabilities(outputs), void_class=self.void_class)
            things = get_instances(
                labels, prob, outputs["center"].float(),
                thing_ids=meta.thing_train_ids, label_divisor=meta.label_divisor,
            )  # fmt: skip
            self.ap.process(
                record["image_id"], gt_ids, gt_segments,
                resize_nearest(things["masks"].cpu().numpy(), size),
                things["scores"].cpu().numpy(), things["classes"].cpu().numpy(),
            )  # fmt: skip

    def results(self) -> tuple[dict[str, float], dict, dict]:
        """Gathered over ranks: the metrics in percent (``PQ``, ``SQ``, ``RQ`` and their ``_th`` /
        ``_st`` forms, ``mIoU``, ``AP``, ``AP50`` with things), the full PQ result and the full
        semantic result (both per class).
        """
        pq_result, sem_result = gather(self.pq).evaluate(), gather(self.miou).evaluate()
        out = pq_percent(pq_result)
        out["mIoU"] = 100.0 * sem_result["mIoU"]
        if self.ap is not None:
            ap_result = gather(self.ap).evaluate()
            out.update(AP=100.0 * ap_result["AP"], AP50=100.0 * ap_result["AP50"])
        return out, pq_result, sem_result


def evaluate_panoptic(
    model: nn.Module,
    loader: Iterable[dict],
    metadata: DatasetMetadata,
    settings: PostProcessing,
    *,
    device: torch.device,
    pad_to: tuple[int, int] | None = None,
    pad_value: Sequence[float] = (123.675, 116.28, 103.53),
    sinks: Sequence[PredictionSink] = (),
    print_table: bool = False,
    mixed_precision: bool = False,
) -> dict[str, float]:
    """PQ/SQ/RQ (All, Things, Stuff), mIoU and mask AP of ``model`` on ``loader`` (this rank's
    shard), gathered over ranks. Values in percent, as the official tools print them.

    ``pad_to``: pad the inputs to this ``(h, w)`` with ``pad_value`` (as training crops) and crop
    the outputs back. ``sinks``: each receives every image's prediction (its raw outputs plus
    ``centers``, the kept centres ``[M, 2]``), e.g.
    :class:`axial_deeplab.engine.predictions.PredictionSaver`; closed at the end.
    ``print_table``: print the per-class PQ and IoU table (main process). ``mixed_precision``:
    the network in bfloat16 (CPU) or float16 (GPU), as ``TEST.AMP`` (``layers.precision``)."""
    metrics = PanopticMetrics(metadata, void_class=settings.void_class)
    # An eval-mode copy with batch norms folded into the convolutions, channels-last on the CPU
    # (the same function, ~20% faster there); ``model`` itself (DDP-wrapped or not) is left as
    # it is.
    device = torch.device(device)
    if mixed_precision:
        warn_if_slow(device)
    net = inference_model(
        getattr(model, "module", model),
        channels_last=device.type == "cpu",
        mixed_precision=mixed_precision,
    )
    if pad_to is not None:
        net = PaddedModel(net, pad_to, pad_value)
    # On the CPU, glibc keeps freed activations for reuse (~25% of a full-resolution pass was
    # page faults); see utils.host_memory.
    keep_freed_memory_for_models(device)
    with torch.no_grad():
        desc = f"eval ({autocast_name(device.type)})" if mixed_precision else "eval"
        for batch in progress(loader, desc=desc, unit="img", disable=not is_main_process()):
            images = batch["image"].to(device).float()  # [N, 3, H, W]
            outputs = net(images)
            for i in range(images.shape[0]):
                one = {k: v[i] for k, v in outputs.items()}  # [C, H, W] each
                labels, centers = panoptic_prediction(
                    one, settings, thing_ids=metadata.thing_train_ids,
                    label_divisor=metadata.label_divisor,
                )  # fmt: skip
                record = {k: v[i] for k, v in batch.items()}
                if sinks:  # (one dict for all, so that probabilities are computed once)
                    labels_np, one["centers"] = labels.cpu().numpy(), centers
                    for sink in sinks:
                        sink.add(record, labels_np, one)
                metrics.process(record, labels, one)
    for sink in sinks:
        sink.close()
    out, pq_result, sem_result = metrics.results()
    if print_table and is_main_process():
        from ..evaluation.panoptic_files import format_results

        print(format_results(pq_result, semantic=sem_result))
    return out
