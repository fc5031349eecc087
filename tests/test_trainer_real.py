"""The trainer with the real model, loss and data loader (the quick-start Axial-DeepLab on synthetic
scenes): exact resume after an interruption, mixed precision on the CPU, a random seed."""

from __future__ import annotations

import os

import pytest
import torch

from axial_deeplab.config import load_config
from axial_deeplab.data.catalog import builtin_catalog
from axial_deeplab.data.synthetic_writer import register_synthetic, write_synthetic_dataset
from axial_deeplab.engine.build import build_trainer, resolve_config_seed
from axial_deeplab.engine.trainer import resolve_seed

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "configs", "quickstart", "synthetic_axial.yaml"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic_dataset(root, splits={"train": 6}, height=48, width=64, seed=5)
    return root


def _trainer(data: str, out: str, *opts: str):
    """The quick-start model and loader, random-scale crops of 48 x 64, batches of 2, no eval."""
    cfg = load_config(CONFIG, [
        "OUTPUT_DIR", out, "DATASETS.TRAIN", "('synthetic_coco_train',)", "DATASETS.TEST", "()",
        "INPUT.CROP.SIZE", "[48, 64]", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0",
        "VIS_PERIOD", "0", "LOG_PERIOD", "1", *opts,
    ])  # fmt: skip
    catalog = builtin_catalog(None)
    register_synthetic(catalog, data, splits=("train",))
    return build_trainer(cfg, torch.device("cpu"), catalog)


class _Interrupt(Exception):
    pass


def _interrupted_after(trainer, n: int):
    """``trainer.batches`` that raises (as a kill would stop the run) when batch ``n`` is asked."""
    batches = trainer.batches

    def stopping(start_iter: int):
        for i, batch in enumerate(batches(start_iter), start=start_iter):
            if i == n:
                raise _Interrupt
            yield batch

    return stopping


def test_resume_with_real_model_and_loader_matches_an_uninterrupted_run(data, tmp_path):
    full = _trainer(data, str(tmp_path / "full"))
    full.train()
    split = _trainer(data, str(tmp_path / "split"))
    split.batches = _interrupted_after(split, 3)  # dies during iteration 4; checkpoint at 2
    with pytest.raises(_Interrupt):
        split.train()
    resumed = _trainer(data, str(tmp_path / "split"))  # a new process: everything rebuilt
    assert resumed.resume() and resumed.iteration == 2
    resumed.train()
    a = torch.load(tmp_path / "full" / "model_0000004.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "model_0000004.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    start = torch.load(tmp_path / "split" / "model_0000002.pth", weights_only=True)["model"]
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], start[k])]
    assert len(moved) > 100  # the last 2 iterations changed the weights (and BN statistics)
    for key in a:  # the resumed run saw the same batches with the same augmentation
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_amp_on_cpu_runs_the_model_in_bfloat16_and_trains(data, tmp_path):
    fp32 = _trainer(data, str(tmp_path / "fp32"))
    amp = _trainer(data, str(tmp_path / "amp"), "SOLVER.AMP", "True")
    assert amp.options.amp and amp.amp_dtype == torch.bfloat16
    assert not amp.scaler.is_enabled()  # no loss scaling for bfloat16
    seen = {}
    conv = next(m for m in amp.unwrapped.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, args, out: seen.update(conv=out.dtype))
    batch = next(fp32.batches(0))
    before = {k: v.clone() for k, v in amp.unwrapped.state_dict().items()}
    loss_amp = amp.step(batch)["total_loss"]
    loss_fp32 = fp32.step(batch)["total_loss"]
    assert seen["conv"] == torch.bfloat16  # autocast is really on
    assert all(p.dtype == torch.float32 for p in amp.unwrapped.parameters())
    assert torch.isfinite(loss_amp)
    # Same initial weights (same seed), same batch: bfloat16 keeps about 3 significant digits.
    assert loss_amp.item() == pytest.approx(loss_fp32.item(), rel=0.05)
    assert loss_amp.item() != loss_fp32.item()  # and it did run in a lower precision
    changed = [k for k, v in amp.unwrapped.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the AMP step did not update the model"


def test_negative_seed_draws_a_random_seed_and_training_runs(data, tmp_path, capsys):
    assert resolve_seed(7) == 7
    seeds = {resolve_seed(-1) for _ in range(4)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)
    assert "random seed" in capsys.readouterr().out
    cfg = load_config(CONFIG, ["SEED", "-1"])
    resolved = resolve_config_seed(cfg)
    assert resolved.SEED >= 0 and cfg.SEED == -1 and resolved.is_frozen()
    assert resolve_config_seed(resolved) is resolved
    trainer = _trainer(data, str(tmp_path / "random"), "SEED", "-1", "SOLVER.MAX_ITER", "1")
    trainer.train()  # used to raise "SEED must be resolved"
    saved = torch.load(tmp_path / "random" / "model_0000001.pth", weights_only=True)
    assert "SEED: -1" not in saved["config"] and "SEED: " in saved["config"]
