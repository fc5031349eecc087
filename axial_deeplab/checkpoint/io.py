"""Atomic checkpoint writing and safe (``weights_only``) loading.

A checkpoint file that inference can use on its own (:func:`save_checkpoint_file`) holds::

    {"model": state dict (name -> tensor),
     "config": the model's full config as YAML text,
     "metadata": {"class_names": [str], "thing_ids": [int], "label_divisor": int,
                  "class_colors": [[R, G, B]] (optional)},
     "source": provenance, e.g. {"format": "deeplab2", "file": ..., "sha256": ..., "converter": ...},
     "format_version": 1}

(absent entries are left out). Our training checkpoints add the same ``config``, ``metadata`` and
``format_version`` to their optimizer, scheduler and RNG states. Only str, int, float, bool,
None, lists, dicts and tensors are stored, so ``torch.load(weights_only=True)`` reads every file.
"""

from __future__ import annotations

import glob
import hashlib
import numbers
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from ..utils.atomic import atomic_write

FORMAT_VERSION = 1
METADATA_FIELDS = ("class_names", "thing_ids", "label_divisor", "class_colors")
_WRAPPERS = ("model", "state_dict")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, ".pth", write)


@dataclass(frozen=True)
class CheckpointFile:
    """What :func:`load_checkpoint_file` read: the weights and, when the file has them, the config
    YAML, the class metadata (validated) and the provenance."""

    state_dict: dict[str, torch.Tensor]
    config_yaml: str | None = None
    metadata: dict | None = None
    source: dict | None = None


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with tuples as lists, checked to hold only str/int/float/bool/None/list/dict."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: keys must be strings, got {bad}")
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored (str, int, float, list, dict)")


def _int(value: Any, where: str) -> int:
    """``int(value)`` for any integer type but bool (numpy integers included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{where}: expected an int, got {value!r}")
    return int(value)


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list of ints, got {type(value).__name__}")
    return [_int(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _class_names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where}: expected a non-empty list of names, got {value!r:.80}")
    bad = [i for i, n in enumerate(value) if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"{where}: entries {bad[:5]} are not non-empty strings")
    return list(value)


def _colors(value: Any, num_classes: int, where: str) -> list[list[int]]:
    if not isinstance(value, list | tuple) or len(value) != num_classes:
        count = len(value) if isinstance(value, list | tuple) else type(value).__name__
        raise ValueError(f"{where}: expected {num_classes} [R, G, B] colours, got {count}")
    colors = [_int_list(c, f"{where}[{i}]") for i, c in enumerate(value)]
    bad = [i for i, c in enumerate(colors) if len(c) != 3 or not all(0 <= v <= 255 for v in c)]
    if bad:
        raise ValueError(f"{where}: entries {bad[:5]} are not [R, G, B] in 0..255")
    return colors


def validate_metadata(metadata: Any, where: str) -> dict:
    """``metadata`` checked and normalised (lists, ints); errors name ``where`` and the field."""
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{where}: metadata must be a dict, got {type(metadata).__name__}")
    unknown = sorted(set(metadata) - set(METADATA_FIELDS))
    missing = [k for k in METADATA_FIELDS[:3] if k not in metadata]
    if unknown or missing:
        raise ValueError(
            f"{where}: metadata needs {list(METADATA_FIELDS[:3])} (and optionally "
            f"'class_colors'); missing {missing}, unknown {unknown}"
        )
    names = _class_names(metadata["class_names"], f"{where}: metadata['class_names']")
    things = _int_list(metadata["thing_ids"], f"{where}: metadata['thing_ids']")
    outside = [t for t in things if not 0 <= t < len(names)]
    if outside or len(set(things)) != len(things):
        raise ValueError(
            f"{where}: metadata['thing_ids'] {things} must be distinct train ids in "
            f"[0, {len(names)}) for {len(names)} class names; outside: {outside}"
        )
    divisor = _int(metadata["label_divisor"], f"{where}: metadata['label_divisor']")
    if divisor < 1:
        raise ValueError(f"{where}: metadata['label_divisor'] must be >= 1, got {divisor}")
    out = {"class_names": names, "thing_ids": things, "label_divisor": divisor}
    if metadata.get("class_colors") is not None:
        where_colors = f"{where}: metadata['class_colors']"
        out["class_colors"] = _colors(metadata["class_colors"], len(names), where_colors)
    return out


def _config_yaml(config: Any, where: str) -> str:
    """The YAML text of a yacs ``CfgNode`` (its ``dump()``) or of a YAML string (checked)."""
    text = config.dump() if hasattr(config, "dump") else config
    if not isinstance(text, str):
        raise TypeError(f"{where}: config must be a CfgNode or YAML text, got {type(config)}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: config is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: config YAML must be a mapping, got {type(data).__name__}")
    return text


def checkpoint_entries(
    *, config: Any = None, metadata: Mapping | None = None, source: Mapping | None = None
) -> dict[str, Any]:
    """The ``config`` / ``metadata`` / ``source`` / ``format_version`` entries of a checkpoint,
    checked and in weights-only-loadable form (see the module docstring); ``None`` left out."""
    entries: dict[str, Any] = {"format_version": FORMAT_VERSION}
    if config is not None:
        entries["config"] = _config_yaml(config, "checkpoint")
    if metadata is not None:
        entries["metadata"] = validate_metadata(metadata, "checkpoint")
    if source is not None:
        if not isinstance(source, Mapping):
            raise TypeError(f"checkpoint: source must be a dict, got {type(source).__name__}")
        entries["source"] = _plain(source, "checkpoint: source")
    return entries


def save_checkpoint_file(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    config: Any = None,
    metadata: Mapping | None = None,
    source: Mapping | None = None,
) -> None:
    """Write ``state_dict`` with its ``config`` (CfgNode or YAML text), class ``metadata`` and
    ``source`` (provenance) atomically; :func:`load_checkpoint_file` reads it back."""
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"{os.fspath(path)}: state_dict entries {bad[:5]} are not name -> tensor")
    entries = checkpoint_entries(config=config, metadata=metadata, source=source)
    save_atomic({"model": dict(state_dict), **entries}, path)


# Files of the checkpoints users download that must be converted before they load:
# deeplab2's TensorFlow checkpoints and detectron2's model-zoo pickles.
DEEPLAB2_FILES = re.compile(r"(\.index|\.data-\d+-of-\d+|\.tar\.gz|\.tgz)$")
DEEPLAB2_HINT = (
    "a deeplab2 (TensorFlow) checkpoint? Convert it first: python tools/convert_deeplab2.py "
    "CKPT OUT.pth --config-file configs/.../X.yaml"
)
_CONVERT_FIRST = (
    (DEEPLAB2_FILES, DEEPLAB2_HINT),
    (re.compile(r"\.pkl$"), "a detectron2 model-zoo pickle? Convert it first: python "
     "tools/convert_detectron2.py MODEL.pkl OUT.pth --config-file configs/.../X.yaml"),
)  # fmt: skip


def _convert_first_hint(path: str) -> str:
    for pattern, hint in _CONVERT_FIRST:
        if pattern.search(path):
            return f" ({hint})"
    return ""


def weights_only_reason(exc: pickle.UnpicklingError) -> str:
    """The reason in ``torch.load(weights_only=True)``'s refusal, on one line: torch's message
    around it suggests ``weights_only=False``, which would let the file run code."""
    return str(exc).rsplit("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0]


def opens_like_torch_file(path: str) -> bool:
    """Whether the file ``path`` starts as ``torch.save`` writes: a zip archive or (before
    PyTorch 1.6) a pickle of protocol 2+, which opens with 0x80."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def truncated_zip(path: str) -> bool:
    """Whether ``path`` starts as a zip archive (``torch.save``'s format) but has no end."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def refuse_our_checkpoint(obj: Any, path: str) -> None:
    """ValueError when ``obj``, loaded from ``path`` by a converter, is a checkpoint this toolkit
    wrote (weights with their config): there is nothing to convert."""
    if isinstance(obj, Mapping) and "format_version" in obj and "model" in obj:
        raise ValueError(
            f"{path} is already a checkpoint of this toolkit (it stores its config): use it as it "
            "is (MODEL.WEIGHTS, --weights); there is nothing to convert"
        )


def load_torch_file(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing file, or one that is not a
    weights-only torch file, raises naming it (and the converter to run, for downloads).

    ``mmap``: a zip-format file's tensors are mapped, not read (read when used), for callers that
    only want the config or metadata stored beside the weights: a 550 MB checkpoint then takes
    0.05 s instead of 0.4-1.4 s and no memory. Old pickle-format files are read whole."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path} is a folder, not a checkpoint file"
            f"{_convert_first_hint('.index') if glob.glob(os.path.join(path, '*.index')) else ''}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not opens_like_torch_file(path):
        raise ValueError(
            f"{path} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor "
            f"a pickle){_convert_first_hint(path)}"
        )
    if truncated_zip(path):
        raise ValueError(
            f"{path} is truncated or corrupt (an interrupted download or copy?): it starts as "
            "the zip archive torch.save writes but its end (the central directory) is missing"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about any pickle protocol but 2 (e.g. detectron2's .pkl files) before
            # refusing or reading the file; the refusal below says what matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            mapped = mmap and zipfile.is_zipfile(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"cannot load {path} as a weights-only checkpoint: it holds more than tensors and "
            f"plain values ({weights_only_reason(exc)}); such files are not loaded, as "
            f"unpickling them could run code{_convert_first_hint(path)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(
            f"cannot load {path} as a weights-only checkpoint: {exc}{_convert_first_hint(path)}"
        ) from exc


def _state_dict_of(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"model": ...}``/``{"state_dict": ...}`` and a ``module.`` prefix."""
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; unwraps ``{"model": ...}``/``{"state_dict": ...}``
    and a ``module.`` prefix left by ``DataParallel``/``DistributedDataParallel``."""
    return _state_dict_of(load_torch_file(path), os.fspath(path))


def _entries_of(obj: Any, path: str) -> dict[str, Any]:
    """The checked ``config``/``metadata``/``source`` of a wrapped checkpoint (else empty)."""
    if not isinstance(obj, Mapping) or not any(isinstance(obj.get(k), Mapping) for k in _WRAPPERS):
        return {}
    version = obj.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version!r} is newer than this axial-deeplab reads "
            f"({FORMAT_VERSION}); update axial-deeplab"
        )
    config, metadata, source = obj.get("config"), obj.get("metadata"), obj.get("source")
    if config is not None and not isinstance(config, str):
        raise ValueError(f"{path}: 'config' must be YAML text, got {type(config).__name__}")
    if config is not None:
        _config_yaml(config, path)
    if source is not None and not isinstance(source, Mapping):
        raise ValueError(f"{path}: 'source' must be a dict, got {type(source).__name__}")
    return {
        "config_yaml": config,
        "metadata": None if metadata is None else validate_metadata(metadata, path),
        "source": None if source is None else dict(source),
    }


def load_checkpoint_file(path: str | os.PathLike, *, mmap: bool = False) -> CheckpointFile:
    """Load a checkpoint (ours, converted, or a bare state dict) weights-only, with its config,
    class metadata and provenance when it carries them (see the module docstring). ``mmap``: see
    :func:`load_torch_file` (to read the config or metadata of a large file)."""
    obj = load_torch_file(path, mmap=mmap)
    path = os.fspath(path)
    return CheckpointFile(state_dict=_state_dict_of(obj, path), **_entries_of(obj, path))


class BackboneOnlyError(ValueError):
    """A backbone-only checkpoint where a whole model's weights are needed (``load_weights``)."""


def describe_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """One line on how ``state`` differs from ``model``'s state dict: counts of shape mismatches,
    missing and unexpected tensors, with the first few names and shapes."""
    own = model.state_dict()
    shapes = [
        f"{k} {list(v.shape)} in the file, {list(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and torch.is_tensor(v) and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    parts = []
    for what, names in (("differ in shape", shapes), ("are missing from the file", missing),
                        ("are not in the model", unexpected)):  # fmt: skip
        if names:
            parts.append(f"{len(names)} tensors {what} (e.g. {'; '.join(names[:3])})")
    return f"{len(state)} tensors in the file, {len(own)} in the model: " + ", ".join(parts)


class DamagedWeightsError(ValueError):
    """A checkpoint's tensors hold NaN or infinite values."""


def check_finite(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Raise :class:`DamagedWeightsError` naming the first floating-point tensors of ``state``
    that hold NaN or infinite values (a diverged training, a damaged file): a model with them
    predicts nothing (NaN logits), silently."""
    bad = [
        name for name, t in state.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]  # fmt: skip
    if bad:
        first = state[bad[0]]
        count = int((~torch.isfinite(first)).sum())
        raise DamagedWeightsError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[0]} "
            f"({count} of {first.numel()}): the weights are damaged (a diverged training?); "
            "use an earlier checkpoint"
        )


def load_weights(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    whole: bool = False,
    state: Mapping[str, torch.Tensor] | None = None,
    hint: Callable[[], str] | None = None,
) -> str:
    """Load ``MODEL.WEIGHTS`` into ``model`` strictly: a whole model, or, when every key lies
    under ``backbone.`` (a converted ImageNet checkpoint), its backbone only (the decoders and
    heads keep their initialisation, for fine-tuning). Returns ``"model"`` or ``"backbone"``.
    Weights that do not fit raise a one-line ``ValueError`` naming the file and the mismatches.

    ``whole``: the model must get all its weights (inference, evaluation, export): a
    backbone-only file raises ``BackboneOnlyError``, before anything is loaded. ``state``: the
    file's state dict when already read (``path`` then only names it). ``hint()``: said of the
    file before the (long, maybe shortened) list of mismatches."""
    state = load_state_dict_file(path) if state is None else state
    check_finite(state, os.fspath(path))
    prefix = "backbone."
    if state and all(k.startswith(prefix) for k in state) and hasattr(model, "backbone"):
        if whole:
            raise BackboneOnlyError(
                f"{os.fspath(path)} holds backbone weights only ({len(state)} tensors, e.g. a "
                "converted ImageNet checkpoint): the decoders and heads would be random. Train "
                f"or fine-tune from it first (tools/train_net.py ... MODEL.WEIGHTS {os.fspath(path)})"
            )
        sub = {k[len(prefix) :]: v for k, v in state.items()}
        try:
            model.backbone.load_state_dict(sub)
        except RuntimeError:
            detail = describe_mismatch(model.backbone, sub)
            said = hint() if hint else ""
            raise ValueError(
                f"{os.fspath(path)}: backbone weights do not fit{said}: {detail}"
            ) from None
        return "backbone"
    try:
        model.load_state_dict(state)
    except RuntimeError:
        detail = describe_mismatch(model, state)
        said = hint() if hint else ""
        raise ValueError(
            f"{os.fspath(path)}: weights do not fit the model{said}: {detail}"
        ) from None
    return "model"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a converted checkpoint's provenance), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
