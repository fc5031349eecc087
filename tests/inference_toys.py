"""Toy inputs and a toy model shared by the inference tests (``test_inference*.py``): random
images, PNG and video writers, metadata and post-processing for 3 classes, and an exactly
flip-equivariant model."""

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from axial_deeplab.engine.evaluate import PostProcessing
from axial_deeplab.engine.inference import InferenceMetadata

META = InferenceMetadata(("sky", "car", "person"), thing_ids=(1, 2))
POST = PostProcessing(stuff_area=1, threshold=0.1, nms_kernel=3, top_k=200)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 7.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame[..., ::-1].copy())
    writer.release()


class FlipEquivariantModel(nn.Module):
    """Exactly flip-equivariant: 1x1 convs of a 3x3 mean (symmetric) for semantic, centre and dy;
    dx from the antisymmetric kernel [-1, 0, 1] along x, which changes sign under a flip."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(5, 3, 1, 1, generator=g))  # 3 sem, centre, dy
        self.register_buffer("dx_kernel", torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))

    def forward(self, x):
        x = x / 255.0
        smooth = F.avg_pool2d(x, 3, stride=1, padding=1)
        out = F.conv2d(smooth, self.weight)  # [N, 5, H, W]
        gray = x.mean(1, keepdim=True)  # [N, 1, H, W]
        dx = 20 * F.conv2d(gray, self.dx_kernel, padding=(0, 1))
        return {
            "semantic": 4 * out[:, :3],
            "center": torch.sigmoid(4 * out[:, 3:4]),
            "offset": torch.cat([5 * out[:, 4:5], dx], dim=1),
        }
