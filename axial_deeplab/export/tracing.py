"""Shape-generic stand-ins for the two places of the eager model that plan in Python.

Traced with a symbolic height and width, the eager code would pin them to the example's values:
the axial attention core plans its blocks and chunks from the axis length (traced without
autograd, the layer itself runs :mod:`axial_deeplab.layers.attention_graph` instead, as under
``torch.compile``), and ``upsample_offsets`` computes its
rescaling factors as Python floats of the sizes (:func:`offset_scales` computes the same factors
as tensors: the float64 quotient of the sizes, rounded to float32 as ``new_tensor`` rounds the
Python float). The attention's projection is also swapped (:func:`project`): the eager one
multiplies by a weight expanded over the lines, which a graph materialises. :func:`traceable_model`
swaps them in for the duration of a trace; the module functions are restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F

from ..layers import axial_attention
from ..modeling import panoptic_deeplab


def offset_scales(offsets: torch.Tensor, size, *, align_corners: bool) -> torch.Tensor:
    """``[1, 2, 1, 1]`` float32 ``(scale_y, scale_x)``: ``panoptic_deeplab.offset_scale`` of both
    axes of ``offsets`` ``[N, 2, h, w]`` resized to ``size``, without leaving tensors."""
    src = offsets.new_ones((2,), dtype=torch.float64)
    dst = offsets.new_ones((2,), dtype=torch.float64)
    src = src * torch.stack([src[0] * offsets.shape[2], src[1] * offsets.shape[3]])  # [2]
    dst = dst * torch.stack([dst[0] * size[0], dst[1] * size[1]])  # [2]
    if align_corners:
        scale = torch.where(src > 1, (dst - 1) / (src - 1).clamp(min=1), dst)
    else:
        scale = dst / src
    return scale.float().view(1, 2, 1, 1)


def upsample_offsets(offsets: torch.Tensor, size, *, align_corners: bool) -> torch.Tensor:
    """Drop-in for ``panoptic_deeplab.upsample_offsets`` with tensor scale factors."""
    resized = panoptic_deeplab.upsample(offsets, size, align_corners=align_corners)
    return resized * offset_scales(offsets, size, align_corners=align_corners)


def project(
    lines: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor | None, sizes: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """Drop-in for ``axial_attention.project``: one 1-D convolution per channel group. In ONNX
    Runtime the eager version's expanded weight is a copy (``[B, C, C_in]``: 1 GB for a stage-4
    layer of Axial-DeepLab-L at 1025 x 2049) and its split copies the output twice."""
    parts, start = [], 0
    for size in sizes:
        part = slice(start, start + size)
        parts.append(F.conv1d(lines, weight[part, :, None], None if shift is None else shift[part]))
        start += size
    return tuple(parts)


@contextlib.contextmanager
def traceable_model() -> Iterator[None]:
    """Within the block, the model runs the shape-generic stand-ins (for ``torch.export``)."""
    saved = axial_attention.project, panoptic_deeplab.upsample_offsets
    axial_attention.project, panoptic_deeplab.upsample_offsets = project, upsample_offsets
    try:
        # Sizes read as at least 2 in the shape checks of views and matmuls: the block count of
        # ``attend_windowed`` (a quotient of the axis length, at least 2) is otherwise pinned by
        # them (divisibility and size-1 tests that the shape solver cannot decide).
        with fx_config.patch(backed_size_oblivious=True):
            yield
    finally:
        axial_attention.project, panoptic_deeplab.upsample_offsets = saved
