"""``build_model(cfg)``: the only place that reads the model config and wires the modules."""

from __future__ import annotations

from collections.abc import Mapping

from axial_deeplab.layers.batch_norm import set_batch_norm
from axial_deeplab.modeling.backbone.base import ShapeSpec
from axial_deeplab.modeling.decoder import PanopticDeepLabDecoder
from axial_deeplab.modeling.heads import PredictionHead
from axial_deeplab.modeling.panoptic_deeplab import PanopticDeepLab


def _decoder(head_cfg, input_shape: Mapping[str, ShapeSpec], align_corners: bool):
    """A decoder from ``MODEL.SEM_SEG_HEAD`` or ``MODEL.INS_EMBED_HEAD`` (detectron2 order:
    ``IN_FEATURES`` fine to coarse, ``PROJECT_CHANNELS`` for all but the coarsest)."""
    names = list(head_cfg.IN_FEATURES)
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(
            f"IN_FEATURES {missing} are not produced by the backbone (it gives {sorted(input_shape)})"
        )
    if len(head_cfg.PROJECT_CHANNELS) != len(names) - 1:
        raise ValueError(
            f"PROJECT_CHANNELS needs {len(names) - 1} values for {names[:-1]}, "
            f"got {list(head_cfg.PROJECT_CHANNELS)}"
        )
    order = sorted(range(len(names)), key=lambda i: -input_shape[names[i]].stride)
    projections = dict(zip(names[:-1], head_cfg.PROJECT_CHANNELS, strict=True))
    in_features = [names[i] for i in order]  # coarsest first
    return PanopticDeepLabDecoder(
        input_shape,
        in_features=in_features,
        project_channels=[projections[n] for n in in_features[1:]],
        context=head_cfg.CONTEXT,
        context_channels=head_cfg.ASPP_CHANNELS,
        aspp_dilations=tuple(head_cfg.ASPP_DILATIONS),
        aspp_dropout=head_cfg.ASPP_DROPOUT,
        aspp_separable=head_cfg.ASPP_DEPTHWISE_SEPARABLE_CONV,
        aspp_pool_size=tuple(head_cfg.ASPP_POOL_SIZE),
        aspp_pool_norm=head_cfg.ASPP_POOL_NORM,
        decoder_channels=head_cfg.CONVS_DIM,
        separable=head_cfg.USE_DEPTHWISE_SEPARABLE_CONV,
        norm=head_cfg.NORM,
        align_corners=align_corners,
    )


def panoptic_deeplab_modules(cfg, backbone) -> dict:
    """The keyword arguments of ``PanopticDeepLab`` for ``backbone`` (anything with
    ``output_shape()``, e.g. a detectron2 backbone): decoders and heads from ``MODEL.SEM_SEG_HEAD``
    and ``MODEL.INS_EMBED_HEAD``, pixel statistics, ``ALIGN_CORNERS``; every batch norm (the
    backbone's too) gets ``MODEL.BATCH_NORM``'s epsilon and momentum."""
    align = cfg.MODEL.PANOPTIC_DEEPLAB.ALIGN_CORNERS
    shapes = backbone.output_shape()
    sem_cfg, ins_cfg = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.INS_EMBED_HEAD
    semantic_decoder = _decoder(sem_cfg, shapes, align)
    instance_decoder = _decoder(ins_cfg, shapes, align)
    ins_channels = instance_decoder.out_channels
    modules = dict(
        backbone=backbone,
        semantic_decoder=semantic_decoder,
        instance_decoder=instance_decoder,
        semantic_head=PredictionHead(
            semantic_decoder.out_channels,
            sem_cfg.HEAD_CHANNELS,
            sem_cfg.NUM_CLASSES,
            norm=sem_cfg.NORM,
            separable=sem_cfg.USE_DEPTHWISE_SEPARABLE_CONV,
        ),
        center_head=PredictionHead(
            ins_channels,
            ins_cfg.HEAD_CHANNELS,
            1,
            norm=ins_cfg.NORM,
            separable=ins_cfg.CENTER_USE_DEPTHWISE_SEPARABLE_CONV,
        ),
        offset_head=PredictionHead(
            ins_channels,
            ins_cfg.HEAD_CHANNELS,
            2,
            norm=ins_cfg.NORM,
            separable=ins_cfg.USE_DEPTHWISE_SEPARABLE_CONV,
        ),
    )
    bn = cfg.MODEL.BATCH_NORM
    for module in modules.values():
        set_batch_norm(module, eps=bn.EPS, momentum=bn.MOMENTUM)
    return dict(
        modules,
        pixel_mean=tuple(cfg.MODEL.PIXEL_MEAN),
        pixel_std=tuple(cfg.MODEL.PIXEL_STD),
        align_corners=align,
    )


def build_model(cfg) -> PanopticDeepLab:
    """Panoptic-DeepLab / Axial-DeepLab from a config (backbone by ``MODEL.BACKBONE.NAME``)."""
    from axial_deeplab.modeling.backbone.build import build_backbone

    if cfg.MODEL.META_ARCHITECTURE != "PanopticDeepLab":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE: only 'PanopticDeepLab' exists, got "
            f"{cfg.MODEL.META_ARCHITECTURE!r}"
        )
    return PanopticDeepLab(**panoptic_deeplab_modules(cfg, build_backbone(cfg)))
