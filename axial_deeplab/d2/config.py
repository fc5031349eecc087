"""detectron2 config: our keys added from ``axial_deeplab/config/defaults.py`` (no second copy).

Our defaults already use detectron2's key names where detectron2 has the concept, so adding them
is a merge: keys detectron2 lacks are added, keys it has take our default value (so that one YAML
file builds the same model in both engines). Three keys differ in kind and are translated:

- ``MODEL.META_ARCHITECTURE``: our ``"PanopticDeepLab"`` is ``"AxialDeepLab"`` in detectron2
  (its own Panoptic-DeepLab project owns the first name);
- ``SOLVER.AMP`` (a bool here) is detectron2's ``SOLVER.AMP.ENABLED``;
- ``SOLVER.CLIP_GRADIENTS`` (a max L2 norm here, 0 = off) is detectron2's node
  ``SOLVER.CLIP_GRADIENTS.{ENABLED, CLIP_TYPE, CLIP_VALUE, NORM_TYPE}``.

``VERSION`` stays detectron2's (it drives detectron2's config upgrades).
:func:`load_config` reads our YAML files (``_BASE_`` chains included) and command-line overrides
with those translations, so ``SOLVER.AMP True`` works in both engines. YAML is read safely: a
Python tag (``!!python/object/apply:...``) is refused instead of run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import yaml
from detectron2.config import CfgNode
from detectron2.config import get_cfg as d2_get_cfg

from axial_deeplab.config import ConfigError
from axial_deeplab.config import get_cfg as native_get_cfg
from axial_deeplab.config.checks import check_loaded_config, flat_keys, suggest_key
from axial_deeplab.config.config import missing_key

META_ARCHITECTURE = "AxialDeepLab"  # name of our model in detectron2's META_ARCH_REGISTRY
_KEEP_DETECTRON2 = ("VERSION", "SOLVER.AMP", "SOLVER.CLIP_GRADIENTS")
INPUT_FORMATS = ("RGB", "BGR")  # what the plugin's dataset mapper feeds


def _merge_defaults(dst: CfgNode, src, prefix: str = "") -> None:
    """Copy ``src`` into ``dst``, recursing into nodes both have; skips ``_KEEP_DETECTRON2``."""
    for key, value in src.items():
        name = prefix + key
        if name in _KEEP_DETECTRON2:
            continue
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_defaults(dst[key], value, name + ".")
        else:
            dst[key] = CfgNode(value) if isinstance(value, dict) else value


def add_axial_deeplab_config(cfg: CfgNode) -> None:
    """Add Axial-DeepLab's keys and defaults to a detectron2 config, in place.

    Call it on ``detectron2.config.get_cfg()`` before merging a YAML file.
    """
    _merge_defaults(cfg, native_get_cfg())
    cfg.MODEL.META_ARCHITECTURE = META_ARCHITECTURE
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # our backbones train every stage (the d2 builder checks)
    native = native_get_cfg().SOLVER
    cfg.SOLVER.AMP.ENABLED = bool(native.AMP)
    cfg.SOLVER.CLIP_GRADIENTS.merge_from_other_cfg(CfgNode(_clip_node(native.CLIP_GRADIENTS)))


def _clip_node(max_norm: float) -> dict[str, Any]:
    """detectron2's gradient-clipping node for our ``SOLVER.CLIP_GRADIENTS`` max L2 norm."""
    return {
        "ENABLED": max_norm > 0,
        "CLIP_TYPE": "norm",
        "CLIP_VALUE": float(max_norm) if max_norm > 0 else 1.0,
        "NORM_TYPE": 2.0,
    }


def translate_native_yaml(data: dict) -> dict:
    """A loaded YAML mapping with our scalar ``SOLVER.AMP`` / ``SOLVER.CLIP_GRADIENTS`` and
    ``MODEL.META_ARCHITECTURE: PanopticDeepLab`` rewritten in detectron2's form (a new dict)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    solver = data.get("SOLVER", {})
    if "AMP" in solver and not isinstance(solver["AMP"], dict):
        solver["AMP"] = {"ENABLED": bool(solver["AMP"])}
    if "CLIP_GRADIENTS" in solver and not isinstance(solver["CLIP_GRADIENTS"], dict):
        solver["CLIP_GRADIENTS"] = _clip_node(float(solver["CLIP_GRADIENTS"]))
    if data.get("MODEL", {}).get("META_ARCHITECTURE") == "PanopticDeepLab":
        data["MODEL"]["META_ARCHITECTURE"] = META_ARCHITECTURE
    return data


def translate_native_opts(opts: Sequence[str]) -> list[str]:
    """``KEY VALUE`` overrides with ``SOLVER.AMP`` / ``SOLVER.CLIP_GRADIENTS`` scalars rewritten."""
    if len(opts) % 2:
        raise ValueError(f"overrides must come in KEY VALUE pairs, got {list(opts)}")
    out: list[str] = []
    for key, value in zip(opts[::2], opts[1::2], strict=True):
        if key == "SOLVER.AMP":
            out += ["SOLVER.AMP.ENABLED", value]
        elif key == "SOLVER.CLIP_GRADIENTS":
            for sub, sub_value in _clip_node(float(value)).items():
                out += [f"SOLVER.CLIP_GRADIENTS.{sub}", str(sub_value)]
        elif key == "MODEL.META_ARCHITECTURE" and value == "PanopticDeepLab":
            out += [key, META_ARCHITECTURE]
        else:
            out += [key, value]
    return out


def load_config(config_file: str | None = None, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's defaults + ours, then ``config_file`` (one of ``configs/``, or any file in
    detectron2's own form), then ``opts``; checked as the native config is (a bad value is a
    :class:`ConfigError` naming the key); frozen."""
    cfg = d2_get_cfg()
    add_axial_deeplab_config(cfg)
    if config_file:
        try:  # safe YAML only: a Python tag in a config file could run code
            loaded = CfgNode.load_yaml_with_base(config_file, allow_unsafe=False)
        except yaml.YAMLError as exc:
            message = " ".join(str(exc).split())
            raise ConfigError(
                f"{config_file}: not plain YAML (tags are refused): {message}"
            ) from None
        data = translate_native_yaml(loaded)
        with _named_unknown_keys(cfg, config_file):
            cfg.merge_from_other_cfg(CfgNode(data))
    with _named_unknown_keys(cfg, "command-line override"):
        cfg.merge_from_list(translate_native_opts(opts))
    check_loaded_config(cfg, config_file, opts, input_formats=INPUT_FORMATS)
    cfg.freeze()
    return cfg


@contextlib.contextmanager
def _named_unknown_keys(cfg: CfgNode, where: str):
    """yacs' "Non-existent key" errors as one ConfigError line naming ``where`` and the nearest
    known key, as the native config does."""
    try:
        yield
    except (KeyError, AssertionError) as exc:
        key = missing_key(exc)
        if key is None:
            raise
        hint = suggest_key(key, flat_keys(cfg))
        raise ConfigError(f"{where}: unknown config key '{key}'{hint}") from None
