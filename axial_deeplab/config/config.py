"""Config loading: ``_BASE_`` inheritance, ``KEY VALUE`` overrides and clear errors."""

from __future__ import annotations

import os
from collections.abc import Sequence

import yaml
from yacs.config import CfgNode as _YacsNode

from .checks import ConfigError, check_config, flat_keys, suggest_key

BASE_KEY = "_BASE_"

# Keys that earlier versions wrote into checkpoints and that no longer exist. A config stored in
# such a checkpoint loads without them (they were read nowhere); files and overrides that set them
# still get the unknown-key error.
RETIRED_KEYS = ("MODEL.BACKBONE.FREEZE_AT",)


def drop_retired_keys(tree: dict) -> list[str]:
    """Remove :data:`RETIRED_KEYS` from a nested config dict; returns those it removed."""
    dropped = []
    for key in RETIRED_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            del node[leaf]
            dropped.append(key)
    return dropped


class CfgNode(_YacsNode):
    """A yacs ``CfgNode`` whose YAML files may inherit from a ``_BASE_`` file."""

    def merge_from_file(self, cfg_filename: str) -> None:
        """Merge a YAML file (and, first, the chain of ``_BASE_`` files it names) into this node."""
        try:
            self.merge_from_other_cfg(CfgNode(_load_yaml_with_base(cfg_filename)))
        except (KeyError, ValueError, AssertionError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{cfg_filename}: {_message(exc)}") from None

    def merge_from_list(self, cfg_list: Sequence[str]) -> None:
        """Merge ``["KEY", "VALUE", ...]`` overrides, as given on a command line."""
        if len(cfg_list) % 2:
            raise ConfigError(
                f"overrides must come in KEY VALUE pairs, got an odd number: {list(cfg_list)}"
            )
        try:
            super().merge_from_list(list(cfg_list))
        except (KeyError, ValueError, AssertionError) as exc:
            raise ConfigError(f"command-line override: {_message(exc)}") from None


def _message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if str(text).startswith("Non-existent"):
        key = str(text).split(":", 1)[1].strip()
        hint = suggest_key(key, flat_keys(get_cfg()))
        return f"unknown config key '{key}'{hint} (not in axial_deeplab/config/defaults.py)"
    return " ".join(str(text).split())


def _load_yaml_with_base(filename: str, _seen: tuple[str, ...] = ()) -> dict:
    if not os.path.isfile(filename):
        raise ConfigError(f"config file not found: {filename}")
    path = os.path.abspath(filename)
    if path in _seen:
        raise ConfigError(f"{filename}: _BASE_ cycle through {' -> '.join(_seen + (path,))}")
    with open(filename, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{filename}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: expected a mapping at top level, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"{filename}: {BASE_KEY} must be one file path (a string), got {base!r}; "
            f"chain files by giving the base file its own {BASE_KEY}"
        )
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(filename), base)
    merged = _load_yaml_with_base(base_path, _seen + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults (``axial_deeplab/config/defaults.py``)."""
    from .defaults import _C

    return CfgNode(_C.clone())


def load_config(config_file: str | None = None, opts: Sequence[str] = ()) -> CfgNode:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``opts`` overrides; frozen."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    where = f"{config_file} with overrides" if config_file and opts else config_file or "overrides"
    try:
        check_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    cfg.freeze()
    return cfg
