"""detectron2 plugin: Axial-ResNet and Axial-DeepLab inside detectron2 projects.

The only package that imports detectron2 (not on PyPI; see README, "detectron2 plugin").
Importing it registers our backbones (``axial_resnet``, ``resnet``) in ``BACKBONE_REGISTRY`` and
``AxialDeepLab`` in ``META_ARCH_REGISTRY``. Data sets are registered on request
(:func:`register_datasets`), since their paths come from the config::

    from detectron2.modeling import build_model
    from axial_deeplab.d2 import load_config, register_datasets

    cfg = load_config("configs/coco/axial_deeplab_s_641.yaml")
    register_datasets(cfg)
    model = build_model(cfg)
"""

try:
    import detectron2  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "axial_deeplab.d2 needs detectron2, which is not on PyPI: install it from its git "
        "repository, e.g. pip install --no-build-isolation "
        "'git+https://github.com/facebookresearch/detectron2.git@c69939aa' "
        "(see README, 'detectron2 plugin')"
    ) from exc

from .backbone import as_d2_backbone, register_backbones
from .config import add_axial_deeplab_config, load_config
from .data import AxialDeepLabDatasetMapper, register_catalog, register_datasets
from .evaluation import (
    MaskAPEvaluator,
    PanopticQualityEvaluator,
    SemanticIoUEvaluator,
    build_evaluator,
)
from .meta_arch import AxialDeepLab

register_backbones()

__all__ = [
    "AxialDeepLab",
    "AxialDeepLabDatasetMapper",
    "MaskAPEvaluator",
    "PanopticQualityEvaluator",
    "SemanticIoUEvaluator",
    "add_axial_deeplab_config",
    "as_d2_backbone",
    "build_evaluator",
    "load_config",
    "register_catalog",
    "register_datasets",
]
