"""Our backbones in detectron2's ``BACKBONE_REGISTRY``, under the names of our own table.

Every entry of :data:`axial_deeplab.modeling.backbone.build.BACKBONES` (``"axial_resnet"``,
``"resnet"``) is registered with detectron2 under the same name, so ``MODEL.BACKBONE.NAME`` means
the same in both engines. The builder is ours (any ``MODEL.AXIAL_RESNET.VARIANT``, ``SPAN``,
``SPAN_MODE``, ``OUTPUT_STRIDE``, ``OUT_FEATURES`` of ``res2..res5``); its module is then given
detectron2's ``Backbone`` interface *in place* (:func:`as_d2_backbone`): the very same object, so
its parameters, buffers, state-dict keys and outputs are the native ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from axial_deeplab.modeling.backbone.base import Backbone as NativeBackbone
from axial_deeplab.modeling.backbone.build import BACKBONES


class _Detectron2Interface:
    """What detectron2 reads from a backbone, on top of a native one (mixed in first)."""

    def output_shape(self) -> dict[str, ShapeSpec]:
        """detectron2 ``ShapeSpec`` (channels, stride) of every returned feature."""
        native = super().output_shape()  # type: ignore[misc]
        return {k: ShapeSpec(channels=s.channels, stride=s.stride) for k, s in native.items()}

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self.size_divisibility}  # type: ignore[attr-defined]


@functools.cache
def _d2_class(native_cls: type[NativeBackbone]) -> type:
    """``native_cls`` extended with detectron2's ``Backbone`` (native methods come first)."""
    return type(
        f"{native_cls.__name__}D2",
        (_Detectron2Interface, native_cls, Backbone),
        {"__module__": __name__, "__doc__": native_cls.__doc__},
    )


def as_d2_backbone(backbone: NativeBackbone) -> Backbone:
    """``backbone`` itself, now also a detectron2 ``Backbone`` (its class is extended in place,
    as detectron2 does for gradient clipping); nothing is copied or wrapped."""
    if not isinstance(backbone, NativeBackbone):
        raise TypeError(f"expected an axial_deeplab Backbone, got {type(backbone).__name__}")
    if not isinstance(backbone, Backbone):
        backbone.__class__ = _d2_class(type(backbone))
    return backbone


def _d2_builder(name: str, native_builder: Callable) -> Callable:
    """A detectron2 builder ``(cfg, input_shape) -> Backbone`` named ``name``."""

    def build(cfg, input_shape: ShapeSpec) -> Backbone:
        if input_shape.channels != 3:
            raise ValueError(
                f"MODEL.BACKBONE.NAME={name!r} reads 3-channel images, got "
                f"{input_shape.channels} channels (len(MODEL.PIXEL_MEAN))"
            )
        if cfg.MODEL.BACKBONE.FREEZE_AT:
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT}: our backbones do not "
                "freeze stages (every stage trains, as in the papers and deeplab2); set it to 0"
            )
        return as_d2_backbone(native_builder(cfg))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"detectron2 builder of our {name!r} backbone ({native_builder.__name__})."
    return build


def register_backbones() -> None:
    """Register every native backbone name not yet in ``BACKBONE_REGISTRY`` (idempotent)."""
    for name, builder in BACKBONES.items():
        if name not in BACKBONE_REGISTRY:
            BACKBONE_REGISTRY.register(_d2_builder(name, builder))
