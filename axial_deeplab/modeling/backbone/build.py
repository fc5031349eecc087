"""``build_backbone(cfg)``: ``MODEL.BACKBONE.NAME`` -> builder (a name -> function table)."""

from __future__ import annotations

from collections.abc import Callable

from .axial_resnet import build_axial_resnet_backbone
from .base import Backbone
from .resnet import build_resnet_backbone

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "axial_resnet": build_axial_resnet_backbone,
    "resnet": build_resnet_backbone,
}


def build_backbone(cfg) -> Backbone:
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONES:
        raise ValueError(f"MODEL.BACKBONE.NAME={name!r} unknown; known: {sorted(BACKBONES)}")
    return BACKBONES[name](cfg)
