"""Name mapping from a foreign checkpoint (name -> array) onto a PyTorch state dict, with a report.

A converter lists ``Entry(source, target, transform)`` rows; ``apply_mapping`` fills the state
dict, checks every shape, and fails unless every source tensor is used (besides names the
converter declares as ignorable, e.g. optimizer slots, each reported) and every parameter and
buffer of the model is filled (batch-norm batch counters aside).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

Transform = Callable[[np.ndarray], np.ndarray]
MAX_LISTED = 25  # names listed per problem kind in a report


def identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclass(frozen=True)
class Entry:
    """Source tensor ``source`` becomes ``target`` (a state-dict key) after ``transform``."""

    source: str
    target: str
    transform: Transform = identity


@dataclass
class ConversionReport:
    """What a conversion used, skipped and filled; ``lines()`` is the printable report."""

    used: int = 0
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> source names
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_errors: list[str] = field(default_factory=list)
    defaulted: list[str] = field(default_factory=list)  # targets with no source by design
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unused or self.missing or self.shape_errors)

    def summary(self) -> str:
        """The failures in one phrase, for the final line under ``lines()``, e.g. ``"3 source
        tensors unused, 2 model tensors unfilled"`` (``""`` when ``ok``)."""
        counts = (
            (len(self.unused), "source tensors unused"),
            (len(self.missing), "model tensors unfilled"),
            (len(self.shape_errors), "shape mismatches"),
        )
        return ", ".join(f"{n} {what}" for n, what in counts if n)

    def lines(self) -> list[str]:
        out = [f"converted tensors: {self.used}"]
        for reason, names in self.ignored.items():
            out.append(f"ignored ({reason}): {len(names)}, e.g. {names[:3]}")
        if self.defaulted:
            out.append(
                f"not in the source, left at their defaults: {len(self.defaulted)} "
                f"(e.g. {self.defaulted[:2]})"
            )
        out += [f"note: {n}" for n in self.notes]
        for title, names in (
            ("UNUSED source tensors", self.unused),
            ("UNFILLED model tensors", self.missing),
            ("SHAPE mismatches", self.shape_errors),
        ):
            if names:
                out.append(f"{title} ({len(names)}):")
                out += [f"  {n}" for n in names[:MAX_LISTED]]
                if len(names) > MAX_LISTED:
                    out.append(f"  ... and {len(names) - MAX_LISTED} more")
        return out


def _converted(e: Entry, array: np.ndarray, out: Mapping[str, torch.Tensor]) -> np.ndarray | str:
    """``e.transform(array)`` in the shape of ``out[e.target]``, else the shape error (a line)."""
    if e.target not in out:
        return f"{e.source}: target {e.target} is not in the model"
    shape, expected = list(np.shape(array)), list(out[e.target].shape)
    try:
        value = np.asarray(e.transform(np.asarray(array)))
    except (IndexError, ValueError) as err:  # a layout the model's shape cannot take
        return f"{e.source} {shape} -> {e.target} {expected}: {err}"
    if list(value.shape) != expected:
        return (
            f"{e.source} {shape} -> {e.target}: converted shape {list(value.shape)}, model "
            f"expects {expected}"
        )
    return value


def apply_mapping(
    source: Mapping[str, np.ndarray],
    entries: Iterable[Entry],
    state: Mapping[str, torch.Tensor],
    *,
    ignore: Callable[[str], str | None] = lambda name: None,
    defaults: Callable[[str], bool] = lambda key: key.endswith("num_batches_tracked"),
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Fill a copy of ``state`` (the target model's state dict) from ``source`` through
    ``entries``. ``ignore(name)`` returns a reason for a source tensor that is deliberately not
    converted (else None); ``defaults(key)`` is True for model tensors that keep their value.
    Each problem is reported once: a mis-shaped pair as a shape error, not also as an unused
    source and an unfilled target. Raises nothing: the caller decides from ``report.ok``."""
    report = ConversionReport()
    out = {k: v.clone() for k, v in state.items()}
    filled: set[str] = set()
    consumed: set[str] = set()  # sources used or reported as shape errors
    reported: set[str] = set()  # targets whose source is absent or reported as a shape error
    for e in entries:
        if e.source not in source:
            report.missing.append(f"{e.target} (expected source {e.source})")
            reported.add(e.target)
            continue
        value = _converted(e, source[e.source], out)
        consumed.add(e.source)
        if isinstance(value, str):
            report.shape_errors.append(value)
            reported.add(e.target)
            continue
        if not out[e.target].is_meta:  # meta targets: a shape-only check (``shape_report``)
            out[e.target] = torch.from_numpy(np.ascontiguousarray(value)).to(out[e.target].dtype)
        filled.add(e.target)
        report.used += 1
    for name in sorted(set(source) - consumed):
        reason = ignore(name)
        if reason is None:
            report.unused.append(name)
        else:
            report.ignored.setdefault(reason, []).append(name)
    for key in sorted(set(out) - filled):
        if defaults(key):
            report.defaulted.append(key)
        elif key not in reported:
            report.missing.append(f"{key} (no source mapped to it)")
    return out, report


def shape_report(
    source_shapes: Mapping[str, tuple[int, ...]],
    entries: Iterable[Entry],
    model: torch.nn.Module,
    **kwargs,
) -> ConversionReport:
    """``apply_mapping``'s report from shapes alone: ``source_shapes`` (e.g. a checkpoint
    manifest) against ``model`` built on the meta device; nothing is allocated at full size."""
    zeros = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in source_shapes.items()}
    return apply_mapping(zeros, entries, model.state_dict(), **kwargs)[1]
