"""Optimizers and learning-rate schedules of the Axial-DeepLab recipes.

- Adam (deeplab2's Panoptic- and Axial-DeepLab configs, and all of ours), and RAdam + Lookahead
  (Zhang et al. 2019: every ``k`` fast steps, the slow weights move ``alpha`` of the way towards
  the fast ones and the fast weights restart from them), which no config here uses.
- Poly decay ``(1 - t / T) ** power`` after a linear warm-up from ``warmup_factor``.
- Weight decay by an explicit rule: ``decays(name, param)`` says which parameters decay. The default
  rule exempts normalization weights and biases, all biases, and relative-position tables.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def default_decay_rule(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """True when ``param`` (called ``name`` inside ``module``) gets weight decay."""
    if isinstance(module, NORM_TYPES) or name == "bias" or param.dim() <= 1:
        return False
    return not name.endswith("_rel")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    rule: Callable[[nn.Module, str, nn.Parameter], bool] = default_decay_rule,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group by ``rule``."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (decay if rule(module, name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Lookahead(torch.optim.Optimizer):
    """Lookahead around any optimizer: slow weights track the fast ones every ``k`` steps."""

    def __init__(self, base: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 < alpha <= 1, got k={k}, alpha={alpha}")
        self.base = base
        self.k = k
        self.alpha = alpha
        self._step_count_la = 0
        self.defaults = base.defaults
        self.state: dict = defaultdict(dict)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["slow"] = p.detach().clone()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The base optimizer's groups (also after its ``load_state_dict`` replaces them), so that
        LR schedulers act on the fast optimizer."""
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base.param_groups = value

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = self.base.step(closure)
        self._step_count_la += 1
        if self._step_count_la % self.k == 0:
            for group in self.param_groups:
                for p in group["params"]:
                    slow = self.state[p]["slow"]
                    slow.add_(p - slow, alpha=self.alpha)
                    p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        params = [p for g in self.param_groups for p in g["params"]]
        return {
            "base": self.base.state_dict(),
            "slow": [self.state[p]["slow"] for p in params],
            "steps": self._step_count_la,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        params = [p for g in self.param_groups for p in g["params"]]
        if len(params) != len(state_dict["slow"]):
            raise ValueError(
                f"Lookahead state has {len(state_dict['slow'])} slow tensors, model has {len(params)}"
            )
        for p, slow in zip(params, state_dict["slow"]):
            self.state[p]["slow"] = slow.to(p.device, p.dtype).clone()
        self._step_count_la = int(state_dict["steps"])


OPTIMIZERS = ("adam", "radam_lookahead", "sgd")


def build_optimizer(
    params: Iterable[dict[str, Any]],
    *,
    name: str,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    lookahead_k: int = 6,
    lookahead_alpha: float = 0.5,
) -> torch.optim.Optimizer:
    """``name``: one of ``OPTIMIZERS``; ``params``: groups from ``param_groups``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if name == "radam_lookahead":
        base = torch.optim.RAdam(params, lr=lr, betas=betas)
        return Lookahead(base, k=lookahead_k, alpha=lookahead_alpha)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {name!r}")


def poly_warmup_factor(
    iteration: int, *, max_iter: int, power: float, warmup_iters: int, warmup_factor: float
) -> float:
    """LR multiplier at ``iteration``: linear warm-up from ``warmup_factor``, then poly decay."""
    decay = max(0.0, 1.0 - iteration / max_iter) ** power
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        return decay * (warmup_factor * (1.0 - alpha) + alpha)
    return decay


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    max_iter: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly schedule with linear warm-up, stepped once per iteration."""

    def factor(it: int) -> float:
        return poly_warmup_factor(
            it,
            max_iter=max_iter,
            power=power,
            warmup_iters=warmup_iters,
            warmup_factor=warmup_factor,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
