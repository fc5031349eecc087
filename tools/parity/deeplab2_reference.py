"""Build deeplab2 reference checkpoints and outputs for the PyTorch port's parity checks.

Runs under a TensorFlow environment (not the project's), importing deeplab2 from the folder given
with ``--deeplab2`` (the folder that holds ``deeplab2/``, its protos compiled). No deeplab2 code is
copied here: every model is built, run and post-processed by deeplab2 itself.

Per model key (``--models``; see ``MODELS``) it writes into ``--out/<KEY>/``:

* ``checkpoint``, ``ckpt-0.index``, ``ckpt-0.data-00000-of-00001``: saved as deeplab2's trainer
  saves (``tf.train.Checkpoint(global_step=..., **model.checkpoint_items)`` through a
  ``tf.train.CheckpointManager``), minus the optimizer. ImageNet keys (``imagenet_*``) save
  ``tf.train.Checkpoint(encoder=<the model's encoder>)``, the object layout that deeplab2's
  ``runner_utils.maybe_load_checkpoint`` reads an ``initial_checkpoint`` with.
* ``reference.npz``: ``input`` (float32 [1,H,W,3], raw 0..255 pixels as fed to the model) and
  the eval-mode outputs of ``DeepLab.call(training=False)`` including its post-processing with
  the config's settings: ``semantic_logits`` [1,H,W,C], ``center_heatmap`` [1,H,W],
  ``offset_map`` [1,H,W,2] (channels (dy, dx), in input pixels), ``semantic_pred``,
  ``instance_pred``, ``panoptic_pred`` (semantic * label_divisor + instance; int32).
  ImageNet keys instead hold the encoder endpoints ``res1..res5`` (activated stage outputs) for
  the input normalised as DeepLab does (``input / 127.5 - 1``), plus ``backbone_output`` where
  it differs from ``res5`` (MaX-L: the output of its stacked hourglass decoder, which deeplab2's
  Panoptic-DeepLab never reads: its decoder takes ``res5``, so those weights do not affect the
  panoptic outputs).
  Tiny fixtures (compressed npz) store the three float maps only on the stride-4 lattice, as
  ``semantic_logits_sub4`` = ``semantic_logits[:, ::4, ::4]`` and likewise
  ``center_heatmap_sub4``, ``offset_map_sub4``: deeplab2 upsamples the decoder's stride-4
  outputs with align_corners=True from (H-1)/4+1 rows, so these are its raw outputs (offsets
  times 4) and nothing is lost; the script checks that upsampling them back with deeplab2's
  ``resize_bilinear`` reproduces the full maps. The predictions stay full size.
* ``info.json``: build settings, post-processing settings, parameter counts, the randomisation,
  the option overrides (tiny), output statistics and timings.

And ``<manifest-dir>/<KEY>.json.gz`` (for ``--size full`` or ``--manifest-only``): every variable
of the saved full-size checkpoint as ``[name, shape, dtype]`` plus counts. These stand in for the
published zoo checkpoints' variable lists, which cannot be downloaded here; note that real zoo
checkpoints additionally hold optimizer slots (and ``optimizer/...`` entries) and the ImageNet
ones may hold classification-head variables that deeplab2 skips with ``expect_partial``.

Randomisation (see ``randomise``): Keras zero-initialises the gamma of the last batch norm of
every residual block, which switches every residual branch off. So every batch norm's gamma and
beta, every bias and every constant-initialised variable are drawn at random, the heads' last
1x1 kernels are rescaled (their init std of 0.01 gives near-zero outputs), and the batch-norm
moving statistics are set per layer from the statistics of that layer's own input on the
reference image, randomly perturbed (mean + U(-0.2, 0.2) * std, var * U(0.5, 1.5)). The
data-dependent statistics keep activations finite and of order one through the deepest models
(fixed random statistics make activations grow geometrically with depth). Finally the center
head's last bias is shifted so that 5% of the center heatmap exceeds the score threshold (else a
random head may yield no instance at all). Seeds are per key, ``(seed + crc32(key)) % 2**31``,
and runs are reproducible (same files from the same command).

Example (from the repository root)::

    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tools/parity/deeplab2_reference.py \\
        --deeplab2 /tmp/dl2 --size tiny --out tests/fixtures/deeplab2/tiny --models all
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
CITYSCAPES_IMAGE = os.path.join(
    SHARED_DATA,
    "cityscapes_panoptic_sample/leftImg8bit/dummy_000000_000000_leftImg8bit.png",
)
COCO_IMAGE = os.path.join(SHARED_DATA, "coco_panoptic_sample/images/000000439180.jpg")
DEFAULT_MANIFEST_DIR = os.path.join(REPO_ROOT, "tests/fixtures/deeplab2/manifests")
PAD_VALUE = 127.5  # deeplab2 pads images with the mean pixel.

_CS = "cityscapes"
_COCO = "coco"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One reference model: a deeplab2 config, and whether only its encoder is kept."""

    textproto: str  # Relative to deeplab2/configs.
    dataset: str  # deeplab2 dataset name.
    family: str  # Tiny-override family, see TINY_BACKBONE.
    imagenet: bool = False  # Keep the encoder only (ImageNet initial checkpoint).


def _cs_axial(name: str) -> str:
    return f"cityscapes/axial_deeplab/{name}.textproto"


def _cs_pd(name: str) -> str:
    return f"cityscapes/panoptic_deeplab/{name}.textproto"


MODELS: dict[str, ModelSpec] = {
    "axial_swidernet_1_1_1_os16_cityscapes": ModelSpec(
        _cs_axial("axial_swidernet_1_1_1_os16"), "cityscapes_panoptic", "axial_swidernet_1_1_1"
    ),
    "axial_swidernet_1_1_3_os16_cityscapes": ModelSpec(
        _cs_axial("axial_swidernet_1_1_3_os16"), "cityscapes_panoptic", "axial_swidernet_1_1_3"
    ),
    "axial_swidernet_1_1_4.5_os16_cityscapes": ModelSpec(
        _cs_axial("axial_swidernet_1_1_4.5_os16"), "cityscapes_panoptic", "axial_swidernet_1_1_4.5"
    ),
    "max_deeplab_s_backbone_os16_cityscapes": ModelSpec(
        _cs_axial("max_deeplab_s_backbone_os16"), "cityscapes_panoptic", "max_deeplab_s_backbone"
    ),
    "max_deeplab_l_backbone_os16_cityscapes": ModelSpec(
        _cs_axial("max_deeplab_l_backbone_os16"), "cityscapes_panoptic", "max_deeplab_l_backbone"
    ),
    # g3doc/projects/panoptic_deeplab.md: the zoo's ResNet-50 Cityscapes checkpoint uses this one.
    "resnet50_os32_cityscapes": ModelSpec(
        _cs_pd("resnet50_os32_merge_with_pure_tf_func"), "cityscapes_panoptic", "resnet50"
    ),
    "resnet50_beta_os32_cityscapes": ModelSpec(
        _cs_pd("resnet50_beta_os32"), "cityscapes_panoptic", "resnet50_beta"
    ),
    "wide_resnet41_os16_cityscapes": ModelSpec(
        _cs_pd("wide_resnet41_os16"), "cityscapes_panoptic", "wide_resnet41"
    ),
}
for _name, _family in [
    ("resnet50_os16", "resnet50"),
    ("resnet50_os32", "resnet50"),
    ("resnet50_beta_os16", "resnet50_beta"),
    ("resnet50_beta_os32", "resnet50_beta"),
]:
    MODELS[f"{_name}_coco"] = ModelSpec(
        f"coco/panoptic_deeplab/{_name}.textproto", "coco_panoptic", _family
    )
# ImageNet backbones (g3doc/projects/imagenet_pretrained_checkpoints.md) that the models above
# are initialised from: the encoder of the Cityscapes model of the same family.
for _family, _key in [
    ("resnet50", "resnet50_os32_cityscapes"),
    ("resnet50_beta", "resnet50_beta_os32_cityscapes"),
    ("wide_resnet41", "wide_resnet41_os16_cityscapes"),
    ("axial_swidernet_1_1_1", "axial_swidernet_1_1_1_os16_cityscapes"),
    ("axial_swidernet_1_1_3", "axial_swidernet_1_1_3_os16_cityscapes"),
    ("axial_swidernet_1_1_4.5", "axial_swidernet_1_1_4.5_os16_cityscapes"),
    ("max_deeplab_s_backbone", "max_deeplab_s_backbone_os16_cityscapes"),
    ("max_deeplab_l_backbone", "max_deeplab_l_backbone_os16_cityscapes"),
]:
    MODELS[f"imagenet_{_family}"] = dataclasses.replace(MODELS[_key], imagenet=True)

# Input (height, width) per size and dataset kind. ImageNet keys are built (full DeepLab model,
# encoder kept) at 225x225 (ImageNet-like, 16k+1 as deeplab2 likes) with the output stride of
# their Cityscapes config (32 for the ResNets, 16 otherwise): the variables do not depend on it.
INPUT_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "full": {_CS: (1025, 2049), _COCO: (641, 641), "imagenet": (225, 225)},
    "tiny": {_CS: (65, 129), _COCO: (49, 49), "imagenet": (33, 33)},
}

# Tiny overrides, as {field path in ExperimentOptions: value}. Every width is reduced, and the
# layer multiplier too (int() truncation as deeplab2's scale_int_list: e.g. ResNet-50 [3, 4, 6, 3]
# x 0.5 -> [1, 2, 3, 1]) while keeping every block type: each stage still has its first
# (strided or dilated, projection-shortcut) block, and some stage has a following identity
# block. The axial layers keep 8 heads with at least 2 key and 4 value channels per head (so a
# head/depth mix-up cannot hide). Relative-position tables keep their 509 entries whatever the
# width.
TINY_DECODER: dict[str, Any] = {
    "model_options.decoder.decoder_channels": 16,
    "model_options.decoder.aspp_channels": 8,
    "model_options.panoptic_deeplab.low_level[0].channels_project": 8,
    "model_options.panoptic_deeplab.low_level[1].channels_project": 8,
    "model_options.panoptic_deeplab.instance.low_level_override[0].channels_project": 8,
    "model_options.panoptic_deeplab.instance.low_level_override[1].channels_project": 4,
    "model_options.panoptic_deeplab.instance.instance_decoder_override.decoder_channels": 8,
    "model_options.panoptic_deeplab.instance.instance_decoder_override.aspp_channels": 4,
    "model_options.panoptic_deeplab.semantic_head.head_channels": 16,
    "model_options.panoptic_deeplab.instance.center_head.head_channels": 8,
    "model_options.panoptic_deeplab.instance.regression_head.head_channels": 8,
}
# Post-processing areas and windows scaled to the tiny inputs (the full settings would drop
# every stuff segment: 2048 px is a quarter of a 65x129 image).
TINY_EVALUATOR: dict[str, dict[str, Any]] = {
    _CS: {"evaluator_options.stuff_area_limit": 16},
    _COCO: {"evaluator_options.stuff_area_limit": 32, "evaluator_options.nms_kernel": 7},
}
_B = "model_options.backbone."


def _tiny_backbone(width: float, layers: float, stem: float = 0.125) -> dict[str, Any]:
    return {
        _B + "stem_width_multiplier": stem,
        _B + "backbone_width_multiplier": width,
        _B + "backbone_layer_multiplier": layers,
    }


# Block counts after the layer multiplier in the comments (wider_resnet backbones have a first
# stage of 3 blocks outside the multiplier). With these counts the SWideRNets' and MaX-L's axial
# blocks are in stage 5 (and MaX-L's stride-16 decoder stages), where width 1/64 leaves 2 (key)
# and 4 (value) channels per head; MaX-S has them in stages 4 and 5.
TINY_BACKBONE: dict[str, dict[str, Any]] = {
    "resnet50": _tiny_backbone(1 / 32, 0.5),  # [1, 2, 3, 1]
    "resnet50_beta": _tiny_backbone(1 / 32, 0.5),  # [1, 2, 3, 1]
    "wide_resnet41": _tiny_backbone(1 / 64, 0.34, 0.0625),  # [3] + [1, 2, 1, 1]
    "axial_swidernet_1_1_1": _tiny_backbone(1 / 64, 0.34, 0.0625),  # [3] + [1, 2, 1, 1]
    "axial_swidernet_1_1_3": _tiny_backbone(1 / 64, 0.5, 0.0625),  # [3] + [1, 3, 1, 1]
    # [3] + [1, 2, 1, 1]: int() truncates 6 * 0.45 = 2.7 to 2, as for the real 3 * 4.5 = 13.5.
    "axial_swidernet_1_1_4.5": _tiny_backbone(1 / 64, 0.45, 0.0625),
    "max_deeplab_s_backbone": _tiny_backbone(1 / 16, 0.34),  # [1, 1, 2, 1]
    "max_deeplab_l_backbone": _tiny_backbone(1 / 64, 0.34, 0.0625),  # [3] + [1, 2, 1, 1]
}
# ImageNet (encoder-only) tiny fixtures use the fewest layers that keep every block type.
TINY_IMAGENET_LAYER_MULTIPLIER = 0.34

RANDOMISATION = {
    "bn_gamma": "U(0.5, 1.5)",
    "bn_beta": "U(-0.25, 0.25)",
    "bias": "U(-0.25, 0.25)",
    "constant_initialised_variables": "N(0, 1/fan_in) (kernels initialised to zeros, e.g. SAC)",
    "head_last_layer_kernel": "rescaled to std 1/sqrt(fan_in) (keeps its random direction)",
    "bn_moving_mean": "input batch mean + U(-0.2, 0.2) * input batch std (per layer, ref image)",
    "bn_moving_variance": "input batch variance * U(0.5, 1.5) (per layer, ref image)",
    "order": "variables in model.variables order, BN layers in call order",
    "center_head_last_bias": "then shifted so that 5% (or fewer, down to 0.01%, while more than "
    "150 centre candidates remain after NMS) of the center heatmap exceeds center_score_threshold "
    "(see center_bias_shift)",
}


# --------------------------------------------------------------------------------------------
# Inputs.


def load_input(
    kind: str, size: tuple[int, int], cityscapes_image: str, coco_image: str
) -> np.ndarray:
    """Returns the [1,H,W,3] float32 input (raw 0..255 pixels) for a dataset kind and size.

    Cityscapes: the sample resized bilinearly to (H-1, W-1) then padded bottom/right with the
    mean pixel 127.5 to (H, W). COCO: resized so its long side is max(H, W), aspect kept, then
    padded the same way. ImageNet: the Cityscapes sample resized bilinearly to (H, W). Resized
    pixels are rounded to integers, as a decoded image would be.
    """
    import tensorflow as tf
    from PIL import Image

    height, width = size
    path = coco_image if kind == _COCO else cityscapes_image
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    if kind == _CS:
        target = (height - 1, width - 1)
    elif kind == _COCO:
        scale = max(height, width) / max(image.shape[:2])
        target = tuple(int(round(s * scale)) for s in image.shape[:2])
    else:
        target = (height, width)
    resized = tf.image.resize(image[None], target, method="bilinear").numpy()
    resized = np.clip(np.round(resized), 0, 255)
    out = np.full((1, height, width, 3), PAD_VALUE, np.float32)
    out[:, : target[0], : target[1]] = resized
    return out


# --------------------------------------------------------------------------------------------
# Config.


def set_field(message: Any, path: str, value: Any) -> None:
    """Sets a dotted field path like ``a.b[1].c`` in a protobuf message."""
    *parents, leaf = path.split(".")
    for part in parents:
        if part.endswith("]"):
            name, index = part[:-1].split("[")
            message = getattr(message, name)[int(index)]
        else:
            message = getattr(message, part)
    setattr(message, leaf, value)


def load_config(
    spec: ModelSpec, deeplab2_dir: str, overrides: dict[str, Any], size: tuple[int, int]
) -> Any:
    """Parses the key's textproto, applies ``overrides`` and sets the crop sizes to ``size``."""
    from deeplab2 import config_pb2
    from google.protobuf import text_format

    path = os.path.join(deeplab2_dir, "deeplab2", "configs", spec.textproto)
    with open(path) as f:
        config = text_format.Parse(f.read(), config_pb2.ExperimentOptions())
    for field, value in overrides.items():
        set_field(config, field, value)
    # ASPP pooling and the axial layers' query length are fixed by the crop size.
    for options in (config.train_dataset_options, config.eval_dataset_options):
        del options.crop_size[:]
        options.crop_size.extend(size)
    return config


# --------------------------------------------------------------------------------------------
# Randomisation.


def _is_batch_norm(layer: Any) -> bool:
    return all(hasattr(layer, a) for a in ("moving_mean", "moving_variance", "gamma", "beta"))


def batch_norm_layers(module: Any) -> list[Any]:
    return [layer for layer in module.submodules if _is_batch_norm(layer)]


def randomise(module: Any, rng: np.random.RandomState) -> dict[str, list[str]]:
    """Randomises gammas, betas, biases, constant variables and the heads' last kernels."""
    bns = batch_norm_layers(module)
    bn_refs = {}
    for bn in bns:
        for var, kind in ((bn.gamma, "gamma"), (bn.beta, "beta")):
            if var is not None:
                bn_refs[var.ref()] = kind
        for var in (bn.moving_mean, bn.moving_variance):
            bn_refs[var.ref()] = "stat"
    touched: dict[str, list[str]] = {"constant": [], "head_last_kernel": []}
    seen = set()
    for var in module.variables:
        if var.ref() in seen:
            continue
        seen.add(var.ref())
        shape = var.shape.as_list()
        kind = bn_refs.get(var.ref())
        name = var.name
        if kind == "gamma":
            var.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif kind == "beta" or name.endswith("bias:0"):
            var.assign(rng.uniform(-0.25, 0.25, shape).astype(np.float32))
        elif kind == "stat":
            continue  # Set by calibrate_batch_norms.
        elif "final_conv/kernel" in name:
            value = var.numpy()
            fan_in = int(np.prod(shape[:-1]))
            value = value / value.std() / np.sqrt(fan_in)
            var.assign(value.astype(np.float32))
            touched["head_last_kernel"].append(name)
        elif var.dtype.is_floating and np.ptp(var.numpy()) == 0:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            var.assign(rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32))
            touched["constant"].append(name)
    return touched


def key_seed(key: str, seed: int) -> int:
    return (seed + zlib.crc32(key.encode())) % 2**31


def _center_peaks(heatmap: np.ndarray, threshold: float, nms_kernel: int) -> int:
    """Number of centre candidates: values above ``threshold`` that are their window's max."""
    import tensorflow as tf

    h = np.where(heatmap > threshold, heatmap, 0.0).astype(np.float32)[..., None]  # [1, H, W, 1]
    pooled = tf.nn.max_pool2d(h, nms_kernel, 1, "SAME").numpy()
    return int(((h == pooled) & (h > 0)).sum())


MAX_CENTER_PEAKS = 150  # well below deeplab2's keep_k_centers (400), see shift_center_bias


def shift_center_bias(
    items: dict[str, Any], heatmap: np.ndarray, threshold: float, nms_kernel: int
) -> float:
    """Shifts the center head's last bias so a few pixels exceed the score threshold.

    Random heads can leave the whole heatmap below the threshold (no instance at all), or far
    above it (thousands of peaks). The shift puts the 95th percentile at the threshold, or a
    higher percentile when that leaves more than ``MAX_CENTER_PEAKS`` candidates: past
    keep_k_centers (400), deeplab2 keeps ``top_k(sorted=False)[-1]``-thresholded centres, an
    arbitrary subset, which no other implementation can reproduce. The bias is added after the last
    batch norm and bilinear upsampling keeps constants, so the heatmap moves by exactly the shift.
    """
    for quantile in (0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999):
        shift = float(threshold - np.quantile(heatmap, quantile))
        if _center_peaks(heatmap + shift, threshold, nms_kernel) <= MAX_CENTER_PEAKS:
            break
    bias = items["instance_center_head_last_layer"].bias
    bias.assign_add(np.full(bias.shape, shift, np.float32))
    return shift


def calibrate_batch_norms(module: Any, run: Callable[[], Any], rng: np.random.RandomState) -> Any:
    """Runs ``run`` once with every BN setting its moving statistics from its input, perturbed."""
    import tensorflow as tf

    bns = batch_norm_layers(module)

    def make_call(bn: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(inputs: Any, training: Any = None, **kwargs: Any) -> Any:
            x = tf.cast(inputs, tf.float32)
            ndims = len(x.shape)
            axes = [a % ndims for a in bn.axis]
            reduce = [i for i in range(ndims) if i not in axes]
            mean, var = tf.nn.moments(x, reduce, keepdims=True)
            shape = bn.moving_mean.shape
            mean = tf.reshape(mean, shape).numpy()
            var = tf.reshape(var, shape).numpy()
            mean = mean + rng.uniform(-0.2, 0.2, mean.shape) * np.sqrt(var)
            var = var * rng.uniform(0.5, 1.5, var.shape)
            bn.moving_mean.assign(mean.astype(np.float32))
            bn.moving_variance.assign(var.astype(np.float32))
            return original(inputs, training=False, **kwargs)

        return call

    for bn in bns:  # An instance attribute shadows the class's call (eager mode).
        bn.call = make_call(bn, bn.call)
    try:
        return run()
    finally:
        for bn in bns:
            del bn.call
        assert all(bn.call.__func__ is type(bn).call for bn in bns)


# --------------------------------------------------------------------------------------------
# One model.


def _clean(value: Any) -> Any:
    """Rounds float32 proto values (0.34 rather than 0.3400000035762787) for info.json."""
    return round(value, 7) if isinstance(value, float) else value


def _stats(array: np.ndarray) -> dict[str, float]:
    a = np.asarray(array, np.float64)
    return {
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "finite": bool(np.isfinite(a).all()),
    }


def store_on_lattice(arrays: dict[str, np.ndarray], deeplab_utils: Any) -> dict[str, str]:
    """Replaces the float maps by their stride-4 lattice (``x[:, ::4, ::4]``), checking it is exact.

    deeplab2 upsamples the decoder's stride-4 outputs to the input size with align_corners=True
    (and multiplies offsets by the upsampling factor), so for H = 4k + 1 the lattice values are
    the decoder's raw outputs (offsets times 4) and upsampling them back gives the full maps.
    """
    import tensorflow as tf

    notes = {}
    for name in ("semantic_logits", "center_heatmap", "offset_map"):
        full = arrays.pop(name)
        sub = full[:, ::4, ::4]
        squeeze = full.ndim == 3
        sub4 = sub[..., None] if squeeze else sub
        back = deeplab_utils.resize_bilinear(tf.constant(sub4), full.shape[1:3]).numpy()
        back = back[..., 0] if squeeze else back
        err = float(np.abs(back - full).max())
        assert err < 1e-4 * max(1.0, float(np.abs(full).max())), (name, err)
        arrays[name + "_sub4"] = sub
        notes[name + "_sub4"] = (
            f"{name}[:, ::4, ::4]; deeplab2 resize_bilinear (align_corners) of it gives the "
            f"full map within {err:.1e}"
        )
    return notes


def count_parameters(module: Any) -> dict[str, int]:
    def total(variables: list[Any]) -> int:
        unique = {v.ref(): v for v in variables}
        return int(sum(v.shape.num_elements() for v in unique.values()))

    stats = [v for bn in batch_norm_layers(module) for v in (bn.moving_mean, bn.moving_variance)]
    return {
        "trainable": total(module.trainable_variables),
        "non_trainable": total(module.non_trainable_variables),
        "bn_statistics": total(stats),
    }


def write_manifest(ckpt_prefix: str, path: str, key: str, counts: dict[str, int]) -> None:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(ckpt_prefix)
    dtypes = reader.get_variable_to_dtype_map()
    variables = [
        [name, list(shape), dtypes[name].name]
        for name, shape in tf.train.list_variables(ckpt_prefix)
    ]
    model_vars = [v for v in variables if v[0].endswith("/.ATTRIBUTES/VARIABLE_VALUE")]
    manifest = {
        "key": key,
        "note": "variables of a deeplab2-built checkpoint with random values; real zoo "
        "checkpoints additionally hold optimizer slots",
        "num_entries": len(variables),
        "num_variables": len(model_vars),
        "num_elements": int(sum(int(np.prod(s)) for _, s, _ in model_vars)),
        "parameter_counts": counts,
        "variables": variables,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(manifest, indent=0).encode())


def use_float64(tf: Any, deeplab_utils: Any) -> None:
    """Runs deeplab2 in float64 (``--float64``): Keras' float type, and float32 copies for its
    resize helpers, which are float32-only (they come after the network body, so their float32
    round-off is not amplified)."""
    tf.keras.backend.set_floatx("float64")
    for name in ("resize_align_corners", "resize_bilinear", "resize_and_rescale_offsets"):
        original = getattr(deeplab_utils, name)

        def keep_dtype(x: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            return tf.cast(_original(tf.cast(x, tf.float32), *args, **kwargs), x.dtype)

        setattr(deeplab_utils, name, keep_dtype)


def float32_post_processing(tf: Any, model: Any) -> None:
    """deeplab2's post-processing is float32-only: under ``--float64`` it gets float32 copies of
    the raw outputs (its layer call would cast them back, so its ``call`` is used directly)."""
    post = model._post_processor

    def call(result: dict[str, Any]) -> Any:
        cast = {
            k: tf.cast(v, tf.float32) if v.dtype == tf.float64 else v for k, v in result.items()
        }
        return post.call(cast)

    model._post_processor = call


def build_model(key: str, args: argparse.Namespace) -> SimpleNamespace:
    """Builds the key's deeplab2 model (Keras-initialised weights) for its input size, seeded."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    sys.path.insert(0, os.path.abspath(args.deeplab2))
    import tensorflow as tf
    from deeplab2.data import dataset
    from deeplab2.model import deeplab
    from deeplab2.model import utils as deeplab_utils

    spec = MODELS[key]
    if args.float64:
        use_float64(tf, deeplab_utils)
    kind = "imagenet" if spec.imagenet else (_CS if spec.dataset.startswith(_CS) else _COCO)
    size = INPUT_SIZES[args.size][kind]
    overrides: dict[str, Any] = {}
    if args.size == "tiny":
        overrides.update(TINY_BACKBONE[spec.family])
        if spec.imagenet:
            overrides[_B + "backbone_layer_multiplier"] = TINY_IMAGENET_LAYER_MULTIPLIER
        else:
            overrides.update(TINY_DECODER)
            overrides.update(TINY_EVALUATOR[kind])
    config = load_config(spec, args.deeplab2, overrides, size)
    dataset_info = dataset.MAP_NAME_TO_DATASET_INFO[spec.dataset]
    # Per-key seed, so that keys with the same architecture still get different weights.
    seed = key_seed(key, args.seed)
    tf.keras.utils.set_random_seed(seed)  # Python, NumPy and TF seeds (Keras initialisers).
    floatx = tf.keras.backend.floatx()
    model = deeplab.DeepLab(config, dataset_info)
    if args.float64:
        float32_post_processing(tf, model)
    model(tf.keras.Input(shape=(*size, 3), batch_size=1, dtype=floatx), training=False)
    return SimpleNamespace(
        tf=tf,
        deeplab=deeplab,
        deeplab_utils=deeplab_utils,
        spec=spec,
        kind=kind,
        size=size,
        overrides=overrides,
        config=config,
        dataset_info=dataset_info,
        seed=seed,
        floatx=floatx,
        model=model,
        image=load_input(kind, size, args.cityscapes_image, args.coco_image),
    )


def build_one(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Builds, randomises, runs and saves one model; returns its info dict."""
    start = time.time()
    built = build_model(key, args)
    tf, deeplab, deeplab_utils = built.tf, built.deeplab, built.deeplab_utils
    spec, kind, size, overrides = built.spec, built.kind, built.size, built.overrides
    config, dataset_info, seed, floatx = built.config, built.dataset_info, built.seed, built.floatx
    model, image = built.model, built.image
    out_dir = os.path.join(args.out, key)
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.RandomState(seed)
    timings: dict[str, float] = {"build_s": time.time() - start}
    items = model.checkpoint_items
    target = items["encoder"] if spec.imagenet else model
    counts = count_parameters(target)
    checkpoint_items = {"encoder": items["encoder"]} if spec.imagenet else items

    def forward() -> dict[str, np.ndarray]:
        if spec.imagenet:
            endpoints = items["encoder"](
                tf.constant(image, dtype=floatx) / 127.5 - 1.0, training=False
            )
            arrays = {n: endpoints[n].numpy() for n in [f"res{i}" for i in range(1, 6)]}
            # MaX-L's backbone ends with a stacked (hourglass) decoder whose output is only in
            # backbone_output; Panoptic-DeepLab's decoder reads res5 and never uses it.
            backbone_output = endpoints["backbone_output"].numpy()
            if not np.array_equal(backbone_output, arrays["res5"]):
                arrays["backbone_output"] = backbone_output
            return arrays
        outputs = model(tf.constant(image, dtype=floatx), training=False)
        names = [
            "semantic_logits",
            "center_heatmap",
            "offset_map",
            "semantic_pred",
            "instance_pred",
            "panoptic_pred",
        ]
        return {n: outputs[n].numpy() for n in names}

    touched = {}
    if not args.manifest_only:
        start = time.time()
        touched = randomise(target, rng)
        calibrated = calibrate_batch_norms(target, forward, rng)
        if not spec.imagenet:
            threshold = config.evaluator_options.center_score_threshold
            touched["center_bias_shift"] = shift_center_bias(
                items,
                calibrated["center_heatmap"],
                threshold,
                config.evaluator_options.nms_kernel,
            )
        timings["randomise_and_calibrate_s"] = time.time() - start
        start = time.time()
        outputs = forward()
        timings["forward_s"] = time.time() - start

    global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    kwargs = {} if spec.imagenet else {"global_step": global_step}
    checkpoint = tf.train.Checkpoint(**kwargs, **checkpoint_items)
    manager = tf.train.CheckpointManager(checkpoint, directory=out_dir, max_to_keep=1)
    start = time.time()
    prefix = manager.save(checkpoint_number=0)
    timings["save_s"] = time.time() - start

    info: dict[str, Any] = {
        "key": key,
        "size": args.size,
        "dtype": "float64" if args.float64 else "float32",
        "textproto": "deeplab2/configs/" + spec.textproto,
        "imagenet_encoder_only": spec.imagenet,
        "checkpoint_objects": sorted(checkpoint_items) + sorted(kwargs),
        "crop_size": list(size),
        "input": "raw 0..255 pixels; the model normalises with x / 127.5 - 1",
        "input_image": os.path.basename(
            args.coco_image if kind == _COCO else args.cityscapes_image
        ),
        "input_preparation": " ".join(load_input.__doc__.split("\n\n")[1].split()),
        "dataset": spec.dataset,
        "num_classes": dataset_info.num_classes,
        "ignore_label": dataset_info.ignore_label,
        "label_divisor": dataset_info.panoptic_label_divisor,
        "thing_class_ids": list(dataset_info.class_has_instances_list),
        "backbone": {
            name: _clean(getattr(config.model_options.backbone, name))
            for name in (
                "name",
                "output_stride",
                "stem_width_multiplier",
                "backbone_width_multiplier",
                "backbone_layer_multiplier",
                "use_sac_beyond_stride",
                "use_squeeze_and_excite",
            )
        },
        "batchnorm": {
            "epsilon": _clean(config.trainer_options.solver_options.batchnorm_epsilon),
            "momentum": _clean(config.trainer_options.solver_options.batchnorm_momentum),
            "sync": config.trainer_options.solver_options.use_sync_batchnorm,
        },
        "post_processing": {
            name: _clean(getattr(config.evaluator_options, name))
            for name in (
                "center_score_threshold",
                "nms_kernel",
                "keep_k_centers",
                "stuff_area_limit",
                "thing_area_limit",
                "merge_semantic_and_instance_with_tf_op",
                "add_flipped_images",
            )
        },
        "eval_scales": list(config.evaluator_options.eval_scales) or [1.0],
        "parameter_counts": counts,
        "overrides": overrides,
        "tensorflow": tf.__version__,
        "deeplab2_commit": args.deeplab2_commit,
        "seed": args.seed,
        "key_seed": seed,
        "seeding": "key_seed = (seed + crc32(key)) % 2**31; tf.keras.utils.set_random_seed("
        "key_seed) (initialisers), numpy RandomState(key_seed) (randomisation)",
        "center_bias_shift": touched.get("center_bias_shift"),
        "randomisation": RANDOMISATION,
        "randomised_constant_variables": touched.get("constant", []),
        "rescaled_head_kernels": touched.get("head_last_kernel", []),
        "timings": timings,
        "checkpoint_files": sorted(
            f for f in os.listdir(out_dir) if f == "checkpoint" or f.startswith("ckpt-0")
        ),
    }

    if not args.manifest_only:
        arrays: dict[str, np.ndarray] = {"input": image}
        info["outputs"] = {}
        for name, value in outputs.items():
            info["outputs"][name] = {"shape": list(value.shape), "dtype": value.dtype.name}
            info["outputs"][name].update(_stats(value))
            if value.dtype.kind == "i":
                info["outputs"][name]["num_unique"] = int(len(np.unique(value)))
            arrays[name] = value
        if args.size == "tiny" and not spec.imagenet:
            info["stored_on_stride4_lattice"] = store_on_lattice(arrays, deeplab_utils)
            np.savez_compressed(os.path.join(out_dir, "reference.npz"), **arrays)
        else:
            np.savez(os.path.join(out_dir, "reference.npz"), **arrays)
        problems = [
            n
            for n, s in info["outputs"].items()
            if not s["finite"] or (s["dtype"].startswith("float") and s["std"] < 1e-3)
        ]
        info["problems"] = problems

        if args.verify_restore:
            # Rebuild from scratch, restore the checkpoint and compare the outputs.
            start = time.time()
            model2 = deeplab.DeepLab(config, dataset_info)
            if args.float64:
                float32_post_processing(tf, model2)
            model2(tf.keras.Input(shape=(*size, 3), batch_size=1, dtype=floatx), training=False)
            items2 = model2.checkpoint_items
            restore_items = {"encoder": items2["encoder"]} if spec.imagenet else items2
            status = tf.train.Checkpoint(**restore_items).read(prefix)
            status.expect_partial().assert_existing_objects_matched()
            model, items = model2, items2
            again = forward()
            diff = max(
                float(np.abs(again[n].astype(np.float64) - outputs[n]).max()) for n in outputs
            )
            info["restore_check_max_abs_diff"] = diff
            timings["restore_check_s"] = time.time() - start
            assert diff < 1e-4, diff

    counts_manifest = dict(counts)
    if args.size == "full" or args.manifest_only:
        write_manifest(
            prefix, os.path.join(args.manifest_dir, f"{key}.json.gz"), key, counts_manifest
        )
    with open(os.path.join(out_dir, "info.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return info


def dump_blocks(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Block-by-block reference (``--dump-blocks DIR``) from the saved ``<out>/<key>/ckpt-0``.

    Restores the checkpoint into a freshly built model, runs it on the same input and saves, in
    the order they run, the stem's output and every encoder block's output (``[1, h, w, C]``,
    before the ReLU that the next block applies) as ``DIR/<key>/<name>.npy``, with ``blocks.json``
    listing them. Each block's input is the output saved just before it (checked here), so a
    port can run every block on deeplab2's own input and compare one block at a time: on deep
    random-weight models whole-model differences are the round-off amplified by depth, while a
    block's own difference is not. ``blocks.json`` also records that the restored model
    reproduces ``reference.npz``."""
    built = build_model(key, args)
    tf, model, floatx = built.tf, built.model, built.floatx
    prefix = os.path.join(args.out, key, "ckpt-0")
    tf.train.Checkpoint(**model.checkpoint_items).read(prefix).expect_partial()
    encoder = model.checkpoint_items["encoder"]
    out_dir = os.path.join(args.dump_blocks, key)
    os.makedirs(out_dir, exist_ok=True)
    saved: list[dict[str, Any]] = []
    last: dict[str, np.ndarray] = {}

    def wrap(layer: Any, name: str, chained: bool) -> None:
        original = layer.call

        def call(inputs: Any, *rest: Any, **kwargs: Any) -> Any:
            entry: dict[str, Any] = {"name": name}
            if chained:
                given = inputs[0].numpy()
                entry["input_is_previous_output"] = bool(np.array_equal(given, last["value"]))
            result = original(inputs, *rest, **kwargs)
            value = result.numpy()
            np.save(os.path.join(out_dir, name.replace("/", "_") + ".npy"), value)
            entry["shape"] = list(value.shape)
            entry.update(_stats(value))
            saved.append(entry)
            last["value"] = value
            return result

        layer.call = call

    wrap(encoder._stem, "encoder/_stem", chained=False)
    for stage_index in range(1, 6):
        stage = getattr(encoder, f"_stage{stage_index}", None)
        if stage is None:
            continue
        for b in range(stage._num_blocks):
            name = f"encoder/_stage{stage_index}/_block{b + 1}"
            wrap(getattr(stage, f"_block{b + 1}"), name, chained=True)
    start = time.time()
    outputs = model(tf.constant(built.image, dtype=floatx), training=False)
    reference = np.load(os.path.join(args.out, key, "reference.npz"))
    restored = {}
    for n in ("semantic_logits", "center_heatmap", "offset_map"):
        ours = outputs[n].numpy().astype(np.float64)
        if n not in reference:  # a tiny fixture, stored on the stride-4 lattice
            ours, n = ours[:, ::4, ::4], f"{n}_sub4"
        restored[n] = float(np.abs(ours - reference[n]).max())
    result = {
        "key": key,
        "dtype": floatx,
        "blocks": saved,
        "restored_vs_reference_max_abs": restored,
        "forward_s": round(time.time() - start, 1),
    }
    with open(os.path.join(out_dir, "blocks.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not all(e.get("input_is_previous_output", True) for e in saved):
        raise RuntimeError(f"{key}: a block's input is not the previous block's output")
    return result


# --------------------------------------------------------------------------------------------
# Command line.


def _summary(info: dict[str, Any]) -> str:
    lines = [f"{info['key']} [{info['size']}]: params {info['parameter_counts']}"]
    lines.append(f"  timings { ({k: round(v, 1) for k, v in info['timings'].items()}) }")
    for name, s in info.get("outputs", {}).items():
        extra = f" unique={s['num_unique']}" if "num_unique" in s else ""
        lines.append(
            f"  {name:16s} {str(s['shape']):22s} min={s['min']:.4g} max={s['max']:.4g} "
            f"std={s['std']:.4g}{extra}"
        )
    if info.get("problems"):
        lines.append(f"  PROBLEMS: {info['problems']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deeplab2", required=True, help="folder holding deeplab2/")
    parser.add_argument("--models", nargs="+", default=["all"], help="keys, or 'all'")
    parser.add_argument("--size", choices=("full", "tiny"), default="tiny")
    parser.add_argument("--out", required=True, help="output folder (one subfolder per key)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float64",
        action="store_true",
        help="build and run in float64 (parity of models whose float32 round-off is amplified)",
    )
    parser.add_argument("--manifest-dir", default=DEFAULT_MANIFEST_DIR)
    parser.add_argument(
        "--manifest-only",
        action="store_true",
        help="build, save and write the manifest only (no randomisation, forward or npz)",
    )
    parser.add_argument(
        "--verify-restore",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rebuild, restore and compare the outputs (default: on for tiny, off for full)",
    )
    parser.add_argument("--deeplab2-commit", default="64bc1c1a", help="recorded in info.json")
    parser.add_argument("--cityscapes-image", default=CITYSCAPES_IMAGE)
    parser.add_argument("--coco-image", default=COCO_IMAGE)
    parser.add_argument(
        "--dump-blocks",
        metavar="DIR",
        help="instead of building: restore <out>/<key>/ckpt-0 and save every encoder block's "
        "output to DIR/<key>/ (see dump_blocks)",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.models == ["all"]:
        args.models = list(MODELS)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown keys {unknown}; known: {list(MODELS)}")
    if args.verify_restore is None:
        args.verify_restore = args.size == "tiny"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.in_process and args.dump_blocks:
        result = dump_blocks(args.models[0], args)
        print(
            f"{result['key']}: {len(result['blocks'])} outputs saved; restored model vs "
            f"reference.npz max |diff| {result['restored_vs_reference_max_abs']}",
            flush=True,
        )
        return 0
    if args.in_process:
        print(_summary(build_one(args.models[0], args)), flush=True)
        return 0
    # One model per subprocess, so the memory of the biggest models is freed in between.
    failed = []
    base, skipping = [], False
    for arg in argv:  # argv without the --models list
        if arg == "--models" or arg.startswith("--models="):
            skipping = arg == "--models"
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        base.append(arg)
    for key in args.models:
        start = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), *base, "--models", key, "--in-process"]
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run(cmd, env=env)
        print(f"== {key}: rc={result.returncode} in {time.time() - start:.0f} s", flush=True)
        if result.returncode:
            failed.append(key)
    if failed:
        print(f"FAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
