"""Inference: TTA math (undoing a pass, multi-scale and flip averages) by hand and on an exactly
flip-equivariant model."""

import math

import cv2
import numpy as np
import pytest
import torch
from inference_toys import META, POST, FlipEquivariantModel, _image
from torch import nn

from axial_deeplab.engine.inference import Predictor, TestTimeAugmentation, run_with_tta, undo_pass

# ------------------------------------------------------------------------------------------------
# TTA math
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "align_corners, dy, dx",
    # 4 x 6 -> 8 x 12. Without align_corners distances scale by 8/4 and 12/6; with it the corner
    # pixel centres map onto each other: (8-1)/(4-1) = 7/3 and (12-1)/(6-1) = 11/5.
    [(False, 1.0 * 2, 2.0 * 2), (True, 1.0 * 7 / 3, 2.0 * 11 / 5)],
)
def test_undo_pass_rescales_and_flips_offsets_by_hand(align_corners, dy, dx):
    offsets = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 4, 6)  # (dy, dx) = (1, 2)
    outs = {"semantic": torch.zeros(1, 3, 4, 6), "center": torch.zeros(1, 1, 4, 6)}
    plain = undo_pass(
        {**outs, "offset": offsets}, (8, 12), flipped=False, align_corners=align_corners
    )
    assert torch.allclose(plain["offset"][0, 0], torch.full((8, 12), dy))
    assert torch.allclose(plain["offset"][0, 1], torch.full((8, 12), dx))
    assert torch.allclose(plain["semantic"], torch.full((1, 3, 8, 12), 1 / 3))  # softmax of zeros
    flipped = undo_pass({**outs, "offset": offsets}, (8, 12), flipped=True, align_corners=True)
    assert torch.allclose(flipped["offset"][0, 1], torch.full((8, 12), -2.0 * 11 / 5))  # dx < 0
    assert torch.allclose(flipped["offset"][0, 0], torch.full((8, 12), 1.0 * 7 / 3))  # dy kept


def test_undo_pass_flip_mirrors_maps_by_hand():
    # One row: center [0, 1, 2, 3]; dx [10, 20, 30, 40]. In the original image, column x is
    # column 3 - x of the flipped pass, and a vector pointing right there points left here.
    outs = {
        "semantic": torch.tensor([[0.0, 0, 0, 5], [0, 0, 0, 0]]).view(1, 2, 1, 4),
        "center": torch.arange(4.0).view(1, 1, 1, 4),
        "offset": torch.stack([torch.ones(4), torch.tensor([10.0, 20, 30, 40])]).view(1, 2, 1, 4),
    }
    got = undo_pass(outs, (1, 4), flipped=True, align_corners=True)
    assert got["center"].flatten().tolist() == [3, 2, 1, 0]
    assert got["offset"][0, 1, 0].tolist() == [-40, -30, -20, -10]
    assert got["offset"][0, 0, 0].tolist() == [1, 1, 1, 1]
    p = math.exp(5) / (math.exp(5) + 1)  # class 0 wins where its logit is 5: now at column 0
    assert got["semantic"][0, 0, 0].tolist() == pytest.approx([p, 0.5, 0.5, 0.5])


class ConstantModel(nn.Module):
    """Outputs that do not depend on the input: offsets (1, 2) in the pass's own pixels."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        n, _, h, w = x.shape
        self.sizes.append((h, w))
        offset = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(n, 2, h, w)
        return {
            "semantic": torch.zeros(n, 3, h, w),
            "center": torch.ones(n, 1, h, w),
            "offset": offset,
        }


@pytest.mark.parametrize("align_corners", [False, True])
def test_multiscale_offsets_average_of_rescaled_passes(align_corners):
    model = ConstantModel(align_corners)
    tta = TestTimeAugmentation(scales=(0.5, 1.0), flip=True)
    out = run_with_tta(model, torch.zeros(1, 3, 32, 48), tta, align_corners=align_corners)
    # passes: 16 x 24 (plain, flipped), 32 x 48 (plain, flipped)
    assert model.sizes == [(16, 24), (16, 24), (32, 48), (32, 48)]
    # dy: (2 * s + 2 * 1) / 4 with s the 16 -> 32 factor; dx: plain +, flipped - -> cancel to 0
    s = 31 / 15 if align_corners else 2.0
    assert torch.allclose(out["offset"][0, 0], torch.full((32, 48), (s + 1) / 2))
    assert torch.allclose(out["offset"][0, 1], torch.zeros(32, 48), atol=1e-6)
    no_flip = run_with_tta(
        model,
        torch.zeros(1, 3, 32, 48),
        TestTimeAugmentation((0.5, 1.0)),
        align_corners=align_corners,
    )
    sx = 47 / 23 if align_corners else 2.0
    assert torch.allclose(no_flip["offset"][0, 1], torch.full((32, 48), 2.0 * (sx + 1) / 2))
    assert torch.allclose(out["center"], torch.ones(1, 1, 32, 48))


def test_flip_tta_of_flip_equivariant_model_equals_no_tta():
    image = cv2.GaussianBlur(_image(33, 47, seed=3), (7, 7), 2)  # smooth: several segments
    model = FlipEquivariantModel()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    # The check is not vacuous: the image is not symmetric and dx does change sign.
    with torch.no_grad():
        a, b = model(x), model(x.flip(-1))
    assert not torch.allclose(a["offset"][:, 1], b["offset"][:, 1].flip(-1), atol=1e-3)
    assert torch.allclose(a["offset"][:, 1], -b["offset"][:, 1].flip(-1), atol=1e-5)
    plain = Predictor(model, metadata=META, postprocessing=POST)
    flip = Predictor(model, metadata=META, postprocessing=POST, tta=TestTimeAugmentation(flip=True))
    raw_plain, raw_flip = plain.raw(image), flip.raw(image)
    for key in ("semantic", "center", "offset"):
        assert torch.allclose(raw_plain[key], raw_flip[key], atol=1e-5), key
    got_plain, got_flip = plain.predict(image), flip.predict(image)
    assert len(got_plain["segments_info"]) >= 3
    np.testing.assert_array_equal(got_plain["panoptic"], got_flip["panoptic"])
