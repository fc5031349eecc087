"""Axial-ResNet variants as data (name -> keyword arguments) and the one builder that reads them.

Panoptic backbones ``axial_resnet_s/m/l/xl`` (Axial-DeepLab, Wang et al. 2020; deeplab2
``AxialDeepLab{S,L}``): ResNet-50 layout, every stage axial, the Inception stem, span 65 in the
``hybrid`` mode (local windows of 65 on axes longer than 129, global attention on shorter ones,
relative tables of 257 entries: the formulation whose counts match the paper's, see
``tools/model_stats.py``), output stride 16. Their stem widths (64, 64, 128) are scaled by the width multiplier, as in the
authors' ImageNet stems. deeplab2 keeps them at 1x, but only the scaled stem matches the paper's
multiply-adds at 1025 x 2049: Axial-ResNet-S alone costs 173 G scaled, 217 G unscaled, against
220.8 G for the paper's whole Axial-DeepLab-S. ``axial_resnet_tiny``: [1, 1, 1, 1] at multiplier 0.25,
for tests and the CPU quick start.

ImageNet classifiers (the authors' ``lib/models/axialnet.py``): 7x7 stem of ``int(64 s)`` channels,
global attention whose span is each block's input size at 224x224 (56; 56, 28; 28, 14; 14, 7),
average-pool striding, a 1000-way linear head. Parameters: 5,944,936 / 11,586,216 / 25,179,400 /
43,973,480 (``axial26s``, ``axial50s``, ``axial50m``, ``axial50l``), as counted on their code.

deeplab2's encoders (``model/encoder/axial_resnet_instances.py``; rows with ``layout="grouped"``,
built by ``grouped_resnet`` from ``grouped_resnet.plan_groups`` arguments): ``resnet50_deeplab2``,
``resnet50_beta_deeplab2``, ``wide_resnet41``, ``axial_swidernet_1_1_{1,3,4.5}`` and the
``max_deeplab_{s,l}_backbone`` s. Their parameter counts equal deeplab2's (tested against the
variable lists of the published checkpoints' architectures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .axial_resnet import STAGE_NAMES, AxialResNet, make_stage
from .base import Backbone
from .grouped_resnet import GroupedResNet, build_block, grouped_stem, plan_groups
from .stems import STEMS, Stem, axial_stem, conv7_stem, inception_stem

_PANOPTIC: dict[str, Any] = dict(
    layers=(3, 4, 6, 3),
    stem="inception",
    span=65,
    span_mode="hybrid",  # local 65 on long axes, global on axes up to 129: the paper's counts
    stride_mode="subsample",
    output_stride=16,
    out_features=("res2", "res3", "res5"),
)
_IMAGENET: dict[str, Any] = dict(
    stem="conv7",
    span=0,  # 0: each block's input length at ``image_size`` (the authors' kernel_size)
    image_size=224,
    span_mode="global",
    stride_mode="avgpool",
    output_stride=32,
    num_classes=1000,
    out_features=("linear",),
)
# deeplab2 encoders (model/encoder/axial_resnet_instances.py), built by ``grouped_resnet``.
_RESNET50: dict[str, Any] = dict(
    layout="grouped", backbone_type="resnet", num_blocks=(3, 4, 6, 3), output_stride=32
)
_SWIDERNET: dict[str, Any] = dict(
    layout="grouped",
    backbone_type="wider_resnet",
    num_blocks=(3, 6, 3, 3),
    output_stride=16,
    drop_path_from=4,
)
_AXIAL_SWIDERNET: dict[str, Any] = dict(
    _SWIDERNET,
    axial_from=16,
    attention_expansion=4,
    value_expansion=4.0,
    drop_path_keep_prob=0.8,
    drop_path_schedule="linear",
)
_MAX_DEEPLAB: dict[str, Any] = dict(
    layout="grouped",
    backbone_type="resnet_beta",
    num_blocks=(3, 4, 6, 3),
    output_stride=16,
    axial_from=16,
    drop_path_keep_prob=0.8,
    drop_path_schedule="linear",
)
VARIANTS: dict[str, dict[str, Any]] = {
    "resnet50_deeplab2": _RESNET50,
    "resnet50_beta_deeplab2": dict(_RESNET50, backbone_type="resnet_beta"),
    "wide_resnet41": dict(_SWIDERNET, drop_path_keep_prob=0.8, drop_path_schedule="linear"),
    "axial_swidernet_1_1_1": _AXIAL_SWIDERNET,
    "axial_swidernet_1_1_3": dict(_AXIAL_SWIDERNET, layer_multiplier=3.0),
    "axial_swidernet_1_1_4.5": dict(_AXIAL_SWIDERNET, layer_multiplier=4.5),
    "max_deeplab_s_backbone": _MAX_DEEPLAB,
    "max_deeplab_l_backbone": dict(
        _MAX_DEEPLAB,
        backbone_type="wider_resnet",
        num_blocks=(3, 6, 3, 3),
        attention_expansion=4,
        value_expansion=4.0,
        drop_path_from=4,
        stacked_decoder=1,
    ),
    "axial_resnet_s": dict(_PANOPTIC, width_multiplier=0.5, stem_width_multiplier=0.5),
    "axial_resnet_m": dict(_PANOPTIC, width_multiplier=0.75, stem_width_multiplier=0.75),
    "axial_resnet_l": dict(_PANOPTIC, width_multiplier=1.0, stem_width_multiplier=1.0),
    "axial_resnet_xl": dict(_PANOPTIC, width_multiplier=2.0, stem_width_multiplier=2.0),
    "axial_resnet_tiny": dict(
        _PANOPTIC, layers=(1, 1, 1, 1), width_multiplier=0.25, stem_width_multiplier=0.25
    ),
    "axial26s": dict(
        _IMAGENET, layers=(1, 2, 4, 1), width_multiplier=0.5, stem_width_multiplier=0.5
    ),
    "axial50s": dict(
        _IMAGENET, layers=(3, 4, 6, 3), width_multiplier=0.5, stem_width_multiplier=0.5
    ),
    "axial50m": dict(
        _IMAGENET, layers=(3, 4, 6, 3), width_multiplier=0.75, stem_width_multiplier=0.75
    ),
    "axial50l": dict(
        _IMAGENET, layers=(3, 4, 6, 3), width_multiplier=1.0, stem_width_multiplier=1.0
    ),
}


def stage_strides(output_stride: int) -> tuple[int, ...]:
    """First-block stride of res2..res5; the stem already has stride 4."""
    if output_stride not in (16, 32):
        raise ValueError(f"output_stride: expected 16 or 32, got {output_stride}")
    return (1, 2, 2, 2) if output_stride == 32 else (1, 2, 2, 1)


def input_size_spans(
    layers: Sequence[int], strides: Sequence[int], image_size: int
) -> list[list[int]]:
    """Span of every block = the length of its input at ``image_size`` (stem stride 4): global
    attention over exactly the whole axis, as the authors' ``kernel_size`` at 224."""
    size = image_size // 4
    spans = []
    for n, s in zip(layers, strides, strict=True):
        spans.append([size] + [size // s] * (n - 1))
        size //= s
    return spans


def _make_stem(stem: str, multiplier: float, **axial: Any) -> Stem:
    if stem == "conv7":
        return conv7_stem(int(64 * multiplier))
    if stem == "inception":
        return inception_stem((int(64 * multiplier), int(64 * multiplier), int(128 * multiplier)))
    if stem == "axial":
        return axial_stem(**axial)
    raise ValueError(f"stem: expected one of {STEMS}, got {stem!r}")


def axial_resnet(
    variant: str,
    *,
    layers: Sequence[int],
    width_multiplier: float,
    stem: str,
    stem_width_multiplier: float,
    span: int,
    span_mode: str,
    stride_mode: str,
    output_stride: int,
    out_features: Sequence[str],
    num_classes: int = 0,
    image_size: int = 224,
    num_heads: int = 8,
    gradient_checkpointing: bool = False,
) -> AxialResNet:
    """An ``AxialResNet`` from explicit hyper-parameters (``variant`` only names it in errors).

    ``span > 0``: every block uses it; ``span == 0``: each block's input length at
    ``image_size`` (see ``input_size_spans``). Stage ``i`` has attention width
    ``int(128 * 2**i * width_multiplier)`` and ``2x`` that many output channels.
    """
    if len(layers) != len(STAGE_NAMES):
        raise ValueError(f"{variant}: layers needs {len(STAGE_NAMES)} block counts, got {layers}")
    strides = stage_strides(output_stride)
    if span > 0:
        spans = [[span] * n for n in layers]
    elif span == 0:
        spans = input_size_spans(layers, strides, image_size)
    else:
        raise ValueError(f"{variant}: span must be >= 0, got {span}")
    attn = dict(span_mode=span_mode, stride_mode=stride_mode, num_heads=num_heads)
    stem_module = _make_stem(
        stem,
        stem_width_multiplier,
        num_heads=num_heads,
        stride_mode=stride_mode,
        gradient_checkpointing=gradient_checkpointing,
    )
    stages, channels = [], stem_module.out_channels
    for i, (block_spans, stride) in enumerate(zip(spans, strides, strict=True)):
        width = int(128 * 2**i * width_multiplier)
        stages.append(
            make_stage(
                channels,
                width,
                block_spans,
                stride=stride,
                gradient_checkpointing=gradient_checkpointing,
                **attn,
            )
        )
        channels = 2 * width
    return AxialResNet(
        stem_module,
        stages,
        stage_strides=strides,
        out_features=out_features,
        num_classes=num_classes,
        size_divisibility=output_stride if stride_mode == "avgpool" else 0,
    )


def grouped_resnet(
    variant: str,
    *,
    out_features: Sequence[str] = ("res2", "res3", "res5"),
    num_heads: int = 8,
    stacked_decoder: int = 0,
    gradient_checkpointing: bool = False,
    **plan: Any,
) -> GroupedResNet:
    """A deeplab2-layout encoder (``grouped_resnet.plan_groups`` keyword arguments in ``plan``).

    ``stacked_decoder``: MaX-DeepLab-L's extra hourglass (``stacked_decoder.py``), returned under
    ``"stacked_res5"`` when requested in ``out_features``.
    """
    try:
        groups = plan_groups(**plan)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{variant}: {err}") from err
    stem = grouped_stem(plan["backbone_type"], plan.get("stem_width_multiplier", 1.0))
    modules: dict[str, list[nn.Module]] = {}
    channels = stem.out_channels
    for name, blocks in groups.items():
        modules[name] = []
        for block in blocks:
            modules[name].append(build_block(channels, block, num_heads=num_heads))
            channels = modules[name][-1].out_channels
    decoder = None
    if stacked_decoder:
        from .stacked_decoder import build_stacked_decoder

        decoder = build_stacked_decoder(plan, modules, stacked_decoder, num_heads=num_heads)
    return GroupedResNet(
        stem,
        modules,
        out_features=out_features,
        stacked_decoder=decoder,
        gradient_checkpointing=gradient_checkpointing,
    )


# layout -> builder of a variant row
LAYOUTS = {"axial": axial_resnet, "grouped": grouped_resnet}


def build_variant(name: str, **overrides: Any) -> Backbone:
    """The variant ``name`` of ``VARIANTS``, with keyword ``overrides`` of its table entries."""
    if name not in VARIANTS:
        raise ValueError(f"unknown Axial-ResNet variant {name!r}; known: {sorted(VARIANTS)}")
    row = {**VARIANTS[name], **overrides}
    return LAYOUTS[row.pop("layout", "axial")](name, **row)


# MODEL.AXIAL_RESNET keys that only one layout reads -> the values that mean "not set" (the
# defaults; for the spans also Base-AxialDeepLab.yaml's 65 / hybrid, which the deeplab2 configs
# and the checkpoints converted with them inherit)
_AXIAL_ONLY = {"SPAN": (0, 65), "SPAN_MODE": ("", "hybrid"), "STEM": ("",), "STRIDE_MODE": ("",)}
_GROUPED_ONLY = {"LAYER_MULTIPLIER": (0.0,), "DROP_PATH_KEEP_PROB": (0.0,),
                 "DROP_PATH_SCHEDULE": ("",)}  # fmt: skip


def _check_layout_keys(c, grouped: bool) -> None:
    """A key the variant's layout does not read, set to another value, is an error: it would be
    ignored without a word (a span ablation on a deeplab2 encoder would train the same model)."""
    names = sorted(k for k, row in VARIANTS.items() if (row.get("layout") == "grouped") != grouped)
    other = _AXIAL_ONLY if grouped else _GROUPED_ONLY
    bad = [f"{k} {c[k]!r}" for k, unset in other.items() if c[k] not in unset]
    if bad:
        raise ValueError(
            f"{', '.join(bad)}: variant {c.VARIANT} does not read "
            f"{'them' if len(bad) > 1 else 'it'}; only {', '.join(names)} do"
        )


def _config_overrides(c, grouped: bool) -> dict[str, Any]:
    """The ``MODEL.AXIAL_RESNET`` keys that override a variant row (empty/0: keep the row's)."""
    _check_layout_keys(c, grouped)
    overrides: dict[str, Any] = dict(
        output_stride=c.OUTPUT_STRIDE,
        num_heads=c.NUM_HEADS,
        out_features=tuple(c.OUT_FEATURES),
        gradient_checkpointing=c.GRADIENT_CHECKPOINTING,
    )
    optional = {
        "width_multiplier": c.WIDTH_MULTIPLIER,
        "stem_width_multiplier": c.STEM_WIDTH_MULTIPLIER,
    }
    if grouped:
        optional.update(
            layer_multiplier=c.LAYER_MULTIPLIER,
            drop_path_keep_prob=c.DROP_PATH_KEEP_PROB,
            drop_path_schedule=c.DROP_PATH_SCHEDULE,
        )
    else:
        overrides["num_classes"] = 0
        optional.update(span=c.SPAN, span_mode=c.SPAN_MODE, stem=c.STEM, stride_mode=c.STRIDE_MODE)
    overrides.update({k: v for k, v in optional.items() if v})
    return overrides


def build_axial_resnet_backbone(cfg) -> Backbone:
    """The backbone of ``cfg.MODEL.AXIAL_RESNET``: its ``VARIANT`` row with the config's output
    stride, heads, output features and checkpointing, and every other key that is set (an empty
    string or 0 keeps the row's value: ``SPAN``, ``SPAN_MODE``, ``STEM``, ``STRIDE_MODE``, the width
    / layer multipliers, drop path). No classifier head. A key the variant's layout does not
    read (the spans and stem for deeplab2's variants, drop path and the layer multiplier for
    ours) set to a value is refused rather than ignored."""
    c = cfg.MODEL.AXIAL_RESNET
    grouped = VARIANTS.get(c.VARIANT, {}).get("layout") == "grouped"
    try:
        return build_variant(c.VARIANT, **_config_overrides(c, grouped))
    except ValueError as err:
        raise ValueError(f"MODEL.AXIAL_RESNET: {err}") from err
