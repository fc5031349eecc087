"""The deeplab2 reference models of ``deeplab2_reference.py``: keys, configs, inputs and building.

Every key names a deeplab2 config (``MODELS``); tiny fixtures override its widths, depths and
post-processing areas (``TINY_*``). ``build_model`` builds the key's model with deeplab2 itself,
Keras-initialised and seeded per key. TensorFlow and deeplab2 are imported inside the functions,
so that this module imports without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import zlib
from types import SimpleNamespace
from typing import Any

import numpy as np

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


def input_kind(spec: ModelSpec) -> str:
    """The key's input kind, a column of ``INPUT_SIZES``: "imagenet", "cityscapes" or "coco"."""
    return "imagenet" if spec.imagenet else (_CS if spec.dataset.startswith(_CS) else _COCO)


def tiny_overrides(spec: ModelSpec, kind: str) -> dict[str, Any]:
    """The config overrides of a tiny fixture: the family's backbone, and for panoptic keys the
    decoder's and the evaluator's; ImageNet keys take the fewest layers instead."""
    overrides = dict(TINY_BACKBONE[spec.family])
    if spec.imagenet:
        overrides[_B + "backbone_layer_multiplier"] = TINY_IMAGENET_LAYER_MULTIPLIER
    else:
        overrides.update(TINY_DECODER)
        overrides.update(TINY_EVALUATOR[kind])
    return overrides


def key_seed(key: str, seed: int) -> int:
    return (seed + zlib.crc32(key.encode())) % 2**31


# --------------------------------------------------------------------------------------------
# Inputs.


def input_image(kind: str, cityscapes_image: str, coco_image: str) -> str:
    """The image an input kind is made from: the COCO one for COCO, else the Cityscapes one."""
    return coco_image if kind == _COCO else cityscapes_image


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
    path = input_image(kind, cityscapes_image, coco_image)
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
# Building.


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


def new_deeplab(built: SimpleNamespace, float64: bool) -> Any:
    """A ``DeepLab`` for ``built``'s config, its variables created by a call on a Keras input of
    the key's size (Keras initialisers: they draw from TensorFlow's global seed)."""
    tf = built.tf
    model = built.deeplab.DeepLab(built.config, built.dataset_info)
    if float64:
        float32_post_processing(tf, model)
    model(tf.keras.Input(shape=(*built.size, 3), batch_size=1, dtype=built.floatx), training=False)
    return model


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
    kind = input_kind(spec)
    size = INPUT_SIZES[args.size][kind]
    overrides = tiny_overrides(spec, kind) if args.size == "tiny" else {}
    built = SimpleNamespace(
        tf=tf,
        deeplab=deeplab,
        deeplab_utils=deeplab_utils,
        spec=spec,
        kind=kind,
        size=size,
        overrides=overrides,
        config=load_config(spec, args.deeplab2, overrides, size),
        dataset_info=dataset.MAP_NAME_TO_DATASET_INFO[spec.dataset],
        # Per-key seed, so that keys with the same architecture still get different weights.
        seed=key_seed(key, args.seed),
    )
    tf.keras.utils.set_random_seed(built.seed)  # Python, NumPy and TF seeds (Keras initialisers).
    built.floatx = tf.keras.backend.floatx()
    built.model = new_deeplab(built, args.float64)
    built.image = load_input(kind, size, args.cityscapes_image, args.coco_image)
    return built
