"""Where a run resumes from, and whether a checkpoint's saved config fits this run's.

``OUTPUT_DIR/last_checkpoint`` names the checkpoint to continue from (without or, as detectron2
writes it, with ``.pth``); without it, the last ``model_XXXXXXX.pth`` serves. The config saved in a
checkpoint is compared with this run's by section (:func:`config_differences`): settings the
restored optimizer state overrides (:data:`SAVED_IN_STATE`) must not change at resume.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import yaml

from ..config.checks import flat_items

LAST_CHECKPOINT = "last_checkpoint"


def config_differences(saved: Any, current: Any, section: str, limit: int = 3) -> str:
    """``"KEY A (saved: B), ..."``: the keys of ``section`` (e.g. ``"MODEL"``) whose values differ
    between the config YAML texts ``current`` and ``saved`` (a checkpoint's); ``""`` when they
    agree, or when either is missing or unreadable."""
    try:
        old, new = flat_items(yaml.safe_load(saved)), flat_items(yaml.safe_load(current))
    except (yaml.YAMLError, AttributeError, TypeError):
        return ""
    keys = sorted(k for k in set(old) | set(new) if k == section or k.startswith(f"{section}."))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    diffs = [f"{k} {new.get(k)} (saved: {old.get(k)})" for k in changed[:limit]]
    rest = changed[limit:]  # named, so that the one that matters is never hidden in a count
    more = f" and {len(rest)} more: {', '.join(rest)}" if rest else ""
    return ", ".join(diffs) + more


# Settings the resumed optimizer and schedule state override (detectron2 keeps the saved ones
# silently): a change to them at resume would be ignored while the new config records it.
SAVED_IN_STATE = ("SOLVER.OPTIMIZER", "SOLVER.BASE_LR", "SOLVER.BETAS", "SOLVER.WEIGHT_DECAY")


def numbered_checkpoints(output_dir: str) -> list[str]:
    """The ``model_XXXXXXX.pth`` files of ``output_dir``, by iteration."""
    found = glob.glob(os.path.join(glob.escape(output_dir), "model_[0-9]*.pth"))
    return sorted(p for p in found if os.path.basename(p)[6:-4].isdigit())


def other_checkpoints(output_dir: str, path: str) -> str:
    """How to resume from another ``model_*.pth`` of ``output_dir`` than ``path``, if any."""
    names = [os.path.basename(p)[:-4] for p in numbered_checkpoints(output_dir) if p != path]
    if not names:
        return ""
    marker = os.path.join(output_dir, LAST_CHECKPOINT)
    return f" (to resume from an earlier one, write its name, e.g. {names[-1]}, into {marker})"


def checkpoint_to_resume(output_dir: str) -> str | None:
    """The checkpoint ``--resume`` continues from: the one ``output_dir/last_checkpoint`` names
    (with or without ``.pth``: detectron2 writes the extension), else the last
    ``model_XXXXXXX.pth``; None when there is neither. A name whose file is missing raises."""
    marker = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(marker):
        numbered = numbered_checkpoints(output_dir)
        return numbered[-1] if numbered else None
    with open(marker, encoding="utf-8") as f:
        name = f.read().strip()
    name = name[: -len(".pth")] if name.endswith(".pth") else name
    path = os.path.join(output_dir, f"{name}.pth")
    if not name or not os.path.isfile(path):
        raise FileNotFoundError(
            f"{marker} names {path if name else 'no checkpoint'}, which does not exist"
            f"{other_checkpoints(output_dir, path)}"
        )
    return path


def stored_config(path: str) -> str | None:
    """The config YAML saved in checkpoint ``path`` (read mapped), or None."""
    from ..checkpoint.io import load_checkpoint_file

    return load_checkpoint_file(path, mmap=True).config_yaml
