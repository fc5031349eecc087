"""``build_backbone(cfg)``: ``MODEL.BACKBONE.NAME`` -> builder, through a name -> function table.

Register another backbone by adding ``"name": builder`` to ``BACKBONES`` (a builder takes the config
and returns a ``Backbone``); nothing else reads ``MODEL.BACKBONE.NAME``.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Backbone
from .resnet import build_resnet_backbone
from .variants import build_axial_resnet_backbone

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "axial_resnet": build_axial_resnet_backbone,
    "resnet": build_resnet_backbone,
}


def build_backbone(cfg) -> Backbone:
    """The backbone named by ``cfg.MODEL.BACKBONE.NAME``."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONES:
        raise ValueError(f"MODEL.BACKBONE.NAME={name!r} unknown; known: {sorted(BACKBONES)}")
    return BACKBONES[name](cfg)
