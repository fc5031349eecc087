"""Optimizers, weight-decay rule and the poly-with-warm-up schedule."""

import math

import pytest
import torch
from torch import nn

from axial_deeplab.engine.optim import (
    Lookahead,
    build_lr_scheduler,
    build_optimizer,
    param_groups,
    poly_warmup_factor,
)
from axial_deeplab.layers import AxialAttention


def test_decay_rule_exempts_norms_biases_and_relative_tables():
    model = nn.Sequential(
        nn.Conv2d(16, 16, 1, bias=True), AxialAttention(16, 16, axis="height", span=3)
    )
    decay, no_decay = param_groups(model, weight_decay=1e-4)
    decayed = {id(p) for p in decay["params"]}
    named = dict(model.named_parameters())
    # Only the two conv weights (the 1x1 conv and the q/k/v projection) decay.
    assert decayed == {id(named["0.weight"]), id(named["1.qkv_proj.weight"])}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)


def test_poly_warmup_factor_worked_values():
    kw = dict(max_iter=100, power=0.9, warmup_iters=10, warmup_factor=0.1)
    # Iteration 0: warm-up starts at 0.1 (decay factor 1).
    assert poly_warmup_factor(0, **kw) == pytest.approx(0.1)
    # Iteration 5: halfway through warm-up: (0.1 * 0.5 + 0.5) * (1 - 0.05) ** 0.9.
    assert poly_warmup_factor(5, **kw) == pytest.approx(0.55 * 0.95**0.9)
    # Iteration 50 (after warm-up): 0.5 ** 0.9; the end reaches zero.
    assert poly_warmup_factor(50, **kw) == pytest.approx(0.5**0.9)
    assert poly_warmup_factor(100, **kw) == 0.0


def test_lookahead_interpolates_every_k_steps():
    # Plain SGD with lr 1 on loss = w (gradient 1): each fast step subtracts 1.
    w = nn.Parameter(torch.zeros(1))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=2, alpha=0.5)
    for _ in range(2):
        opt.zero_grad()
        w.sum().backward()
        opt.step()
    # Fast weights reached -2 after k=2 steps; slow = 0 + 0.5 * (-2 - 0) = -1; fast reset to slow.
    assert w.item() == pytest.approx(-1.0)
    state = opt.state_dict()
    w2 = nn.Parameter(w.detach().clone())
    opt2 = Lookahead(torch.optim.SGD([w2], lr=1.0), k=2, alpha=0.5)
    opt2.load_state_dict(state)
    assert opt2.state[w2]["slow"].item() == pytest.approx(-1.0)


def test_scheduler_drives_lookahead_lr():
    model = nn.Linear(2, 2)
    opt = build_optimizer(param_groups(model, 0.0), name="radam_lookahead", lr=0.2)
    sched = build_lr_scheduler(opt, max_iter=4, power=1.0)
    for _ in range(2):
        opt.step()
        sched.step()
    # Linear decay (power 1): 0.2 * (1 - 2 / 4) on both groups, seen by the base RAdam.
    assert all(math.isclose(g["lr"], 0.1) for g in opt.base.param_groups)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*'adamw2'"):
        build_optimizer(param_groups(nn.Linear(1, 1), 0.0), name="adamw2", lr=0.1)
