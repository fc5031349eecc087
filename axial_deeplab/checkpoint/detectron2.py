"""Map detectron2's Panoptic-DeepLab checkpoints (``projects/Panoptic-DeepLab`` model zoo, and the
ImageNet ``R-52.pkl`` backbone) onto our ``PanopticDeepLab``.

Reading: a zoo ``.pkl`` is ``{"model": {name: np.ndarray}, "__author__": ..., ...}``; it is read
by :class:`SafeUnpickler`, which rebuilds numpy arrays and plain containers and refuses every other
global (a pickle that names one raises :class:`pickle.UnpicklingError` naming it). A ``.pth`` is
read with ``torch.load(weights_only=True)``. A file of another kind fails on one line naming it
and why (a deeplab2 ``.tar.gz``, folder or ``.index``: with the deeplab2 converter to run).

Naming (detectron2 -> ours). detectron2 calls a conv unit ``P.weight`` + ``P.norm.*`` and a
depthwise-separable one ``P.depthwise`` + ``P.pointwise``; ours are ``Sequential`` s:

- ``backbone.stem.conv{1,2,3}`` -> ``backbone.stem.{0,3,6}`` (norms ``.{1,4,7}``);
  ``backbone.res{2..5}.i.conv{1,2,3}`` / ``.shortcut`` -> ``backbone.stages.{0..3}.i.conv{n}``
  (norm ``bn{n}``) / ``.downsample.{0,1}``;
- ``{sem_seg,ins_embed}_head.decoder.res5.project_conv`` (the ASPP): ``convs.{0..3}`` ->
  ``{semantic,instance}_decoder.context.branches.{0..3}``, ``convs.4.1`` (image pooling conv) ->
  ``context.pool_conv``, ``project`` -> ``context.project``;
- ``decoder.res{3,2}.project_conv`` / ``fuse_conv`` -> ``projections.{0,1}`` / ``fusions.{0,1}``
  (our decoders list features coarsest first);
- ``sem_seg_head.head`` / ``predictor`` -> ``semantic_head.conv`` / ``predictor``;
  ``ins_embed_head.{center,offset}_head`` / ``_predictor`` -> ``{center,offset}_head.conv`` /
  ``predictor``.

A backbone-only file (keys ``stem.*``, ``res2.*``...: detectron2's ImageNet ``R-52.pkl``, loaded
there with its matching heuristics) maps onto ``backbone.*``; an ImageNet classifier in it
(``fc``, ``fc1000``, ``linear``) is reported as ignored. The report is the shared one of
``checkpoint.mapping``: ``num_batches_tracked`` counters absent from a file keep their value and
are reported (they do not affect inference); anything else unused, any parameter or buffer of ours
left unfilled and any shape mismatch fails the conversion, naming them.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..utils.cli import add_debug_flag, one_line
from .io import (
    DEEPLAB2_FILES,
    DEEPLAB2_HINT,
    file_sha256,
    opens_like_torch_file,
    refuse_our_checkpoint,
    truncated_zip,
    weights_only_reason,
)
from .mapping import ConversionReport, Entry, apply_mapping

try:  # numpy >= 2 (numpy.core is its deprecated alias)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# (module, name) globals a detectron2 .pkl may name: numpy array/scalar reconstruction only.
_NUMPY_GLOBALS = {
    **{
        (module, name): getattr(_multiarray, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    # pickle protocol 5 writes arrays as (numpy's _frombuffer, (bytes, dtype, shape, order))
    **{
        (module, "_frombuffer"): _numeric._frombuffer
        for module in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): dict,
}
HEADS = {"sem_seg_head": "semantic", "ins_embed_head": "instance"}
CLASSIFIER = re.compile(r"(fc|fc1000|linear)\.(weight|bias)")
_SUB = r"(\.\d|\.depthwise|\.pointwise)?"
NOT_DETECTRON2 = (
    "not a detectron2 checkpoint (a pickled dict of numpy arrays, .pkl, or a torch .pth)"
)
GZIP_MAGIC = b"\x1f\x8b"  # a .tar.gz: deeplab2's downloads


class RefusedGlobalError(pickle.UnpicklingError):
    """A ``.pkl`` names a global other than numpy's array reconstruction (it could run code)."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 ``.pkl`` files: numpy arrays and builtin containers only."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        raise RefusedGlobalError(
            f"refusing to load global '{module}.{name}': a detectron2 .pkl may only hold numpy "
            "arrays in plain dicts/lists (this file could run code when unpickled)"
        )


def _to_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | np.generic):
        return torch.from_numpy(np.array(value, copy=True))
    raise ValueError(f"{name}: expected an array, got {type(value).__name__}")


def _not_detectron2(
    path: str, reason: str, *, deeplab2: bool = False, error: type[Exception] = ValueError
) -> Exception:
    """The one-line error for ``path``, which is no detectron2 checkpoint because of ``reason``;
    it points to the deeplab2 converter for a TensorFlow checkpoint (``deeplab2``, or by name)."""
    hint = f"; {DEEPLAB2_HINT}" if deeplab2 or DEEPLAB2_FILES.search(path) else ""
    return error(f"{path}: {NOT_DETECTRON2}: {reason}{hint}")


def _read_object(path: str) -> object:
    """What the file ``path`` holds: a ``.pkl`` through :class:`SafeUnpickler`, anything else
    through ``torch.load(weights_only=True)``; raises :func:`_not_detectron2` errors."""
    if os.path.isdir(path):
        raise _not_detectron2(path, "it is a folder", deeplab2=True)
    with open(path, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            raise _not_detectron2(path, "it is a gzip archive", deeplab2=True)
        if path.endswith(".pkl"):
            try:
                return SafeUnpickler(f, encoding="latin1").load()
            except RefusedGlobalError as exc:
                raise RefusedGlobalError(f"{path}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - truncated or not a pickle: name the file
                raise _not_detectron2(path, f"it does not unpickle ({one_line(exc)})") from None
    if not opens_like_torch_file(path):
        raise _not_detectron2(path, "it is neither a pickle nor the zip archive torch.save writes")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = (
            "it holds objects besides tensors and plain values, not loaded as they could run "
            f"code ({weights_only_reason(exc)})"
        )
        raise _not_detectron2(path, reason, error=pickle.UnpicklingError) from None
    except Exception as exc:  # noqa: BLE001 - truncated torch file: name the file
        if truncated_zip(path):
            raise _not_detectron2(path, "it is truncated or corrupt (an interrupted download or "
                                  "copy?): its zip archive has no end") from None  # fmt: skip
        raise _not_detectron2(path, f"torch cannot read it ({one_line(exc)})") from None


def load_detectron2_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a detectron2 ``.pkl`` (safe unpickling) or ``.pth`` (weights only)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _read_object(path)
    refuse_our_checkpoint(obj, path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected {{name: array}}, got {type(obj).__name__}")
    try:
        return {k.removeprefix("module."): _to_tensor(k, v) for k, v in obj.items()}
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _unit(base: str, sub: str | None) -> tuple[str, str]:
    """Our (conv, norm) module paths for detectron2's conv unit ``sub`` of a module at ``base``."""
    if not sub or sub == ".depthwise":
        return f"{base}.0", f"{base}.1"
    if sub == ".pointwise":
        return f"{base}.3", f"{base}.4"
    return f"{base}{sub}.0", f"{base}{sub}.1"  # ".j": j-th conv of two


def _backbone(m: re.Match, ctx: dict) -> tuple[str, str]:
    if m["stem"]:
        i = 3 * (int(m["stem"]) - 1)
        return f"backbone.stem.{i}", f"backbone.stem.{i + 1}"
    block = f"backbone.stages.{int(m['res']) - 2}.{m['block']}"
    if m["conv"] == "shortcut":
        return f"{block}.downsample.0", f"{block}.downsample.1"
    n = m["conv"][-1]
    return f"{block}.conv{n}", f"{block}.bn{n}"


def _decoder(m: re.Match, ctx: dict) -> tuple[str, str] | None:
    name = HEADS[m["head"]]
    features = ctx[name]  # our decoder's in_features, coarsest first
    dec = f"{name}_decoder"
    if m["feat"] not in features:
        return None
    index = features.index(m["feat"]) - 1
    part, rest = m["part"], m["rest"] or ""
    if index < 0:  # the ASPP on the coarsest feature
        aspp = re.fullmatch(r"\.convs\.(\d)(\.1|\.depthwise|\.pointwise)?|\.project", rest)
        if part != "project_conv" or aspp is None:
            return None
        if rest == ".project":
            return _unit(f"{dec}.context.project", None)
        branch = int(aspp[1])
        if branch == ctx[f"{name}_branches"]:  # image pooling: AdaptiveAvgPool / AvgPool, conv
            return (f"{dec}.context.pool_conv", "") if aspp[2] == ".1" else None
        return _unit(f"{dec}.context.branches.{branch}", aspp[2])
    if part == "project_conv" and not rest:
        return _unit(f"{dec}.projections.{index}", None)
    if part == "fuse_conv" and re.fullmatch(_SUB, rest):
        return _unit(f"{dec}.fusions.{index}", rest)
    return None


def _head(m: re.Match, ctx: dict) -> tuple[str, str]:
    return _unit(HEAD_MODULES[m["module"]], m["sub"])


def _predictor(m: re.Match, ctx: dict) -> tuple[str, str]:
    return PREDICTORS[m[0]], ""


HEAD_MODULES = {
    "sem_seg_head.head": "semantic_head.conv",
    "ins_embed_head.center_head": "center_head.conv",
    "ins_embed_head.offset_head": "offset_head.conv",
}
PREDICTORS = {
    "sem_seg_head.predictor": "semantic_head.predictor",
    "ins_embed_head.center_predictor": "center_head.predictor",
    "ins_embed_head.offset_predictor": "offset_head.predictor",
}
# detectron2 module path -> our (conv, norm) module paths (None: no counterpart).
Rule = Callable[[re.Match, dict], "tuple[str, str] | None"]
RULES: list[tuple[re.Pattern, Rule]] = [
    (
        re.compile(
            r"backbone\.(?:stem\.conv(?P<stem>[123])"
            r"|res(?P<res>[2-5])\.(?P<block>\d+)\.(?P<conv>conv[123]|shortcut))"
        ),
        _backbone,
    ),
    (
        re.compile(
            r"(?P<head>sem_seg_head|ins_embed_head)\.decoder\.(?P<feat>res\d)\."
            r"(?P<part>project_conv|fuse_conv)(?P<rest>\..*)?"
        ),
        _decoder,
    ),
    (
        re.compile(
            r"(?P<module>sem_seg_head\.head|ins_embed_head\.(?:center|offset)_head)"
            r"(?P<sub>\.\d|\.depthwise|\.pointwise)?"
        ),
        _head,
    ),
    (re.compile("|".join(re.escape(k) for k in PREDICTORS)), _predictor),
]
_LEAF = re.compile(r"(?P<module>.+?)(?P<norm>\.norm)?\.(?P<leaf>[a-z_]+)")


def our_name(name: str, ctx: dict) -> str | None:
    """Our state-dict name for detectron2's ``name`` (None when it has no counterpart)."""
    m = _LEAF.fullmatch(name)
    if m is None:
        return None
    for pattern, rule in RULES:
        found = pattern.fullmatch(m["module"])
        if found:
            paths = rule(found, ctx)
            if paths is None:
                return None
            path = paths[1] if m["norm"] else paths[0]
            return f"{path}.{m['leaf']}" if path else None
    return None


def check(report: ConversionReport, src: str = "the checkpoint", config: str = "given") -> None:
    """Raise a one-line ``ValueError`` naming ``src``, counting the problems of ``report`` and
    blaming ``config`` when the conversion is not complete (``report.lines()`` lists them)."""
    if not report.ok:
        raise ValueError(
            f"{src}: {report.summary()}: the config {config} does not fit this checkpoint"
        )


def decoder_context(model: nn.Module) -> dict:
    """What the name mapping needs from our model: each decoder's features (coarsest first) and
    its number of ASPP conv branches (detectron2's image pooling comes after them)."""
    ctx: dict = {}
    for name in HEADS.values():
        decoder = getattr(model, f"{name}_decoder")
        ctx[name] = list(decoder.in_features)
        ctx[f"{name}_branches"] = len(getattr(decoder.context, "branches", ()))
    return ctx


def is_backbone_only(names) -> bool:
    """True for an ImageNet backbone file (``stem.*``, ``res2.*``..., no ``backbone.`` prefix)."""
    return not any(n.startswith(("backbone.", *HEADS)) for n in names) and any(
        n.startswith("stem.") for n in names
    )


def mapping_entries(names, model: nn.Module) -> list[Entry]:
    """``Entry(detectron2 name, our name)`` for every name that has a counterpart in ``model``'s
    naming (backbone-only names are read under ``backbone.``)."""
    ctx = decoder_context(model)
    prefix = "backbone." if is_backbone_only(names) else ""
    entries = []
    for name in names:
        ours = our_name(prefix + name, ctx)
        if ours is not None:
            entries.append(Entry(name, ours))
    return entries


def convert_state_dict(
    source: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """detectron2 ``source`` -> our state dict for ``model`` (a ``PanopticDeepLab``; on the meta
    device only shapes are checked) and the shared report (``checkpoint.mapping``). A
    backbone-only ``source`` fills ``backbone.*`` and the result holds only those names."""
    state = model.state_dict()
    if is_backbone_only(source):
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    arrays = {
        k: v.detach().cpu().numpy() if not v.is_meta else _shape_only(v) for k, v in source.items()
    }
    return apply_mapping(
        arrays,
        mapping_entries(list(source), model),
        state,
        ignore=lambda name: "ImageNet classifier" if CLASSIFIER.fullmatch(name) else None,
    )


def _shape_only(tensor: torch.Tensor) -> np.ndarray:
    return np.broadcast_to(np.float32(0), tuple(tensor.shape))


def save_converted(path: str, state_dict: dict[str, torch.Tensor], *, cfg, source: dict) -> None:
    """Write a converted state dict (weights-only loadable) with its config, class metadata and
    provenance: the one place the output format is chosen. A config whose data sets are not
    built in gives a file without class metadata (as ``convert_deeplab2``)."""
    from ..data.metadata import config_class_metadata
    from .io import save_checkpoint_file

    metadata = config_class_metadata(cfg)
    save_checkpoint_file(path, state_dict, config=cfg, metadata=metadata, source=source)


def convert_file(
    src: str, dst: str, *, config_file: str, opts: list[str] = (), verbose: bool = False
) -> ConversionReport:
    """Convert detectron2 checkpoint ``src`` for the model of ``config_file`` (+ ``opts``) and write
    ``dst``; prints the report and raises ``ValueError`` (writing nothing) when it is incomplete."""
    from ..config import load_config
    from ..data.metadata import check_head_fits_metadata
    from ..modeling.build import build_model
    from ..utils.cli import check_output_file
    from .zoo import differences_from_zoo_config

    check_output_file(dst, "output", "model.pth", inputs=[src])
    source_state = load_detectron2_file(src)
    cfg = load_config(config_file, list(opts))
    check_head_fits_metadata(cfg, config_file)
    warning = differences_from_zoo_config(src, cfg, opts)
    if warning:
        print(warning)
    model = build_model(cfg)
    state, report = convert_state_dict(source_state, model)
    print("\n".join(report.lines()))
    if verbose:
        print(
            "\n".join(
                f"{e.source} -> {e.target}" for e in mapping_entries(list(source_state), model)
            )
        )
    check(report, src, config_file)
    source = {
        "format": "detectron2",
        "file": os.path.basename(src),
        "sha256": file_sha256(src),
        "converter": __name__,
        "backbone_only": is_backbone_only(source_state),
    }
    save_converted(dst, state, cfg=cfg, source=source)
    print(f"wrote {len(state)} tensors to {dst}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``convert_detectron2.py MODEL.pkl OUT.pth --config-file CFG [KEY VALUE ...]``; errors are
    one line (``--debug``: with the traceback)."""
    from ..utils.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="detectron2 checkpoint (.pkl from the model zoo, or .pth)")
    parser.add_argument("output", help="our checkpoint to write (torch.load weights_only)")
    parser.add_argument("--config-file", required=True, help="our config of the same model")
    parser.add_argument("--verbose", action="store_true", help="print every name mapping")
    parser.add_argument("opts", nargs="*", help="config overrides, KEY VALUE pairs")
    add_debug_flag(parser)
    args = parser.parse_intermixed_args(argv)
    convert_file(  # its errors: one line on stderr, "error: ...", exit status 1 (run_cli)
        args.input, args.output, config_file=args.config_file, opts=args.opts,
        verbose=args.verbose,
    )  # fmt: skip
    return 0
