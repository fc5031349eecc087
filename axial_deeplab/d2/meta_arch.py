"""``AxialDeepLab`` in detectron2's ``META_ARCH_REGISTRY``: our Panoptic-DeepLab on detectron2's
list-of-dicts inputs.

It *is* our :class:`~axial_deeplab.modeling.panoptic_deeplab.PanopticDeepLab` (a subclass with the
same modules), so state dicts are interchangeable with the native engine key for key. Only the
calling convention is detectron2's:

- input: a list of dicts with ``image`` ``[3, H, W]`` (0-255, ``INPUT.FORMAT``), and in training
  the targets of our mapper (``sem_seg``, ``sem_seg_weights``, ``center``, ``center_weights``,
  ``offset``, ``offset_weights``); images of different sizes are padded;
- training: ``{"loss_sem_seg", "loss_center", "loss_offset"}``;
- inference: per image ``sem_seg`` ``[K, h, w]`` logits, ``panoptic_seg`` ``(labels [h, w], None)``
  with labels ``class * label_divisor + instance`` and ``-1`` for void (detectron2's
  Panoptic-DeepLab convention), and ``instances`` (things: ``pred_masks``, ``pred_boxes``,
  ``scores``, ``pred_classes``), at the ``height`` x ``width`` of the input dict when given.

Raw outputs ``{"semantic", "center", "offset"}`` stay available as ``model.predict_raw(images)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import BitMasks, Instances

from axial_deeplab.engine.build import build_criterion
from axial_deeplab.engine.evaluate import PostProcessing, pad_stack, panoptic_prediction
from axial_deeplab.layers.precision import autocast_call, warn_if_slow
from axial_deeplab.modeling.build import panoptic_deeplab_modules
from axial_deeplab.modeling.losses import PanopticDeepLabLoss
from axial_deeplab.modeling.panoptic_deeplab import PanopticDeepLab, upsample, upsample_offsets
from axial_deeplab.modeling.postprocessing import get_instances

from .data import native_metadata

TARGET_KEYS = ("sem_seg", "sem_seg_weights", "center", "center_weights", "offset", "offset_weights")


def padded_size(shapes: Sequence[Sequence[int]], divisibility: int) -> tuple[int, int]:
    """Largest ``(h, w)`` of ``shapes``, rounded up to a multiple of ``divisibility`` (if > 0)."""
    h, w = max(s[-2] for s in shapes), max(s[-1] for s in shapes)
    if divisibility > 0:
        h, w = -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility
    return h, w


@META_ARCH_REGISTRY.register()
class AxialDeepLab(PanopticDeepLab):
    """Panoptic-DeepLab / Axial-DeepLab with detectron2's inputs and outputs (module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        criterion: PanopticDeepLabLoss,
        postprocessing: PostProcessing,
        metadata_name: str,
        size_divisibility: int = 0,
        mixed_precision: bool = False,
        **modules,
    ) -> None:
        """``modules``: the keyword arguments of ``PanopticDeepLab`` (backbone, decoders, heads,
        pixel mean/std, align_corners). ``metadata_name``: the detectron2 data set whose metadata
        gives the thing classes and label divisor of the post-processing. ``mixed_precision``:
        inference in bfloat16 (CPU) or float16 (GPU), as ``TEST.AMP`` (``layers.precision``)."""
        super().__init__(**modules)
        self.criterion = criterion
        self.postprocessing = postprocessing
        self.metadata_name = metadata_name
        self.size_divisibility = size_divisibility
        self.mixed_precision = mixed_precision

    @classmethod
    def from_config(cls, cfg) -> dict:
        if cfg.MODEL.SEM_SEG_HEAD.VOID_CLASS >= 0:
            raise ValueError(
                f"detectron2 plugin: models with a void output channel (MODEL.SEM_SEG_HEAD."
                f"VOID_CLASS {cfg.MODEL.SEM_SEG_HEAD.VOID_CLASS}, e.g. converted deeplab2 COCO "
                "models) are not supported; evaluate them with tools/train_net.py --eval-only"
            )
        backbone = build_backbone(cfg)
        names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        return {
            **panoptic_deeplab_modules(cfg, backbone),
            "criterion": build_criterion(cfg),
            "postprocessing": PostProcessing.from_config(cfg),
            "metadata_name": names[0] if names else "",
            "size_divisibility": backbone.size_divisibility,
            "mixed_precision": cfg.TEST.AMP,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def predict_raw(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The native forward: ``[N, 3, H, W]`` 0-255 -> ``{"semantic", "center", "offset"}``."""
        return super().forward(images)

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        """Losses in training, per-image predictions in inference (module docstring)."""
        images = [x["image"].to(self.device).float() for x in batched_inputs]  # [3, h_i, w_i]
        size = padded_size([im.shape for im in images], self.size_divisibility)
        # padding with the pixel mean: zero after normalisation, as in our training crops
        batch = pad_stack(images, size, self.pixel_mean.view(-1))  # [N, 3, H, W]
        if self.mixed_precision and not self.training:
            warn_if_slow(self.device)  # shown once (Python's default warning filter)
            outputs = autocast_call(self.predict_raw, batch)
        else:
            outputs = self.predict_raw(batch)
        if self.training:
            return self.criterion(outputs, self._targets(batched_inputs, size))
        return [
            self._predict({k: v[i] for k, v in outputs.items()}, x, tuple(im.shape[-2:]))
            for i, (x, im) in enumerate(zip(batched_inputs, images, strict=True))
        ]

    def _targets(self, batched_inputs: list[dict], size: tuple[int, int]) -> dict:
        missing = [k for k in TARGET_KEYS if k not in batched_inputs[0]]
        if missing:
            raise ValueError(
                f"training inputs lack targets {missing}: use AxialDeepLabDatasetMapper "
                "(axial_deeplab.d2) with a target generator"
            )
        fills = {"sem_seg": self.criterion.ignore_label}
        return {
            k: pad_stack([x[k].to(self.device) for x in batched_inputs], size, fills.get(k, 0))
            for k in TARGET_KEYS
        }

    def _predict(self, raw: dict[str, torch.Tensor], x: dict, image_size: tuple[int, int]) -> dict:
        """One image: crop the padding, resize to the dict's ``height`` x ``width`` (offsets
        rescaled), then post-process as the native evaluation does."""
        h, w = image_size
        raw = {k: v[:, :h, :w] for k, v in raw.items()}  # [C, h, w]
        out_size = (int(x.get("height", h)), int(x.get("width", w)))
        if out_size != (h, w):
            align = self.align_corners
            raw = {
                "semantic": upsample(raw["semantic"][None], out_size, align_corners=align)[0],
                "center": upsample(raw["center"][None], out_size, align_corners=align)[0],
                "offset": upsample_offsets(raw["offset"][None], out_size, align_corners=align)[0],
            }
        if not self.metadata_name:
            raise ValueError("inference needs DATASETS.TEST or DATASETS.TRAIN to name a data set")
        meta = native_metadata(self.metadata_name)
        things, divisor = meta.thing_train_ids, meta.label_divisor
        labels, _ = panoptic_prediction(
            raw, self.postprocessing, thing_ids=things, label_divisor=divisor
        )  # [h, w]
        found = get_instances(
            labels,
            raw["semantic"].softmax(0),
            raw["center"],
            thing_ids=things,
            label_divisor=divisor,
        )
        instances = Instances(out_size)
        instances.pred_masks = found["masks"]  # [M, h, w] bool
        instances.pred_boxes = BitMasks(found["masks"]).get_bounding_boxes()
        instances.scores = found["scores"]
        instances.pred_classes = found["classes"]
        return {"sem_seg": raw["semantic"], "panoptic_seg": (labels, None), "instances": instances}
