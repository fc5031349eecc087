"""Config loading: ``_BASE_`` inheritance, ``KEY VALUE`` overrides and clear errors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsNode

from .checks import ConfigError, check_loaded_config, flat_keys, suggest_key

BASE_KEY = "_BASE_"

# Keys that earlier versions wrote into checkpoints and that no longer exist. A config stored in
# such a checkpoint loads without them (they were read nowhere); files and overrides that set them
# still get the unknown-key error.
RETIRED_KEYS = ("MODEL.BACKBONE.FREEZE_AT",)

# yacs' "Type mismatch (<class 'int'> vs. <class 'str'>) with values (...) for config key: KEY"
TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '([\w.]+)'> vs\. .* for config key: (\S+)$", re.S
)
TYPE_WORDS = {
    "int": "an integer",
    "float": "a floating-point number (e.g. 0.5 or 1.0)",
    "bool": "true or false",
    "str": "a string",
    "list": "a list ([a, b, ...])",
    "tuple": "a list ([a, b, ...])",
}
FILE_SECTION_HINT = "(KEY: value lines below it)"
SNIFF_BYTES = 8192  # read to tell a binary file (NUL bytes) from a YAML one


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
        data = _load_yaml_with_base(cfg_filename)
        _ints_as_floats(data, self)
        try:
            self.merge_from_other_cfg(CfgNode(data))
        except (KeyError, ValueError, AssertionError, TypeError) as exc:
            message = _message(exc, lambda key: _lookup(data, key), FILE_SECTION_HINT)
            raise ConfigError(f"{cfg_filename}: {message}") from None

    def merge_from_list(self, cfg_list: Sequence[str]) -> None:
        """Merge ``["KEY", "VALUE", ...]`` overrides, as given on a command line."""
        check_overrides(cfg_list)
        for key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            self._merge_override(key, value)

    def _merge_override(self, key: str, value: Any) -> None:
        if _is_float(_lookup(self, key)):  # "0" for a float key means 0.0 (yacs refuses an int)
            decoded = self._decode_cfg_value(value)
            if isinstance(decoded, int) and not isinstance(decoded, bool):
                value = float(decoded)
        try:
            super().merge_from_list([key, value])
        except TypeError:  # yacs walked into a value: "SOLVER.MAX_ITER.X"
            raise ConfigError(f"command-line override: {_unknown_key(key)}") from None
        except (KeyError, ValueError, AssertionError) as exc:
            given = self._decode_cfg_value(value)
            message = _message(exc, lambda _: given, f"(set its keys: {key}.KEY VALUE)")
            raise ConfigError(f"command-line override: {message}") from None


def check_overrides(opts: Sequence[str]) -> None:
    """Refuse ``--options`` among ``KEY VALUE`` overrides (an ``argparse.REMAINDER`` keeps the
    options written after the first override there) and an odd number of words."""
    options = [str(o) for o in opts if str(o).startswith("--")]
    if options:
        noun = "option" if len(options) == 1 else "options"
        raise ConfigError(
            f"{noun} {', '.join(map(repr, options))} after the KEY VALUE overrides: put options "
            f"before them (... {' '.join(options)} KEY VALUE ...)"
        )
    if len(opts) % 2:
        raise ConfigError(
            f"overrides must come in KEY VALUE pairs, got an odd number: {list(opts)}"
        )


def _message(exc: Exception, given: Callable[[str], Any], section_hint: str) -> str:
    """yacs' error ``exc`` in words; ``given(key)`` is the value that the file or override gave
    ``key``, ``section_hint`` how to set a section's keys there."""
    key = missing_key(exc)
    if key is not None:
        return _unknown_key(key)
    text = str(exc.args[0] if exc.args else exc)
    mismatch = TYPE_MISMATCH.match(text)
    if mismatch:
        expected, key = mismatch.groups()
        if expected.endswith("CfgNode"):
            return f"{key} must be a section {section_hint}, got {given(key)!r}"
        return f"{key}: expected {TYPE_WORDS.get(expected, expected)}, got {given(key)!r}"
    return " ".join(text.split())


def missing_key(exc: Exception) -> str | None:
    """The key of yacs' "Non-existent (config) key: KEY" error ``exc`` (a KeyError from a file's
    merge, an AssertionError from overrides), else None."""
    text = str(exc.args[0] if exc.args else exc)
    return text.split(":", 1)[1].strip() if text.startswith("Non-existent") else None


def _unknown_key(key: str) -> str:
    hint = suggest_key(key, flat_keys(get_cfg()))
    return f"unknown config key '{key}'{hint} (not in axial_deeplab/config/defaults.py)"


def _is_float(value: Any) -> bool:
    return isinstance(value, float)


def _ints_as_floats(tree: dict, defaults: Mapping) -> None:
    """In a loaded YAML mapping, integers given to keys whose default is a float become floats
    (``CENTER_THRESHOLD: 0`` means 0.0; yacs would refuse the type), in place."""
    for key, value in tree.items():
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        if isinstance(value, dict) and isinstance(default, Mapping):
            _ints_as_floats(value, default)
        elif _is_float(default) and isinstance(value, int) and not isinstance(value, bool):
            tree[key] = float(value)


def _lookup(tree: dict, key: str) -> Any:
    """The value at dotted ``key`` in a nested dict (None where the path ends early)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _load_yaml_with_base(filename: str, _seen: tuple[str, ...] = ()) -> dict:
    """``filename``'s mapping over those of its ``_BASE_`` chain; ``_seen``: the absolute paths of
    the files that led here (the last one names ``filename`` as its ``_BASE_``)."""
    if not os.path.isfile(filename):
        of = f" (the {BASE_KEY} of {_seen[-1]})" if _seen else ""
        if os.path.isdir(filename):
            raise ConfigError(f"config file {filename}{of} is a folder: give one of its YAML files")
        raise ConfigError(f"config file not found: {filename}{of}")
    path = os.path.abspath(filename)
    if path in _seen:
        raise ConfigError(f"{filename}: _BASE_ cycle through {' -> '.join(_seen + (path,))}")
    data = _read_yaml_mapping(filename)
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


def _read_yaml_mapping(filename: str) -> dict:
    """The top-level mapping of one YAML file (``{}`` for an empty one)."""
    with open(filename, "rb") as f:
        if b"\0" in f.read(SNIFF_BYTES):
            raise ConfigError(
                f"{filename}: not a YAML config (a binary file: a checkpoint? checkpoints go in "
                "MODEL.WEIGHTS)"
            )
    with open(filename, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{filename}: not a YAML config (not UTF-8 text)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{filename}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: expected a mapping at top level, got {type(data).__name__}")
    return data


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
    check_loaded_config(cfg, config_file, opts)
    cfg.freeze()
    return cfg
