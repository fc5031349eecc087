"""Value checks of a loaded config: each bad value is a :class:`.config.ConfigError` naming the key.

:func:`load_config` runs :func:`check_config` on every config it returns, so that a value that
would divide by zero, do nothing or silently run elsewhere (``SOLVER.MAX_ITER 0``,
``SOLVER.CHECKPOINT_PERIOD 0``, ``INPUT.CROP.SIZE [0, 0]``, ``MODEL.DEVICE tpu``) stops the run
before anything is built. :func:`suggest_key` finds the known key nearest to a misspelled one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
MIN_CROP = 16  # pixels; smaller crops cannot pass the stem and the first strided stages


class ConfigError(ValueError):
    """A config file or override names an unknown key or gives a value of the wrong type."""


def flat_items(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"MODEL.DEVICE": "cpu", ...}``: every leaf of a nested config, by its dotted key."""
    items: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            items.update(flat_items(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def differing_model_keys(first: Mapping, second: Mapping) -> list[tuple[str, Any, Any]]:
    """``[("MODEL.KEY", first's value, second's value), ...]``, sorted by key: the ``MODEL`` keys
    but ``WEIGHTS`` and ``DEVICE`` whose values differ between two configs or config mappings
    (read YAML); a key that one lacks is None there, and tuples equal lists (YAML's form)."""

    def leaves(config: Mapping) -> dict[str, Any]:
        return {k: _as_yaml(v) for k, v in flat_items(config.get("MODEL") or {}, "MODEL.").items()}

    one, two = leaves(first), leaves(second)
    keys = sorted((one.keys() | two.keys()) - {"MODEL.WEIGHTS", "MODEL.DEVICE"})
    return [(k, one.get(k), two.get(k)) for k in keys if one.get(k) != two.get(k)]


def _as_yaml(value: Any) -> Any:
    """``value`` with tuples turned into lists, as YAML reads them back."""
    return [_as_yaml(v) for v in value] if isinstance(value, (list, tuple)) else value


def flat_keys(node: Mapping, prefix: str = "") -> list[str]:
    """``["MODEL.DEVICE", ...]``: every leaf key of a nested config."""
    return list(flat_items(node, prefix))


def suggest_key(key: str, known: list[str]) -> str:
    """`` (did you mean 'X'?)`` for the known key closest to ``key``, or ``""``."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if not close:  # a misspelled last part: compare within the same section
        section, _, leaf = key.rpartition(".")
        same = [k for k in known if k.rpartition(".")[0] == section]
        leaves = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in same], n=1)
        close = [f"{section}.{leaves[0]}"] if leaves else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _positive_int(cfg, key: str, *, minimum: int = 1) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_config(cfg, *, input_formats: tuple[str, ...] = ("RGB",)) -> None:
    """Raise :class:`ConfigError` for the first value no run can use (see the module docstring).

    ``input_formats``: the ``INPUT.FORMAT`` values the engine feeds (the detectron2 plugin reads
    BGR too)."""
    for key in ("SOLVER.MAX_ITER", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.IMS_PER_BATCH",
                "LOG_PERIOD", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"):  # fmt: skip
        _positive_int(cfg, key)
    for key in ("TEST.EVAL_PERIOD", "VIS_PERIOD", "DATALOADER.NUM_WORKERS", "SOLVER.WARMUP_ITERS"):
        _positive_int(cfg, key, minimum=0)
    sem = cfg.MODEL.SEM_SEG_HEAD
    if isinstance(sem.VOID_CLASS, bool) or not -1 <= sem.VOID_CLASS < sem.NUM_CLASSES - 1:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.VOID_CLASS must be -1 (none) or an output channel in "
            f"[0, {sem.NUM_CLASSES - 2}] (NUM_CLASSES {sem.NUM_CLASSES} minus the void one), "
            f"got {sem.VOID_CLASS!r}"
        )
    device = str(cfg.MODEL.DEVICE)
    if not DEVICE_PATTERN.match(device):
        raise ConfigError(f"MODEL.DEVICE must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    crop = list(cfg.INPUT.CROP.SIZE)
    if len(crop) != 2 or not all(isinstance(v, int) and v >= MIN_CROP for v in crop):
        raise ConfigError(
            f"INPUT.CROP.SIZE must be [height, width], integers >= {MIN_CROP}, got {crop}"
        )
    if not cfg.SOLVER.BASE_LR > 0:
        raise ConfigError(f"SOLVER.BASE_LR must be > 0, got {cfg.SOLVER.BASE_LR!r}")
    if not 0 < cfg.INPUT.MIN_SCALE <= cfg.INPUT.MAX_SCALE:
        raise ConfigError(
            f"INPUT.MIN_SCALE and INPUT.MAX_SCALE must satisfy 0 < MIN <= MAX, got "
            f"{cfg.INPUT.MIN_SCALE} and {cfg.INPUT.MAX_SCALE}"
        )
    _check_inputs_and_centres(cfg, input_formats)


def check_loaded_config(
    cfg, config_file: str | None, opts, *, input_formats: tuple[str, ...] = ("RGB",)
) -> None:
    """:func:`check_config` on a config just read from ``config_file`` and ``opts``; the error
    names where the values came from."""
    where = f"{config_file} with overrides" if config_file and opts else config_file or "overrides"
    try:
        check_config(cfg, input_formats=input_formats)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_inputs_and_centres(cfg, input_formats: tuple[str, ...]) -> None:
    """Values that loaded but failed late or silently: a channel order this engine does not
    feed, a normalisation that is not per RGB channel, a zero-width centre Gaussian (NaN
    targets), no centre kept (an IndexError at the first evaluation)."""
    if cfg.INPUT.FORMAT not in input_formats:
        if input_formats != ("RGB",):
            raise ConfigError(
                f"INPUT.FORMAT must be one of {list(input_formats)}, got {cfg.INPUT.FORMAT!r}"
            )
        raise ConfigError(
            f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: this engine feeds RGB images (and "
            "MODEL.PIXEL_MEAN / PIXEL_STD in RGB order); BGR is for detectron2 models under "
            "tools/d2_train_net.py"
        )
    for key, positive in (("MODEL.PIXEL_MEAN", False), ("MODEL.PIXEL_STD", True)):
        values = list(_get(cfg, key))
        if len(values) != 3 or (positive and min(values) <= 0):
            raise ConfigError(
                f"{key} must be 3 values (R, G, B){', > 0' if positive else ''}, got {values}"
            )
    if not cfg.INPUT.GAUSSIAN_SIGMA > 0:
        raise ConfigError(
            f"INPUT.GAUSSIAN_SIGMA must be > 0 (the centre heatmap's width in pixels), got "
            f"{cfg.INPUT.GAUSSIAN_SIGMA!r}"
        )
    _positive_int(cfg, "MODEL.PANOPTIC_DEEPLAB.TOP_K_INSTANCE")
    for key in ("MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"):
        _positive_int(cfg, key, minimum=0)
    scales = list(cfg.TEST.AUG.SCALES)
    if not scales or not all(isinstance(v, (int, float)) and v > 0 for v in scales):
        raise ConfigError(f"TEST.AUG.SCALES must list scale factors > 0, got {scales}")
