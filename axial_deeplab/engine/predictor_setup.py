"""From a checkpoint to a :class:`.inference.Predictor`, as ``tools/infer.py`` and the demo do.

The config is the one stored in the checkpoint (or ``--config-file``), then ``KEY VALUE``
overrides, then the command-line flags (which win); the class names come from ``--class-names``,
else the checkpoint, else the config's data set (:func:`.class_names.choose_metadata`).
:func:`load_predictor` is the same in one call, for Python users.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import yaml

from ..checkpoint.io import load_checkpoint_file
from ..config import CfgNode, ConfigError, get_cfg, load_config
from ..config.checks import check_config, differing_model_keys
from ..config.config import check_overrides, drop_retired_keys
from ..layers.precision import autocast_name
from .class_names import choose_metadata, named_classes
from .inference import Predictor, build_predictor, check_backend_suffix, resolve_device


def _overrides(args: argparse.Namespace) -> list[str]:
    """``KEY VALUE`` overrides, then the CLI flags as overrides (which win)."""
    opts = list(args.opts)
    check_overrides(opts)  # options after the overrides, an odd count: named
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    if args.tta_flip or args.tta_scales:
        scales = args.tta_scales or [1.0]
        opts += ["TEST.AUG.ENABLED", "True", "TEST.AUG.FLIP", str(bool(args.tta_flip))]
        opts += ["TEST.AUG.SCALES", str([float(s) for s in scales])]
    if args.amp:
        opts += ["TEST.AMP", "True"]
    return opts


def config_from_yaml(text: str, opts: list[str], *, source: str):
    """Defaults, then the full config ``text`` (stored in checkpoint ``source``), then ``opts``."""
    cfg = get_cfg()
    try:
        tree = yaml.safe_load(text)
        dropped = drop_retired_keys(tree) if isinstance(tree, dict) else []
        if dropped:
            print(f"{source}: ignoring retired config keys it stores: {', '.join(dropped)}")
        cfg.merge_from_other_cfg(CfgNode(tree))
    except (yaml.YAMLError, KeyError, ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(
            f"{source}: the config stored in it does not load ({exc}); pass --config-file"
        ) from None
    cfg.merge_from_list(opts)
    try:
        check_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: stored config with overrides: {exc}") from None
    cfg.freeze()
    return cfg


def model_differences(cfg, stored_yaml: str) -> list[str]:
    """``MODEL.*`` keys (but ``WEIGHTS`` and ``DEVICE``) whose values differ between ``cfg`` and
    the stored config text, as ``"KEY: stored A, used B"``."""
    stored = yaml.safe_load(stored_yaml) or {}
    return [f"{k}: stored {a!r}, used {b!r}" for k, a, b in differing_model_keys(stored, cfg)]


def notice_config_differences(cfg, stored_yaml: str, config_file: str, weights: str) -> None:
    """Print which ``MODEL`` keys of ``cfg`` (read from ``config_file``) differ from the config
    stored in ``weights``: some (output stride, ASPP rates) change the outputs of the same
    tensors, so nothing else would tell."""
    diffs = model_differences(cfg, stored_yaml)
    if diffs:
        print(f"notice: --config-file {config_file} is used, not the config stored in {weights}; "
              f"their MODEL sections differ in {len(diffs)} keys: "
              + "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else ""))  # fmt: skip


def config_from_args(args: argparse.Namespace, stored_config: str | None = None):
    """``--config-file`` (else ``stored_config``, the config inside ``--weights``, else the
    defaults), then ``KEY VALUE`` overrides, then the CLI flags (which win)."""
    opts = _overrides(args)
    if stored_config is None or args.config_file:
        cfg = load_config(args.config_file or None, opts)
        if stored_config:
            notice_config_differences(cfg, stored_config, args.config_file, args.weights)
        return cfg
    print(f"config: stored in {args.weights}")
    return config_from_yaml(stored_config, opts, source=args.weights)


def read_checkpoint_info(args: argparse.Namespace) -> tuple[str | None, dict | None]:
    """The config text and class metadata stored in ``--weights`` (``None`` where absent).

    A checkpoint without a config needs ``--config-file`` or, at least, ``KEY VALUE`` overrides
    that turn the defaults into its model; with neither this raises an error saying so."""
    if not args.weights:
        return None, None
    check_backend_suffix(args.weights, "torch")
    stored = load_checkpoint_file(args.weights, mmap=True)
    if stored.config_yaml is None and not args.config_file:
        if not args.opts:
            raise ConfigError(
                f"{args.weights} carries no config: pass --config-file with the model's YAML "
                "(the config it was trained or converted with), or KEY VALUE overrides of the "
                "defaults; checkpoints written by tools/train_net.py or the converters carry theirs"
            )
        print(f"notice: {args.weights} carries no config: the defaults with your KEY VALUE "
              "overrides describe its model")  # fmt: skip
    return stored.config_yaml, stored.metadata


def predictor_from_config(args: argparse.Namespace, cfg, stored_metadata: dict | None) -> Predictor:
    """The predictor of ``cfg`` with the class names ``choose_metadata`` picks (printed), checked
    against the model's class count: what ``tools/infer.py``, the demo and :func:`load_predictor`
    run."""
    device = resolve_device(cfg.MODEL.DEVICE)
    metadata, source = choose_metadata(args, cfg, stored_metadata)
    print(f"class names: {source}")
    if cfg.TEST.AMP:
        print(f"mixed precision (TEST.AMP): {autocast_name(device.type)} on {device.type}")
    sem = cfg.MODEL.SEM_SEG_HEAD
    if len(metadata.class_names) != named_classes(cfg):
        void = (
            f" with one void channel (VOID_CLASS {sem.VOID_CLASS})" if sem.VOID_CLASS >= 0 else ""
        )
        raise ValueError(
            f"{source} names {len(metadata.class_names)} classes but "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {sem.NUM_CLASSES}{void}"
        )
    return build_predictor(cfg, metadata, device)


def load_predictor(
    weights: str | os.PathLike,
    opts: Sequence[str] = (),
    *,
    config_file: str = "",
    class_names: str = "",
    device: str = "",
) -> Predictor:
    """The :class:`Predictor` that ``tools/infer.py --weights WEIGHTS`` runs: the config stored in
    the checkpoint (or ``config_file``) with ``KEY VALUE`` ``opts``, its class names (or those of
    the ``class_names`` file), post-processing, TTA, test size and padding from the config::

        predictor = load_predictor("model_final.pth")
        prediction = predictor.predict(rgb)  # [H, W, 3] uint8 RGB numpy array
    """
    args = argparse.Namespace(
        weights=os.fspath(weights), config_file=config_file, opts=list(opts), device=device,
        tta_flip=False, tta_scales=None, amp=False, class_names=class_names, thing_ids=None,
    )  # fmt: skip
    stored_config, stored_metadata = read_checkpoint_info(args)
    return predictor_from_config(args, config_from_args(args, stored_config), stored_metadata)
