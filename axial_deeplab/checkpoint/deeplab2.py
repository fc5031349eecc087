"""Map deeplab2 (TensorFlow) Panoptic-DeepLab / Axial-DeepLab checkpoints onto our models.

A deeplab2 checkpoint (``tf.train.Checkpoint(**model.checkpoint_items)``) names variables by their
object path, e.g. ``encoder/_stage4/_block2/_attention/_height_axis/qkv_kernel`` plus the suffix
``/.ATTRIBUTES/VARIABLE_VALUE``. ``deeplab2_entries(model)`` walks our model (a
``PanopticDeepLab`` whose backbone is a ``GroupedResNet``; or the bare encoder) and lists, for every
tensor, its deeplab2 name and the layout change:

- conv kernels ``[kh, kw, C_in, C_out]`` -> ``[C_out, C_in, kh, kw]``; depthwise
  ``[kh, kw, C, 1]`` -> ``[C, 1, kh, kw]``;
- batch norms ``gamma, beta, moving_mean, moving_variance`` -> ``weight, bias, running_mean,
  running_var`` (Keras epsilon 1e-3: the configs set ``MODEL.BATCH_NORM.EPS``);
- axial attention: ``qkv_kernel [C_in, 2K + V]`` -> ``qkv_proj.weight [2K + V, C_in, 1, 1]`` (same
  ``[q | k | v]`` head-major channel order), the similarity batch norm ``[3, 1, G, 1, 1]`` ->
  ``[3G]`` and the output batch norm ``[2, 1, G, 1, V/G]`` -> ``[2V]`` (flattened, same order),
  relative embeddings ``[509, d]`` -> ``[d, 509]`` (both index the distance key - query);
- the decoder's fusion conv reads ``concat[upsampled, projected]`` in deeplab2 and
  ``concat[projected, upsampled]`` here: its depthwise kernel, batch norm and pointwise input
  channels are permuted.

``better_zoo_models`` tells, from a checkpoint's variable names and shapes, which zoo configs
fit it better than the one given (a failed conversion names them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..modeling.backbone.axial_blocks import AxialBottleneckBlock
from ..modeling.backbone.conv_blocks import BasicBlock, BottleneckBlock
from ..modeling.backbone.grouped_resnet import GroupedResNet
from ..modeling.decoder import ASPP, PanopticDeepLabDecoder
from .mapping import Entry, identity, shape_report
from .zoo import ZOO, ZooModel, config_file_of

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
BN_NAMES = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"))
BN_NAMES += (("moving_variance", "running_var"),)


def conv_kernel(k: np.ndarray) -> np.ndarray:
    """``[kh, kw, C_in, C_out]`` -> ``[C_out, C_in, kh, kw]``."""
    return k.transpose(3, 2, 0, 1)


def depthwise_kernel(k: np.ndarray) -> np.ndarray:
    """``[kh, kw, C, 1]`` -> ``[C, 1, kh, kw]``."""
    return k.transpose(2, 3, 0, 1)


def ignore_reason(name: str) -> str | None:
    """Why a deeplab2 checkpoint variable is not converted (None: it must be)."""
    if name.startswith("optimizer/") or "/.OPTIMIZER_SLOT/" in name:
        return "optimizer state"
    if name in ("global_step" + SUFFIX, "save_counter" + SUFFIX, "_CHECKPOINTABLE_OBJECT_GRAPH"):
        return "step counters and object graph"
    return None


def _tf(name: str) -> str:
    return name + SUFFIX


def _bn(tf: str, ours: str, transform=identity) -> Iterator[Entry]:
    for theirs, mine in BN_NAMES:
        yield Entry(_tf(f"{tf}/{theirs}"), f"{ours}.{mine}", transform)


def _conv_bn(tf: str, ours: str) -> Iterator[Entry]:
    """A ``Conv2DSame`` with batch norm -> our ``Sequential(conv, bn, ...)`` at ``ours``."""
    yield Entry(_tf(f"{tf}/_conv/kernel"), f"{ours}.0.weight", conv_kernel)
    yield from _bn(f"{tf}/_batch_norm", f"{ours}.1")


def _separable(tf: str, ours: str, perm: np.ndarray | None = None) -> Iterator[Entry]:
    """``SeparableConv2DSame`` -> our ``DepthwiseSeparableConv`` (input channels permuted)."""

    def take(axis: int):
        return identity if perm is None else (lambda x: np.take(x, perm, axis=axis))

    dw, pw = take(0), take(1)
    yield Entry(
        _tf(f"{tf}/_depthwise/_depthwise_conv/depthwise_kernel"),
        f"{ours}.0.weight",
        lambda k: dw(depthwise_kernel(k)),
    )
    yield from _bn(f"{tf}/_depthwise/_batch_norm", f"{ours}.1", dw)
    yield Entry(
        _tf(f"{tf}/_pointwise/_conv/kernel"), f"{ours}.3.weight", lambda k: pw(conv_kernel(k))
    )
    yield from _bn(f"{tf}/_pointwise/_batch_norm", f"{ours}.4")


def _attention(tf: str, ours: str) -> Iterator[Entry]:
    yield Entry(_tf(f"{tf}/qkv_kernel"), f"{ours}.qkv_proj.weight", lambda k: k.T[:, :, None, None])
    flat = lambda x: x.reshape(-1)  # noqa: E731 - [3, 1, G, 1, 1] / [2, 1, G, 1, dv] -> flat
    yield from _bn(f"{tf}/_batch_norm_qkv", f"{ours}.qkv_norm")
    yield from _bn(f"{tf}/_batch_norm_similarity", f"{ours}.logits_norm", flat)
    yield from _bn(f"{tf}/_batch_norm_retrieved_output", f"{ours}.output_norm", flat)
    for theirs, mine in (("query", "query_rel"), ("key", "key_rel"), ("value", "value_rel")):
        yield Entry(_tf(f"{tf}/_{theirs}_rpe/embeddings"), f"{ours}.{mine}", lambda e: e.T)


def _block(tf: str, ours: str, block: nn.Module) -> Iterator[Entry]:
    if isinstance(block, AxialBottleneckBlock):
        yield from _conv_bn(f"{tf}/_conv1_bn_act", f"{ours}.branch.0")
        yield from _attention(f"{tf}/_attention/_height_axis", f"{ours}.branch.1")
        yield from _attention(f"{tf}/_attention/_width_axis", f"{ours}.branch.2")
        yield from _conv_bn(f"{tf}/_conv3_bn", f"{ours}.branch.4")
    elif isinstance(block, BottleneckBlock):
        for i, name in enumerate(("_conv1_bn_act", "_conv2_bn_act", "_conv3_bn")):
            yield from _conv_bn(f"{tf}/{name}", f"{ours}.branch.{i}")
    elif isinstance(block, BasicBlock):
        for i, name in enumerate(("_conv1_bn_act", "_conv2_bn")):
            yield from _conv_bn(f"{tf}/{name}", f"{ours}.branch.{i}")
    else:
        raise TypeError(f"{ours}: no deeplab2 mapping for {type(block).__name__}")
    if block.shortcut is not None:
        yield from _conv_bn(f"{tf}/_shortcut", f"{ours}.shortcut")
    if block.se is not None:
        yield Entry(
            _tf(f"{tf}/_squeeze_and_excite/_se_conv/kernel"), f"{ours}.se.conv.weight", conv_kernel
        )
        yield Entry(_tf(f"{tf}/_squeeze_and_excite/_se_conv/bias"), f"{ours}.se.conv.bias")


def encoder_entries(encoder: GroupedResNet, ours: str = "backbone") -> Iterator[Entry]:
    """deeplab2 ``encoder/...`` names of a ``GroupedResNet`` at state-dict prefix ``ours``."""
    stem = f"{ours}.stem"
    if len(encoder.stem) == 2:  # conv-BN stem (7x7 or 3x3)
        yield from _conv_bn("encoder/_stem", stem)
    else:  # Inception stem: conv-BN-ReLU, conv-BN-ReLU, conv-BN
        for i, name in enumerate(("_conv1_bn_act", "_conv2_bn_act", "_conv3_bn")):
            yield Entry(
                _tf(f"encoder/_stem/{name}/_conv/kernel"), f"{stem}.{3 * i}.weight", conv_kernel
            )
            yield from _bn(f"encoder/_stem/{name}/_batch_norm", f"{stem}.{3 * i + 1}")
    for g, (name, stage) in enumerate(zip(encoder.group_names, encoder.stages, strict=True)):
        for b, block in enumerate(stage):
            tf = f"encoder/_stage{name[-1]}/_block{b + 1}"
            yield from _block(tf, f"{ours}.stages.{g}.{b}", block)
    decoder = encoder.stacked_decoder
    if decoder is None:
        return
    for i, (fuse, block) in enumerate(zip(decoder.fuses, decoder.blocks, strict=True)):
        tf = f"encoder/_decoder_stage{i + 1}"
        for j, kind in enumerate(fuse.kinds):
            if kind != "same":
                conv = "_strided_conv_bn" if kind == "strided" else "_resized_conv_bn"
                yield from _conv_bn(
                    f"{tf}_resized_fuse/{conv}{j + 1}",
                    f"{ours}.stacked_decoder.fuses.{i}.convs.{j}",
                )
        yield from _block(f"{tf}/_block1", f"{ours}.stacked_decoder.blocks.{i}", block)


def _decoder_entries(tf: str, ours: str, decoder: PanopticDeepLabDecoder) -> Iterator[Entry]:
    context = decoder.context
    if isinstance(context, ASPP):
        yield from _conv_bn(f"{tf}/_aspp/_conv_bn_act", f"{ours}.context.branches.0")
        for i in range(1, len(context.branches)):
            yield from _conv_bn(
                f"{tf}/_aspp/_aspp_conv{i}/_conv_bn_act", f"{ours}.context.branches.{i}"
            )
        pool = f"{tf}/_aspp/_aspp_pool/_conv_bn_act"
        yield Entry(_tf(f"{pool}/_conv/kernel"), f"{ours}.context.pool_conv.weight", conv_kernel)
        yield from _bn(f"{pool}/_batch_norm", f"{ours}.context.pool_norm")
        yield from _conv_bn(f"{tf}/_aspp/_proj_conv_bn_act", f"{ours}.context.project")
    else:
        yield from _conv_bn(f"{tf}/_aspp/_proj_conv_bn_act", f"{ours}.context")
    for i, (projection, fusion) in enumerate(zip(decoder.projections, decoder.fusions)):
        yield from _conv_bn(f"{tf}/_low_level_conv{i + 1}", f"{ours}.projections.{i}")
        projected = projection[0].out_channels
        upsampled = fusion[0].in_channels - projected
        # ours: [projected | upsampled]; deeplab2: [upsampled | projected]
        perm = np.concatenate([upsampled + np.arange(projected), np.arange(upsampled)])
        yield from _separable(
            f"{tf}/_fusion_conv{i + 1}/_conv1_bn_act", f"{ours}.fusions.{i}", perm
        )


def _head_entries(tf: str, last: str, ours: str) -> Iterator[Entry]:
    yield from _separable(f"{tf}/_conv1_bn_act", f"{ours}.conv")
    yield Entry(_tf(f"{last}/kernel"), f"{ours}.predictor.weight", conv_kernel)
    yield Entry(_tf(f"{last}/bias"), f"{ours}.predictor.bias")


# (deeplab2 checkpoint item of the head without its last layer, of its last layer, our module)
HEADS = (
    ("semantic_head_without_last_layer", "semantic_last_layer", "semantic_head"),
    (
        "instance_center_head_without_last_layer",
        "instance_center_head_last_layer",
        "center_head",
    ),
    (
        "instance_regression_head_without_last_layer",
        "instance_regression_head_last_layer",
        "offset_head",
    ),
)


def deeplab2_entries(model: nn.Module) -> list[Entry]:
    """Every tensor of ``model`` (a ``PanopticDeepLab`` with a ``GroupedResNet`` backbone, or a
    bare ``GroupedResNet`` for ImageNet backbone checkpoints) with its deeplab2 name."""
    if isinstance(model, GroupedResNet):
        prefix = "backbone."
        return [
            Entry(e.source, e.target[len(prefix) :], e.transform) for e in encoder_entries(model)
        ]
    if not isinstance(model.backbone, GroupedResNet):
        raise ValueError(
            f"deeplab2 checkpoints need the config of a deeplab2 model (configs/coco/deeplab2/, "
            f"configs/cityscapes/deeplab2/: a grouped MODEL.AXIAL_RESNET.VARIANT), got one "
            f"whose backbone is {type(model.backbone).__name__}"
        )
    entries = list(encoder_entries(model.backbone))
    entries += _decoder_entries("semantic_decoder", "semantic_decoder", model.semantic_decoder)
    entries += _decoder_entries("instance_decoder", "instance_decoder", model.instance_decoder)
    for tf, last, ours in HEADS:
        entries += _head_entries(tf, last, ours)
    return entries


def name_pattern(name: str) -> str:
    """A deeplab2 variable name without its block number (``_block3`` -> ``_block``): the same
    for every depth of a model family."""
    return re.sub(r"_block\d+", "_block", name)


def fit(
    shapes: Mapping[str, tuple[int, ...]], cfg, *, backbone_only: bool = False
) -> tuple[float, float]:
    """How well checkpoint variables (name -> shape) fit the model of ``cfg`` (built on the meta
    device; its backbone with ``backbone_only``): the Jaccard index of the block-less variable
    names (the architecture), then the share of tensors that convert (names and shapes)."""
    from ..modeling.build import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    target = model.backbone if backbone_only else model
    entries = deeplab2_entries(target)
    ours = {name_pattern(e.source) for e in entries}
    theirs = {name_pattern(n) for n in shapes if ignore_reason(n) is None}
    report = shape_report(shapes, entries, target, ignore=ignore_reason)
    tried = report.used + len(report.unused) + len(report.missing) + len(report.shape_errors)
    return len(ours & theirs) / max(len(ours | theirs), 1), report.used / max(tried, 1)


def better_zoo_models(
    shapes: Mapping[str, tuple[int, ...]], cfg, *, backbone_only: bool = False
) -> list[ZooModel]:
    """The ``ZOO`` models (the table behind the published-name warning) whose configs ``fit``
    checkpoint variables ``shapes`` best, when better than ``cfg``; else ``[]``. Several when
    the tensors cannot tell them apart (e.g. output strides, layer multipliers of a tiny copy)."""
    from ..config import load_config

    given = fit(shapes, cfg, backbone_only=backbone_only)
    scores = [
        (fit(shapes, load_config(path), backbone_only=backbone_only), model)
        for model in ZOO
        if (path := config_file_of(model))
    ]
    best = max((score for score, _ in scores), default=given)
    return [model for score, model in scores if score == best] if best > given else []
