"""The training loop: exact resume, atomic checkpoints, best-checkpoint tracking, clear failures."""

import os

import pytest
import torch
from torch import nn

from axial_deeplab.engine.events import read_metrics
from axial_deeplab.engine.optim import build_lr_scheduler, build_optimizer, param_groups
from axial_deeplab.engine.trainer import Trainer, TrainerOptions


def _batches(start_iter: int):
    """Batch ``i`` depends only on ``i``: a noisy linear target, seeded per iteration."""
    it = start_iter
    while True:
        g = torch.Generator().manual_seed(it)
        x = torch.randn(4, 3, 5, 5, generator=g)
        yield {"image": x, "target": x.sum(1, keepdim=True) * 0.5}
        it += 1


def _criterion(outputs, batch):
    return {"loss_mse": ((outputs["pred"] - batch["target"]) ** 2).mean()}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        return {"pred": self.bn(self.conv(x))}


def _trainer(out_dir, max_iter, evaluate=None, clip=0.0):
    torch.manual_seed(0)
    model = _Net()
    opt = build_optimizer(param_groups(model, 1e-4), name="radam_lookahead", lr=0.05)
    sched = build_lr_scheduler(opt, max_iter=8, warmup_iters=2)
    opts = TrainerOptions(
        max_iter=max_iter,
        output_dir=str(out_dir),
        checkpoint_period=3,
        log_period=1,
        clip_grad_norm=clip,
    )
    return Trainer(
        model,
        _criterion,
        opt,
        sched,
        _batches,
        device=torch.device("cpu"),
        options=opts,
        evaluate=evaluate,
    )


def _losses(out_dir):
    return [
        r["total_loss"]
        for r in read_metrics(os.path.join(out_dir, "metrics.json"))
        if "total_loss" in r
    ]


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    _trainer(tmp_path / "full", 8).train()
    # Interrupt after 3 iterations (a checkpoint is due there), then resume to 8.
    _trainer(tmp_path / "split", 3).train()
    resumed = _trainer(tmp_path / "split", 8)
    assert resumed.resume() and resumed.iteration == 3
    resumed.train()
    full, split = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert len(full) == len(split) == 8
    assert split == pytest.approx(full, rel=0, abs=0)
    final_a = torch.load(tmp_path / "full" / "model_0000008.pth", weights_only=True)["model"]
    final_b = torch.load(tmp_path / "split" / "model_0000008.pth", weights_only=True)["model"]
    for key in final_a:
        assert torch.equal(final_a[key], final_b[key]), key


def test_resume_without_checkpoint_and_best_tracking(tmp_path):
    scores = iter([0.3, 0.7, 0.5])
    trainer = _trainer(tmp_path, 6, evaluate=lambda model: {"PQ": next(scores)})
    trainer.options.eval_period = 2
    assert trainer.resume() is False
    metrics = trainer.train()
    assert metrics == {"PQ": 0.5}
    assert trainer.best == 0.7  # the best of the three evaluations, kept in model_best.pth
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["iteration"] == 4 and best["best"] == 0.7
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006"


def test_resume_keeps_the_best_of_model_best(tmp_path):
    """The periodic checkpoint of an iteration is written before its evaluation: a run resumed
    from it takes the best from model_best.pth, so a worse later score does not replace it."""
    scores = iter([0.7, 0.5, 0.6])
    trainer = _trainer(tmp_path, 3, evaluate=lambda model: {"PQ": next(scores)})
    trainer.options.eval_period = 3
    trainer.train()  # checkpoint at 3 (best None in it), then PQ 0.7: model_best.pth
    assert torch.load(tmp_path / "model_0000003.pth", weights_only=True)["best"] is None
    resumed = _trainer(tmp_path, 6, evaluate=lambda model: {"PQ": next(scores)})
    resumed.options.eval_period = 3
    assert resumed.resume() and resumed.best == 0.7
    resumed.train()  # PQ 0.5 at 6: not better
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["iteration"] == 3 and best["best"] == 0.7


def test_non_finite_loss_raises_with_iteration(tmp_path):
    trainer = _trainer(tmp_path, 2)
    trainer.criterion = lambda o, b: {"loss_bad": o["pred"].sum() * float("nan")}
    with pytest.raises(
        FloatingPointError,
        match=r"iteration 1 \(loss_bad=nan\): training diverged; lower SOLVER.BASE_LR",
    ):
        trainer.train()


def test_resumed_finished_run_runs_the_evaluation_it_lacks(tmp_path):
    """Stopped during the evaluation after the last iteration, a resumed run said it had
    finished and never evaluated; when that evaluation is logged, it is not run again."""
    trainer = _trainer(tmp_path, 3)  # trained without evaluating: as if stopped during it
    trainer.train()
    calls = []
    resumed = _trainer(tmp_path, 3, evaluate=lambda model: calls.append(1) or {"PQ": 0.4})
    assert resumed.resume() and resumed.iteration == 3
    assert resumed.train() == {"PQ": 0.4} and calls == [1]
    assert (tmp_path / "model_best.pth").exists()
    again = _trainer(tmp_path, 3, evaluate=lambda model: calls.append(1) or {"PQ": 0.4})
    assert again.resume() and again.train() == {} and calls == [1]
