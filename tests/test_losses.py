"""Losses on hand-worked toy cases (arithmetic in the comments)."""

import math

import pytest
import torch

from axial_deeplab.modeling.losses import (
    PanopticDeepLabLoss,
    hard_pixel_cross_entropy,
    weighted_l1,
    weighted_mse,
)

LN2, LN4 = math.log(2), math.log(4)


def _semantic_toy():
    # 10 pixels, 2 classes, [1, 2, 2, 5]. Logits (0, 0) give CE ln 2; logits (ln 3, 0) with
    # target 1 give -log(1 / (3 + 1)) = ln 4; with target 0, -log(3/4) = ln(4/3).
    logits = torch.zeros(1, 2, 2, 5)
    logits[0, 0, 0, 0] = math.log(3)  # pixel (0, 0), target 1 -> ln 4
    logits[0, 0, 0, 1] = math.log(3)  # pixel (0, 1), target 0 -> ln 4/3
    target = torch.zeros(1, 2, 5, dtype=torch.long)
    target[0, 0, 0] = 1
    target[0, 1, 4] = 255  # ignored -> 0
    return logits, target


def test_hard_pixel_mining_top_20_percent():
    logits, target = _semantic_toy()
    # k = int(0.2 * 10) = 2 largest of {ln4, ln4/3, 7 x ln2, 0}: ln 4 and ln 2
    loss = hard_pixel_cross_entropy(logits, target, top_k_percent=0.2)
    assert loss.item() == pytest.approx((LN4 + LN2) / 2)
    # all pixels: (ln4 + ln(4/3) + 7 ln2 + 0) / 10 (the ignored pixel counts as a zero)
    full = hard_pixel_cross_entropy(logits, target, top_k_percent=1.0)
    assert full.item() == pytest.approx((LN4 + math.log(4 / 3) + 7 * LN2) / 10)


def test_hard_pixel_mining_uses_weights_before_ranking():
    logits, target = _semantic_toy()
    weights = torch.ones(1, 2, 5)
    weights[0, 1, 0] = 3.0  # a ln 2 pixel becomes 3 ln 2 = 2.08 > ln 4 = 1.39
    loss = hard_pixel_cross_entropy(logits, target, weights, top_k_percent=0.2)
    assert loss.item() == pytest.approx((3 * LN2 + LN4) / 2)


def test_center_mse_normalised_by_weight_sum():
    pred = torch.tensor([[[[1.0, 0.5], [0.0, 2.0]]]])  # [1, 1, 2, 2]
    target = torch.tensor([[[[0.0, 0.5], [1.0, 0.0]]]])
    weights = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    # squared errors 1, 0, 1, (4 masked out): (1 + 0 + 1) / 3
    assert weighted_mse(pred, target, weights).item() == pytest.approx(2 / 3)


def test_offset_l1_is_mean_over_both_components():
    pred = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[3.0, 10.0]], [[-1.0, 10.0]]]])  # (dy, dx) per pixel
    weights = torch.tensor([[[[1.0, 0.0]]]])  # only pixel 0
    # |3| + |-1| = 4 over 1 pixel x 2 components = 2
    assert weighted_l1(pred, target, weights).item() == pytest.approx(2.0)


def test_zero_weights_give_zero_loss_with_gradient():
    pred = torch.ones(1, 2, 2, 2, requires_grad=True)
    loss = weighted_l1(pred, torch.zeros_like(pred), torch.zeros(1, 1, 2, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_panoptic_loss_applies_weights():
    logits, target = _semantic_toy()
    outputs = {
        "semantic": logits,
        "center": torch.full((1, 1, 2, 5), 0.5),
        "offset": torch.ones(1, 2, 2, 5),
    }
    targets = {
        "sem_seg": target,
        "center": torch.zeros(1, 1, 2, 5),
        "center_weights": torch.ones(1, 1, 2, 5),
        "offset": torch.zeros(1, 2, 2, 5),
        "offset_weights": torch.ones(1, 1, 2, 5),
    }
    losses = PanopticDeepLabLoss()(outputs, targets)
    assert losses["loss_sem_seg"].item() == pytest.approx((LN4 + LN2) / 2)
    assert losses["loss_center"].item() == pytest.approx(200 * 0.25)  # 0.5^2 everywhere
    assert losses["loss_offset"].item() == pytest.approx(0.01 * 1.0)  # |1| everywhere
