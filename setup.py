"""Packaging for axial-deeplab. Install with ``pip install -e . -c requirements/constraints.txt``."""

import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent


def optional_c_module(name: str, depends: tuple[str, ...] = ()) -> Extension:
    """``axial_deeplab.<name>`` from ``axial_deeplab/<name>.c`` (which includes ``depends``).
    Optional: where it cannot be compiled (no C compiler), pip says so and the package runs its
    Python path instead."""
    return Extension(
        f"axial_deeplab.{name}",
        [f"axial_deeplab/{name.replace('.', '/')}.c"],
        depends=list(depends),
        extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
        optional=True,
    )


# The PQ command's PNG reader (evaluation/runs.py; numpy path without it, same results) and the
# compiled axial attention, for inference (layers/fused_eval.py) and with its backward pass
# (layers/fused_train.py): x86-64 with AVX2, chosen at run time; the PyTorch path without them.
SIMD = ("axial_deeplab/layers/_fused_simd.h",)
C_MODULES = [
    optional_c_module("evaluation._png_runs"),
    optional_c_module("layers._fused_eval", SIMD),
    optional_c_module("layers._fused_train", SIMD),
]

setup(
    name="axial_deeplab",
    version="0.1.0",
    description="Axial-DeepLab: stand-alone axial attention for panoptic segmentation, in PyTorch",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["axial_deeplab", "axial_deeplab.*"]),
    ext_modules=C_MODULES,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "pyyaml",
        "yacs",
        "tqdm",
        "opencv-python-headless",
        "pyspng",  # libspng: decodes PNG photos, and panoptic PNGs that kornia_rs refuses
        "kornia-rs",  # Rust png crate: the fastest panoptic PNG decoder measured (data/panoptic_png.py)
        "deflate",  # libdeflate: inflates panoptic PNGs, checking Adler-32 (evaluation/runs.py)
        "pycocotools",
        "scipy",
    ],
    extras_require={
        # The detectron2 plugin. detectron2 itself is not on PyPI: install it from its git
        # repository after this extra (README, "detectron2 plugin"); these are its pinned
        # pure-Python dependencies, resolved here from the registry.
        "d2": ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10"],
        # tools/export.py (torch.export needs nothing more), its ONNX format and
        # tools/infer.py --backend onnxruntime.
        "export": ["onnx", "onnxscript", "onnxruntime"],
        # Reading deeplab2 checkpoints with TensorFlow's own reader (tools/convert_deeplab2.py);
        # without it the built-in reader is used.
        "deeplab2": ["tensorflow-cpu"],
        "cityscapes": ["cityscapesscripts"],
        # playwright drives the system Chromium in the demo page's browser test (.ci/run installs
        # Chromium from the OS packages when missing).
        "dev": ["pytest", "ruff", "black", "cityscapesscripts", "tensorboard", "playwright"],
        "slurm": ["submitit>=1.5"],  # tools/train_net.py --slurm
    },
    entry_points={
        "console_scripts": [
            "axial-deeplab-train=axial_deeplab.engine.train_net:main",
            "axial-deeplab-infer=axial_deeplab.engine.infer_net:main",
            "axial-deeplab-eval-pq=axial_deeplab.evaluation.panoptic:main",
            "axial-deeplab-quickstart=axial_deeplab.quickstart:main",
            "axial-deeplab-demo=axial_deeplab.demo.server:main",
            "axial-deeplab-stats=axial_deeplab.utils.model_stats:main",
            "axial-deeplab-convert=axial_deeplab.checkpoint.authors:main",
            "axial-deeplab-convert-deeplab2=axial_deeplab.checkpoint.convert_deeplab2:main",
            "axial-deeplab-convert-detectron2=axial_deeplab.checkpoint.detectron2:main",
            "axial-deeplab-export=axial_deeplab.export.cli:main",
        ]
    },
)
