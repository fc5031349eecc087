"""The whole prediction of one image as one module, and its export to torch.export and ONNX.

:class:`PanopticPipeline` maps an ``[H, W, 3]`` uint8 RGB image (any ``H``, ``W``) to the
panoptic map, in one graph: conversion to float ``[1, 3, H, W]``, the model (normalisation with
its pixel mean and std, backbone, decoders, heads, bilinear upsampling to ``H x W``), softmax,
argmax, centre NMS and top-k, grouping, majority vote and stuff area. Outputs, in this order
(:data:`OUTPUT_NAMES`):

- ``panoptic`` ``[H, W]`` int64: ``class * label_divisor + instance`` (instances from 1 per class,
  0 for stuff), ``-1`` for void;
- ``centers`` ``[top_k, 2]`` int64 ``(y, x)``: the kept centres in row-major order, then ``-1``
  rows;
- ``semantic_prob`` ``[K, H, W]``, ``center`` ``[1, H, W]`` and ``offset`` ``[2, H, W]`` ``(dy, dx)``
  float32: the raw predictions the panoptic map was made from.

The networks take any input size (strided convolutions round up and the outputs are resized back
to ``H x W``). A model evaluated with ``TEST.PAD_TO_CROP`` (``pad_to``) gets its input padded at the
bottom and right to at least ``INPUT.CROP.SIZE`` with the pixel mean, and its outputs cropped back
to ``H x W``, in the graph, as evaluation and ``engine.inference.Predictor`` do
(``engine.evaluate.PaddedModel``). Test-time augmentation is not in the graph.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from ..config import ConfigError
from ..engine.evaluate import VOID_LABEL, PostProcessing
from ..engine.inference import InferenceMetadata
from ..utils.atomic import atomic_write
from .postprocessing import panoptic_from_outputs, thing_table
from .tracing import traceable_model

OUTPUT_NAMES = ("panoptic", "centers", "semantic_prob", "center", "offset")
INPUT_NAME = "image"
MIN_SIZE = 33  # smallest height and width the exported programs accept (the model: 17)
MAX_SIZE = 4096  # largest height and width the exported programs accept


def class_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes of ``logits [N, K, H, W]``. In an exported graph it is written out
    as max, subtract, exp, sum and divide: ONNX Runtime's ``Softmax`` took 0.77 s on ``[1, 19,
    1025, 2049]`` against 0.06 s for these ops, which agree with ``torch.softmax`` within 1.2e-7
    (ONNX Runtime's own within 3.6e-7)."""
    if not torch.compiler.is_exporting():
        return torch.softmax(logits, dim=1)
    exp = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return exp / exp.sum(dim=1, keepdim=True)


def pad_bottom_right(x: torch.Tensor, size: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """``[1, C, H, W]`` padded at the bottom and right to ``(max(H, h), max(W, w))`` with ``fill
    [C]``: the values of ``engine.evaluate.pad_images``, written with symbolic sizes (padding by
    zero where the image is already large enough), so that one graph serves every input size."""
    height, width = x.shape[-2:]
    pad_h, pad_w = torch.sym_max(size[0] - height, 0), torch.sym_max(size[1] - width, 0)
    padded = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))  # zeros, replaced below
    rows = torch.arange(padded.shape[2], device=x.device) < height
    cols = torch.arange(padded.shape[3], device=x.device) < width
    inside = rows[:, None] & cols[None, :]  # [H', W'] the image's pixels
    return torch.where(inside, padded, fill.view(1, -1, 1, 1))


class PanopticPipeline(nn.Module):
    """Image ``[H, W, 3]`` uint8 RGB -> :data:`OUTPUT_NAMES` (see the module docstring).

    Args:
        model: maps ``[N, 3, H, W]`` 0-255 RGB to ``{"semantic", "center", "offset"}`` at input
            size (``PanopticDeepLab``); it is set to eval mode.
        metadata: thing ids and label divisor.
        postprocessing: threshold, NMS kernel, top-k and stuff area.
        num_classes: the model's number of semantic classes.
        pad_to: ``(h, w)``: pad the input at the bottom and right to at least this size with
            ``pad_value`` (per channel, 0-255 RGB) before the model, and crop its outputs back
            (``TEST.PAD_TO_CROP``); None: the model sees the image as it comes.
        test_size: ``(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, recorded in the description:
            ``export.runtime.ExportedPredictor`` resizes images to it on the host, as
            ``Predictor`` does (the graph runs at whatever size it is given).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        metadata: InferenceMetadata,
        postprocessing: PostProcessing,
        num_classes: int,
        pad_to: tuple[int, int] | None = None,
        pad_value: Sequence[float] = (0.0, 0.0, 0.0),
        test_size: tuple[int, int] | None = None,
    ) -> None:
        if postprocessing.void_class >= 0:
            raise ConfigError(
                f"export: models with a void output channel (MODEL.SEM_SEG_HEAD.VOID_CLASS "
                f"{postprocessing.void_class}, e.g. converted deeplab2 COCO models) are not "
                "supported yet; run them with tools/infer.py or tools/train_net.py --eval-only"
            )
        super().__init__()
        self.model = model.eval()
        self.metadata = metadata
        self.postprocessing = postprocessing
        self.register_buffer("is_thing", thing_table(metadata.thing_ids, num_classes), False)
        self.pad_to = None if pad_to is None else (int(pad_to[0]), int(pad_to[1]))
        self.test_size = None if test_size is None else (int(test_size[0]), int(test_size[1]))
        self.register_buffer("pad_value", torch.tensor(pad_value, dtype=torch.float32), False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prob, center, offset = self.network(image)
        return (*self.panoptic(prob, center, offset), prob, center, offset)

    def network(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[H, W, 3]`` uint8 -> ``semantic_prob [K, H, W]``, ``center [1, H, W]``,
        ``offset [2, H, W]`` (the model, then a softmax)."""
        if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"image: expected [H, W, 3] uint8 RGB, got {list(image.shape)} {image.dtype}"
            )
        height, width = image.shape[:2]
        x = image.permute(2, 0, 1)[None].float()  # [H, W, 3] -> [1, 3, H, W]
        if self.pad_to is not None:
            x = pad_bottom_right(x, self.pad_to, self.pad_value)
        out = self.model(x)
        if self.pad_to is not None:
            out = {k: v[..., :height, :width] for k, v in out.items()}
        prob = class_softmax(out["semantic"].float())[0]  # [K, H, W]
        return prob, out["center"].float()[0], out["offset"].float()[0]

    def panoptic(
        self, prob: torch.Tensor, center: torch.Tensor, offset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-processing: ``panoptic [H, W]`` and ``centers [top_k, 2]`` of the raw outputs."""
        post = self.postprocessing
        return panoptic_from_outputs(
            prob.argmax(0),
            center,
            offset,
            is_thing=self.is_thing,
            label_divisor=self.metadata.label_divisor,
            stuff_area=post.stuff_area,
            void_label=VOID_LABEL,
            threshold=post.threshold,
            nms_kernel=post.nms_kernel,
            top_k=post.top_k,
        )

    def description(self) -> dict:
        """What a reader of the exported file needs besides the graph (stored beside it)."""
        meta = self.metadata
        return {
            "format_version": 1,
            "input": {"name": INPUT_NAME, "layout": "[H, W, 3] uint8 RGB"},
            "outputs": list(OUTPUT_NAMES),
            "metadata": {
                "class_names": list(meta.class_names),
                "thing_ids": list(meta.thing_ids),
                "label_divisor": meta.label_divisor,
                "class_colors": None
                if meta.class_colors is None
                else [list(c) for c in meta.class_colors],
            },  # fmt: skip
            "postprocessing": asdict(self.postprocessing),
            "pad_to": None if self.pad_to is None else list(self.pad_to),
            "test_size": None if self.test_size is None else list(self.test_size),
            "align_corners": bool(getattr(self.model, "align_corners", True)),
            "void_label": VOID_LABEL,
        }


def example_image(height: int = 64, width: int = 80) -> torch.Tensor:
    """A deterministic ``[H, W, 3]`` uint8 image to trace with."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen)


def _dynamic_shapes() -> tuple[dict, ...]:
    dim = torch.export.Dim.DYNAMIC(min=MIN_SIZE, max=MAX_SIZE)
    return ({0: dim, 1: dim},)


def export_program(pipeline: PanopticPipeline) -> torch.export.ExportedProgram:
    """``torch.export`` of ``pipeline`` with dynamic height and width."""
    with torch.no_grad(), traceable_model():
        return torch.export.export(
            pipeline.eval(), (example_image(),), dynamic_shapes=_dynamic_shapes(), strict=False
        )


DESCRIPTION_FILE = "axial_deeplab.json"  # name of the description inside a .pt2 archive


def save_program(
    pipeline: PanopticPipeline,
    path: str | os.PathLike,
    *,
    program: torch.export.ExportedProgram | None = None,
) -> None:
    """Write a ``.pt2`` archive (with the description as an extra file) atomically; ``program``:
    ``export_program(pipeline)`` when already at hand. The temporary file beside ``path`` ends in
    ``.pt2`` (torch warns about other names) and is written through an open file, so the root
    folder inside the archive is torch's default (``archive``), not the temporary name."""
    program = program or export_program(pipeline)
    extra = {DESCRIPTION_FILE: json.dumps(pipeline.description())}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:
            torch.export.save(program, file, extra_files=extra)

    atomic_write(os.fspath(path), ".pt2", write)


def save_onnx(
    pipeline: PanopticPipeline,
    path: str | os.PathLike,
    *,
    program: torch.export.ExportedProgram | None = None,
    optimize: bool = True,
) -> None:
    """Convert with the dynamo-based ONNX exporter and write ``path`` atomically; the description
    goes into the model's ``metadata_props`` (key ``axial_deeplab``). ``program``: as
    :func:`save_program`; ``optimize``: the exporter's graph optimisation (ONNX Runtime optimises
    the graph again when it loads it)."""
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install -e '.[export]'"
        ) from None

    onnx_program = torch.onnx.export(
        program or export_program(pipeline),
        (example_image(),),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamo=True,
        optimize=optimize,
        verbose=False,
    )
    model = onnx_program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "axial_deeplab", json.dumps(pipeline.description())
    atomic_write(os.fspath(path), ".onnx", lambda tmp: onnx.save(model, tmp))
