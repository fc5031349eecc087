"""The published checkpoints we convert: where each comes from, our config for it, its source's
published numbers (theirs, not measured here) and its parameter count.

``ZOO`` (deeplab2's Panoptic-DeepLab / Axial-DeepLab models), ``DETECTRON2`` (detectron2's
Panoptic-DeepLab models) and ``IMAGENET`` (deeplab2's ImageNet encoders) are data; ``tools/parity/``
and the tests iterate over them, and the README's model-zoo table lists them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEEPLAB2_URL = "https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/{}.tar.gz"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/PanopticDeepLab/{}"


@dataclass(frozen=True)
class ZooModel:
    """One published checkpoint.

    ``key`` names its reference fixtures (``tests/fixtures/deeplab2/{tiny,manifests}``);
    ``published`` holds the source's own numbers on the validation set (PQ, mIoU...);
    ``parameters`` our parameter count, equal to the source model's.
    """

    key: str
    source: str  # "deeplab2" or "detectron2"
    url: str
    config: str  # ours, relative to the repository root
    published: dict[str, float]
    parameters: int


def _deeplab2(key: str, archive: str, config: str, pq: float, parameters: int) -> ZooModel:
    return ZooModel(key, "deeplab2", DEEPLAB2_URL.format(archive), config, {"PQ": pq}, parameters)


_CS = "configs/cityscapes/deeplab2/"
_COCO = "configs/coco/deeplab2/"
ZOO: tuple[ZooModel, ...] = (
    _deeplab2(
        "axial_swidernet_1_1_1_os16_cityscapes",
        "axial_swidernet_1_1_1_os16_axial_deeplab_cityscapes_trainfine",
        _CS + "axial_swidernet_1_1_1_os16.yaml",
        66.1,
        137_844_454,
    ),
    _deeplab2(
        "axial_swidernet_1_1_3_os16_cityscapes",
        "axial_swidernet_1_1_3_os16_axial_deeplab_cityscapes_trainfine",
        _CS + "axial_swidernet_1_1_3_os16.yaml",
        67.1,
        395_380_582,
    ),
    _deeplab2(
        "axial_swidernet_1_1_4.5_os16_cityscapes",
        "axial_swidernet_1_1_4.5_os16_axial_deeplab_cityscapes_trainfine",
        _CS + "axial_swidernet_1_1_4.5_os16.yaml",
        68.0,
        571_791_974,
    ),
    _deeplab2(
        "max_deeplab_s_backbone_os16_cityscapes",
        "max_deeplab_s_backbone_os16_axial_deeplab_cityscapes_trainfine",
        _CS + "max_deeplab_s_backbone_os16.yaml",
        64.5,
        42_788_486,
    ),
    _deeplab2(
        "max_deeplab_l_backbone_os16_cityscapes",
        "max_deeplab_l_backbone_os16_axial_deeplab_cityscapes_trainfine",
        _CS + "max_deeplab_l_backbone_os16.yaml",
        66.3,
        176_560_454,
    ),
    _deeplab2(
        "resnet50_os32_cityscapes",
        "resnet50_os32_panoptic_deeplab_cityscapes_trainfine",
        _CS + "resnet50_os32.yaml",
        59.8,
        54_973_702,
    ),
    _deeplab2(
        "resnet50_beta_os32_cityscapes",
        "resnet50_beta_os32_panoptic_deeplab_cityscapes_trainfine",
        _CS + "resnet50_beta_os32.yaml",
        60.8,
        55_097_478,
    ),
    _deeplab2(
        "wide_resnet41_os16_cityscapes",
        "wide_resnet41_os16_panoptic_deeplab_cityscapes_trainfine",
        _CS + "wide_resnet41_os16.yaml",
        64.4,
        140_479_750,
    ),
    _deeplab2(
        "resnet50_os16_coco",
        "resnet50_os16_panoptic_deeplab_coco_train",
        _COCO + "resnet50_os16.yaml",
        35.1,
        55_003_257,
    ),
    _deeplab2(
        "resnet50_os32_coco",
        "resnet50_os32_panoptic_deeplab_coco_train_2",
        _COCO + "resnet50_os32.yaml",
        34.1,
        55_003_257,
    ),
    _deeplab2(
        "resnet50_beta_os16_coco",
        "resnet50beta_os16_panoptic_deeplab_coco_train",
        _COCO + "resnet50_beta_os16.yaml",
        35.2,
        55_127_033,
    ),
    _deeplab2(
        "resnet50_beta_os32_coco",
        "resnet50beta_os32_panoptic_deeplab_coco_train",
        _COCO + "resnet50_beta_os32.yaml",
        34.6,
        55_127_033,
    ),
)


_D2_CS = "Cityscapes-PanopticSegmentation/panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32"
DETECTRON2: tuple[ZooModel, ...] = (
    ZooModel(
        "cityscapes_r52_dc5",
        "detectron2",
        DETECTRON2_URL.format(_D2_CS + "/model_final_bd324a.pkl"),
        "configs/cityscapes/panoptic_deeplab_r52_dc5_d2.yaml",
        {"PQ": 60.3},
        59_770_166,
    ),
    ZooModel(
        "cityscapes_r52_dc5_dsconv",
        "detectron2",
        DETECTRON2_URL.format(_D2_CS + "_crop_512_1024_dsconv/model_final_23d03a.pkl"),
        "configs/cityscapes/panoptic_deeplab_r52_dc5_dsconv_d2.yaml",
        {"PQ": 60.3},
        30_271_350,
    ),
    ZooModel(
        "coco_r52_dc5_dsconv",
        "detectron2",
        DETECTRON2_URL.format(
            "COCO-PanopticSegmentation/panoptic_deeplab_R_52_os16_mg124_poly_200k_bs64_crop_640_640"
            "_coco_dsconv/model_final_5e6da2.pkl"
        ),
        "configs/coco/panoptic_deeplab_r52_dc5_dsconv_d2.yaml",
        {"PQ": 35.5},
        30_300_648,
    ),
)


def zoo_model_of_file(path: str | os.PathLike) -> ZooModel | None:
    """The ``ZOO``/``DETECTRON2`` entry whose download ``path`` is, by name: the ``.tar.gz`` or
    ``.pkl``, the folder it unpacks to, or a ``ckpt-N`` prefix in that folder; else None."""
    path = os.path.normpath(os.fspath(path))
    name = os.path.basename(path)
    if re.fullmatch(r"ckpt-\d+(\.index|\.data-\d{5}-of-\d{5})?", name):
        name = os.path.basename(os.path.dirname(path))
    for model in ZOO + DETECTRON2:
        download = os.path.basename(model.url)
        if name in (download, download.removesuffix(".tar.gz")):
            return model
    return None


def config_file_of(model: ZooModel) -> str | None:
    """The path of ``model``'s config in this checkout (or the working folder); None when it is
    not at hand (an installed package)."""
    checkout = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, model.config)
    return next((c for c in (checkout, model.config) if os.path.isfile(c)), None)


def differences_from_zoo_config(path: str | os.PathLike, cfg, opts=()) -> str:
    """A warning when ``path`` is a published checkpoint (``zoo_model_of_file``) and ``cfg``'s
    ``MODEL`` settings differ from those of its config here (with the same ``opts``): settings
    that no tensor shape shows (output stride, ASPP dilations and pooling, post-processing)
    would silently change the converted model. ``""`` when they agree, when ``path`` is not a
    published file, or when its config file is not at hand (an installed package)."""
    from ..config import load_config
    from ..config.checks import differing_model_keys

    model = zoo_model_of_file(path)
    if model is None:
        return ""
    config = config_file_of(model)
    if config is None:
        return ""
    differ = differing_model_keys(cfg, load_config(config, list(opts)))
    if not differ:
        return ""
    shown = ", ".join(f"{k} {mine!r} (there: {theirs!r})" for k, mine, theirs in differ[:4])
    more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
    return (
        f"warning: {os.fspath(path)} is the published {model.key}, whose config is "
        f"{model.config}; the config given differs in {shown}{more}. The tensors may fit either "
        "way, but the converted model will not compute the published one"
    )


def zoo_model(key: str) -> ZooModel:
    """The ``ZOO`` entry ``key``."""
    for model in ZOO + DETECTRON2:
        if model.key == key:
            return model
    raise KeyError(f"no zoo model {key!r}; known: {[m.key for m in ZOO]}")


@dataclass(frozen=True)
class ImageNetBackbone:
    """A deeplab2 ImageNet-pretrained encoder (``--backbone-only`` conversion, for fine-tuning
    through ``MODEL.WEIGHTS``): its fixture key, download and our variant row."""

    key: str
    url: str
    variant: str


def _imagenet(variant: str, archive: str, key: str = "") -> ImageNetBackbone:
    return ImageNetBackbone(key or f"imagenet_{variant}", DEEPLAB2_URL.format(archive), variant)


_STRONG = "_imagenet1k_strong_training_strategy"
IMAGENET: tuple[ImageNetBackbone, ...] = (
    _imagenet("resnet50_deeplab2", "resnet50" + _STRONG, "imagenet_resnet50"),
    _imagenet("resnet50_beta_deeplab2", "resnet50_beta" + _STRONG, "imagenet_resnet50_beta"),
    _imagenet("wide_resnet41", "wide_resnet41" + _STRONG),
    _imagenet("axial_swidernet_1_1_1", "axial_swidernet_1_1_1" + _STRONG),
    _imagenet("axial_swidernet_1_1_3", "axial_swidernet_1_1_3" + _STRONG),
    _imagenet("axial_swidernet_1_1_4.5", "axial_swidernet_1_1_4.5" + _STRONG),
    _imagenet("max_deeplab_s_backbone", "max_deeplab_s_backbone" + _STRONG),
    _imagenet("max_deeplab_l_backbone", "max_deeplab_l_backbone" + _STRONG),
)
