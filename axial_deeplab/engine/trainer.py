"""The training loop: AMP, gradient clipping, atomic checkpoints, exact resume, periodic evaluation.

The loop knows nothing of panoptic segmentation. It takes ready-made objects:

- ``model(images) -> dict`` of raw outputs;
- ``criterion(outputs, batch) -> dict`` of named losses, summed for the backward pass;
- ``batches(start_iter)``: an iterator of batch dicts whose order depends only on the seed and
  ``start_iter``, so that a resumed run sees exactly the batches an uninterrupted one would;
- ``evaluate(model) -> dict`` of metrics (optional), run every ``eval_period`` iterations;
- ``visualize(batch, outputs) -> {tag: [H, W, 3] uint8}`` (optional): pictures of the current
  batch and the model's outputs on it, written to TensorBoard every ``vis_period`` iterations by
  the main process;
- ``checkpoint_info`` (optional): constant entries written into every checkpoint besides the
  training state, e.g. the run's config and class metadata (``checkpoint.io.checkpoint_entries``)
  so that inference needs nothing but the checkpoint file.

Stopping: SIGINT (Ctrl-C), SIGTERM, SIGUSR1 or SIGUSR2 during :meth:`Trainer.train` finishes the
current iteration, saves a checkpoint and raises :class:`.preemption.TrainingInterrupted`; a
resumed run then continues exactly where it stopped. Loader workers signalled too (a signal to the
process group) keep serving meanwhile (``data.loader.defer_stop_signals``); should the loader fail
all the same while the signal is pending, the iteration is abandoned before its step and the state
saved is that of its start. When a run starts, the main process deletes temporary files left in
``output_dir`` by a process killed mid-write and cuts ``metrics.json`` back to the iterations at or
before the one it starts from, so that a resumed run's log has one record per logged iteration.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint.io import describe_mismatch, load_torch_file, save_atomic
from ..layers.precision import autocast_dtype
from ..utils.atomic import remove_stale_temp_files, write_text
from ..utils.progress import progress
from .distributed import (
    all_gather_objects,
    broadcast_buffers,
    is_main_process,
    mean_over_ranks,
)
from .events import EventWriter, read_metrics, truncate_metrics
from .preemption import StopSignals, TrainingInterrupted
from .resume import (
    LAST_CHECKPOINT,
    SAVED_IN_STATE,
    checkpoint_to_resume,
    config_differences,
    other_checkpoints,
)

STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "iteration", "best", "rng")


@dataclass
class TrainerOptions:
    """Loop settings (the builder fills them from ``SOLVER.*``/``TEST.*``)."""

    max_iter: int
    output_dir: str
    checkpoint_period: int = 1000
    eval_period: int = 0  # 0: evaluate only at the end (when ``evaluate`` is given)
    log_period: int = 20
    vis_period: int = 0  # 0: no pictures (needs ``visualize`` and tensorboard)
    clip_grad_norm: float = 0.0  # 0: no clipping
    amp: bool = False
    best_metric: str = "PQ"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, in a weights-only-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def resolve_seed(seed: int) -> int:
    """``seed`` if it is >= 0; else a random seed in ``[0, 2^31)``, drawn by the main process and
    shared by every process (so that all ranks shuffle alike), and printed, so that a run can be
    redone."""
    if seed >= 0:
        return seed
    drawn = all_gather_objects(secrets.randbelow(2**31))[0]
    if is_main_process():
        print(f"SEED is {seed} (< 0): using the random seed {drawn}")
    return drawn


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


class Trainer:
    """Runs ``options.max_iter`` iterations from the last checkpoint in ``output_dir`` (if resuming)."""

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable[[dict, dict], dict[str, torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batches: Callable[[int], Iterator[dict]],
        *,
        device: torch.device,
        options: TrainerOptions,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        visualize: Callable[[dict, dict], dict[str, np.ndarray]] | None = None,
        checkpoint_info: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.batches = batches
        self.device = device
        self.options = options
        self.evaluate = evaluate
        self.visualize = visualize
        self.checkpoint_info = dict(checkpoint_info or {})
        clash = sorted(set(self.checkpoint_info) & set(STATE_KEYS))
        if clash:
            raise ValueError(f"checkpoint_info keys {clash} would overwrite the training state")
        self.iteration = 0
        self.best: float | None = None
        amp_fp16 = options.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_fp16)
        self.amp_dtype = autocast_dtype(device.type)

    # ----------------------------------------------------------------------------- checkpoints
    @property
    def unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def state_dict(self) -> dict[str, Any]:
        """The training state (:data:`STATE_KEYS`) and the ``checkpoint_info`` entries."""
        return {
            **self.checkpoint_info,
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "best": self.best,
            "rng": rng_state(),
        }

    def save(self, name: str) -> str:
        path = os.path.join(self.options.output_dir, f"{name}.pth")  # same on every rank
        if is_main_process():
            save_atomic(self.state_dict(), path)
            tqdm.write(f"checkpoint {path} (iteration {self.iteration})")
            if name != "model_best":
                write_text(os.path.join(self.options.output_dir, LAST_CHECKPOINT), name)
        return path

    def resume(self) -> bool:
        """Load the last checkpoint of ``output_dir``; False when there is none. A checkpoint that
        cannot be read, or whose state does not fit this run (another model, optimizer...), raises
        a one-line ``ValueError`` naming it (and, for the model, the tensors that differ)."""
        output_dir = self.options.output_dir
        path = checkpoint_to_resume(output_dir)
        if path is None:
            return False
        if not os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)) and is_main_process():
            print(f"--resume: no {LAST_CHECKPOINT} file in {output_dir}: resuming from its last "
                  f"numbered checkpoint, {os.path.basename(path)}")  # fmt: skip
        try:
            state = load_torch_file(path)  # ValueError naming the file
        except ValueError as exc:
            raise ValueError(
                f"cannot resume from {path}, which cannot be loaded"
                f"{other_checkpoints(output_dir, path)}: {exc}"
            ) from None
        missing = [k for k in STATE_KEYS if not isinstance(state, Mapping) or k not in state]
        if missing:
            raise ValueError(
                f"{path} holds no training state {missing} to resume from (start a new "
                f"OUTPUT_DIR with MODEL.WEIGHTS {path} to train from its weights)"
            )
        try:
            self.unwrapped.load_state_dict(state["model"])
        except RuntimeError:
            detail = describe_mismatch(self.unwrapped, state["model"])
            raise ValueError(
                f"cannot resume from {path}: its weights do not fit the model"
                f"{self._config_hint(state, 'MODEL')}: {detail}"
            ) from None
        saved = [config_differences(state.get("config"), self.checkpoint_info.get("config"), key)
                 for key in SAVED_IN_STATE]  # fmt: skip
        if any(saved):  # another optimizer's state may load without an error, and be wrong
            raise ValueError(
                f"cannot resume from {path}: it was trained with other optimizer settings: "
                f"{', '.join(d for d in saved if d)}; its optimizer state would not fit yours, or "
                "override them while the config records them: resume with the saved settings, or "
                "train in a new OUTPUT_DIR from its weights (MODEL.WEIGHTS)"
            )
        self._check_classes(state.get("metadata"), path)
        for name in ("optimizer", "scheduler", "scaler"):
            try:
                getattr(self, name).load_state_dict(state[name])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
                raise ValueError(
                    f"cannot resume from {path}: its {name} state does not fit this run"
                    f"{self._config_hint(state, 'SOLVER')}: {' '.join(str(exc).split())}"
                ) from None
        self.iteration = int(state["iteration"])
        self.best = self._best_so_far(state["best"])
        set_rng_state(state["rng"])
        return True

    def _check_classes(self, saved: Any, path: str) -> None:
        """The classes a resumed checkpoint was trained on against this run's: the same names in
        another order would retrain every class as another one (refused); renamed ones get a
        note."""
        from ..data.build import class_name_difference

        ours = (self.checkpoint_info.get("metadata") or {}).get("class_names")
        theirs = (saved or {}).get("class_names") if isinstance(saved, Mapping) else None
        difference = (
            ours and theirs and class_name_difference(theirs, ours, path, "this run's data")
        )
        if not difference:
            return
        where, reordered = difference
        if reordered:
            raise ValueError(
                f"cannot resume from {path}: its classes are ordered differently ({where}): every "
                "class would be trained as another one; list the categories in the saved order"
            )
        if is_main_process():
            print(f"note: the class names differ from the checkpoint's ({where})")

    def _best_so_far(self, saved: float | None) -> float | None:
        """The best metric of the run: a periodic checkpoint is written before the evaluation of
        its iteration, so ``model_best.pth`` (written after) may hold a newer best."""
        path = os.path.join(self.options.output_dir, "model_best.pth")
        if not os.path.isfile(path):
            return saved
        try:
            best = load_torch_file(path, mmap=True)
        except ValueError:  # a damaged file: the next better evaluation rewrites it
            return saved
        value = best.get("best") if isinstance(best, Mapping) else None
        if value is None or int(best.get("iteration", self.iteration + 1)) > self.iteration:
            return saved
        return value if saved is None else max(saved, value)

    def _config_hint(self, state: Mapping[str, Any], section: str) -> str:
        """What differs in ``section`` between this run's config and the one saved in ``state``."""
        diffs = config_differences(state.get("config"), self.checkpoint_info.get("config"), section)
        if not diffs:
            return ""
        return (
            f" (this run's config differs from the one saved in it: {diffs}; resume with that "
            "config, or train in a new OUTPUT_DIR from its weights)"
        )

    # ----------------------------------------------------------------------------- the loop
    def train(self) -> dict[str, float]:
        """Train to ``max_iter``; returns the last evaluation's metrics (empty without one).

        Raises :class:`.preemption.TrainingInterrupted` after saving a checkpoint when a stop
        signal arrives (see the module docstring)."""
        opts = self.options
        main = is_main_process()
        if main:
            os.makedirs(opts.output_dir, exist_ok=True)
            for path in remove_stale_temp_files(opts.output_dir):
                print(f"removed {path}, left by a process killed while writing it")
            truncate_metrics(os.path.join(opts.output_dir, "metrics.json"), self.iteration)
        writer = EventWriter(opts.output_dir, start=self.iteration) if main else None
        bar = progress(
            total=opts.max_iter, initial=self.iteration, disable=not main, desc="train", unit="it"
        )
        if writer and opts.vis_period > 0 and self.visualize and not writer.has_tensorboard:
            print("notice: no TensorBoard pictures (vis_period is set but tensorboard is not "
                  "installed: pip install tensorboard)")  # fmt: skip
        self.model.train()
        try:
            with StopSignals() as stop:
                return self._loop(writer, bar, stop)
        finally:
            bar.close()
            if writer:
                writer.close()

    def _loop(self, writer: EventWriter | None, bar: tqdm, stop: StopSignals) -> dict[str, float]:
        opts = self.options
        metrics: dict[str, float] = {}
        data = self.batches(self.iteration)
        saved = -1  # iteration of the last checkpoint written by this loop
        while self.iteration < opts.max_iter:
            signum = stop.requested(self.device)
            if signum is not None:
                raise self._interrupted(signum, saved)
            start = time.perf_counter()
            try:
                batch = next(data)
            except Exception:
                if stop.signum is None:
                    raise
                # the loader failed after the stop signal (its workers got it too: they leave
                # after a grace period, see data.loader); the state is that of an iteration
                # boundary, so save it as the signal asks
                raise self._interrupted(stop.signum, saved) from None
            data_time = time.perf_counter() - start
            inspect = self._pictures_writer(writer)
            lr = self.optimizer.param_groups[0]["lr"]  # the step's (the scheduler steps after it)
            losses = self.step(batch, inspect=inspect)
            self.iteration += 1
            bar.update(1)
            log = self.iteration % opts.log_period == 0 or self.iteration == 1
            scalars = {k: v.item() for k, v in mean_over_ranks(losses, log).items()}
            scalars.update(lr=lr, data_time=data_time)
            bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
            if writer and log:
                writer.write(self.iteration, scalars)
            if self.iteration % opts.checkpoint_period == 0 or self.iteration == opts.max_iter:
                self.save(f"model_{self.iteration:07d}")
                saved = self.iteration
            if self._eval_due():
                metrics = self._run_eval(writer)
        if saved < 0 and self._final_evaluation_missing():  # resumed at max_iter: no iteration
            if is_main_process():
                print(f"the evaluation at iteration {self.iteration} did not finish: running it")
            metrics = self._run_eval(writer)
        return metrics

    def _final_evaluation_missing(self) -> bool:
        """Whether a run resumed at ``max_iter`` lacks the evaluation that ends it (stopped while
        it ran): no ``eval/`` record for that iteration in ``metrics.json``."""
        if self.evaluate is None or self.iteration != self.options.max_iter:
            return False
        path = os.path.join(self.options.output_dir, "metrics.json")
        records = read_metrics(path) if os.path.isfile(path) else []
        return not any(
            r.get("iteration") == self.iteration and any(k.startswith("eval/") for k in r)
            for r in records
        )

    def _interrupted(self, signum: int, saved: int) -> TrainingInterrupted:
        """Save the state of this iteration boundary (unless the loop did: ``saved``)."""
        path = os.path.join(self.options.output_dir, f"model_{self.iteration:07d}.pth")
        if saved != self.iteration:
            path = self.save(f"model_{self.iteration:07d}")
        return TrainingInterrupted(signum, self.iteration, path)

    def step(
        self, batch: dict, *, inspect: Callable[[dict, dict], None] | None = None
    ) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; returns the detached losses and their sum.

        ``inspect(batch, outputs)``, when given, sees the batch (on the device) and the model's
        float outputs before the backward pass, without gradients.
        """
        batch = {
            k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.options.amp):
            outputs = self.model(batch["image"])
        outputs = {k: v.float() for k, v in outputs.items()}
        losses = self.criterion(outputs, batch)
        if inspect is not None:
            with torch.no_grad():
                inspect(batch, outputs)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"loss became {total.item()} at iteration {self.iteration + 1} ("
                + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                + "): training diverged; lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or "
                "set SOLVER.CLIP_GRADIENTS"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.options.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {**{k: v.detach() for k, v in losses.items()}, "total_loss": total.detach()}

    def _pictures_writer(self, writer: EventWriter | None) -> Callable[[dict, dict], None] | None:
        """A callback writing pictures of the coming step, when one is due (main process)."""
        period = self.options.vis_period
        due = period > 0 and (self.iteration + 1) % period == 0
        if writer is None or self.visualize is None or not due or not writer.has_tensorboard:
            return None
        step = self.iteration + 1
        return lambda batch, outputs: writer.write_images(step, self.visualize(batch, outputs))

    def _eval_due(self) -> bool:
        if self.evaluate is None:
            return False
        period = self.options.eval_period
        last = self.iteration == self.options.max_iter
        return last or (period > 0 and self.iteration % period == 0)

    def _run_eval(self, writer: EventWriter | None) -> dict[str, float]:
        # every rank evaluates the model the checkpoint holds: rank 0's batch-norm statistics
        # (on CPUs, where SyncBN falls back to per-rank BN, each rank's were its own)
        broadcast_buffers(self.unwrapped)
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(self.model)
        self.model.train()
        if writer:
            writer.write(self.iteration, {f"eval/{k}": v for k, v in metrics.items()})
        if is_main_process():
            shown = [k for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP") if k in metrics]
            tqdm.write(f"evaluation at iteration {self.iteration}: "
                       + ", ".join(f"{k} {metrics[k]:.2f}" for k in shown))  # fmt: skip
        value = metrics.get(self.options.best_metric)
        if value is not None and (self.best is None or value > self.best):
            self.best = value
            self.save("model_best")
        return metrics
