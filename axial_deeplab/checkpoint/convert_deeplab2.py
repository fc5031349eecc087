"""``tools/convert_deeplab2.py``: a deeplab2 checkpoint as downloaded -> a weights-only ``.pth``.

    python tools/convert_deeplab2.py axial_swidernet_1_1_1_os16_axial_deeplab_cityscapes_trainfine.tar.gz \\
        axial_swidernet_1_1_1_os16.pth \\
        --config-file configs/cityscapes/deeplab2/axial_swidernet_1_1_1_os16.yaml

Reads the checkpoint (a ``.tar.gz``, its folder, or a ``ckpt-N`` prefix) with TensorFlow's
reader when TensorFlow is installed (``pip install -e ".[deeplab2]"``), else with the built-in
reader of ``tf_checkpoint.py`` (``--reader`` chooses); maps every variable onto the model of
``--config-file`` (``deeplab2.py``), prints a report and fails if a variable is unused or a model
tensor unfilled (optimizer slots and step counters are ignored, and counted), on a last line that
names the zoo configs whose variables fit the checkpoint better, if any. deeplab2 keeps no
moving-average copy of the weights (its trainer has no EMA); if a checkpoint holds one anyway
(``ExponentialMovingAverage`` names), the raw weights are converted, as deeplab2's own evaluator
restores them, and the report says so. ``--backbone-only`` converts an ImageNet encoder checkpoint
into a backbone state dict (``backbone.*`` keys) loadable through ``MODEL.WEIGHTS`` for training.
The output carries the config, the class metadata of the config's data set and the provenance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np
import torch

from ..config import load_config
from ..data.metadata import check_head_fits_metadata, config_class_metadata
from ..modeling.build import build_model
from ..utils.cli import add_debug_flag, run_cli
from .deeplab2 import better_zoo_models, deeplab2_entries, ignore_reason
from .io import file_sha256, save_checkpoint_file
from .mapping import ConversionReport, apply_mapping
from .tf_checkpoint import (
    CorruptCheckpointError,
    archive_errors,
    checkpoint_files,
    read_checkpoint,
    resolve_checkpoint,
)
from .zoo import differences_from_zoo_config

EMA_MARKERS = ("ExponentialMovingAverage", "/average/")


def read_variables(prefix: str, reader: str = "auto") -> tuple[dict[str, np.ndarray], str]:
    """Every numeric variable of the checkpoint ``prefix``, and the reader used."""
    if reader in ("auto", "tf"):
        try:
            import tensorflow as tf
        except ImportError:
            if reader == "tf":
                raise ImportError(
                    "--reader tf needs TensorFlow: pip install -e '.[deeplab2]' "
                    "(or use --reader builtin)"
                ) from None
        else:
            try:
                ckpt = tf.train.load_checkpoint(prefix)
                names = [n for n, t in ckpt.get_variable_to_dtype_map().items() if t != tf.string]
                return {n: ckpt.get_tensor(n) for n in names}, f"tensorflow {tf.__version__}"
            except tf.errors.OpError as exc:  # e.g. "Checksum does not match"
                message = f"TensorFlow cannot read {prefix}: {exc.message}"
                raise CorruptCheckpointError(message) from None
    return read_checkpoint(prefix), "builtin"


def convert(
    variables: dict[str, np.ndarray], model: torch.nn.Module, *, backbone_only: bool = False
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """deeplab2 ``variables`` -> ``model``'s state dict (its backbone's with ``backbone_only``)."""
    target = model.backbone if backbone_only else model
    state, report = apply_mapping(
        variables, deeplab2_entries(target), target.state_dict(), ignore=ignore_reason
    )
    if any(marker in name for name in variables for marker in EMA_MARKERS):
        report.notes.append(
            "the checkpoint holds moving-average copies: the raw weights were converted, as "
            "deeplab2's evaluator restores them"
        )
    else:
        report.notes.append("no moving-average weights in the checkpoint (deeplab2 keeps none)")
    if backbone_only:
        state = {f"backbone.{k}": v for k, v in state.items()}
    return state, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="deeplab2 .tar.gz, its folder, or a ckpt-N prefix")
    parser.add_argument("output", help="the .pth file to write")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="our config")
    parser.add_argument("--reader", choices=("auto", "tf", "builtin"), default="auto")
    parser.add_argument("--backbone-only", action="store_true", help="ImageNet encoder checkpoint")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides KEY VALUE ...")
    add_debug_flag(parser)
    return parser.parse_intermixed_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Convert, print the report, write the file; returns a summary (raises on failure)."""
    from ..utils.cli import check_output_file

    if not any(os.path.exists(p) for p in (args.checkpoint, f"{args.checkpoint}.index")):
        raise FileNotFoundError(
            f"checkpoint not found: {args.checkpoint} (a .tar.gz, its folder or a ckpt-N prefix)"
        )
    check_output_file(args.output, "output", "model.pth", inputs=checkpoint_files(args.checkpoint))
    cfg = load_config(args.config_file, args.opts)
    if not args.backbone_only:
        check_head_fits_metadata(cfg, args.config_file)
    warning = differences_from_zoo_config(args.checkpoint, cfg, args.opts)
    if warning:
        print(warning)
    model = build_model(cfg)
    with (
        tempfile.TemporaryDirectory(prefix="deeplab2-") as work,
        archive_errors(args.checkpoint, work),
    ):
        prefix = resolve_checkpoint(args.checkpoint, work)
        variables, reader = read_variables(prefix, args.reader)
        state, report = convert(variables, model, backbone_only=args.backbone_only)
        index_sha = file_sha256(prefix + ".index")
    which = os.path.basename(prefix)  # the ckpt-N a folder's 'checkpoint' file (or the last) names
    print(f"read {len(variables)} variables from {args.checkpoint} ({which}, {reader} reader)")
    print("\n".join(report.lines()))
    if not report.ok:
        raise SystemExit(failure_line(args, cfg, variables, report))
    source = {
        "format": "deeplab2",
        "file": os.path.basename(os.fspath(args.checkpoint)),
        "index_sha256": index_sha,
        "reader": reader,
        "converter": "axial_deeplab.checkpoint.convert_deeplab2",
        "backbone_only": bool(args.backbone_only),
    }
    save_checkpoint_file(
        args.output,
        state,
        config=None if args.backbone_only else cfg,
        metadata=None if args.backbone_only else config_class_metadata(cfg),
        source=source,
    )
    print(f"wrote {args.output} ({sum(v.numel() for v in state.values()):,} values)")
    return {"report": report, "output": args.output, "tensors": len(state)}


def failure_line(
    args: argparse.Namespace, cfg, variables: dict[str, np.ndarray], report: ConversionReport
) -> str:
    """The last line of a failed conversion: its counts, and the zoo configs whose variables
    fit the checkpoint better than ``--config-file``'s (``better_zoo_models``), if any."""
    line = (
        f"conversion of {args.checkpoint} failed: {report.summary()}: the config "
        f"{args.config_file} does not fit this checkpoint"
    )
    kind = _kind_hint(args, report)
    if kind:
        return f"{line}; {kind}"
    shapes = {name: np.shape(value) for name, value in variables.items()}
    better = [m.config for m in better_zoo_models(shapes, cfg, backbone_only=args.backbone_only)]
    if not better:
        return line
    return f"{line}; its variables look like those of {' or '.join(better)}: use that --config-file"


def _kind_hint(args: argparse.Namespace, report: ConversionReport) -> str:
    """What the failure says of the checkpoint's kind when ``--backbone-only`` seems misused:
    an encoder that fills the backbone exactly, or a whole model given as an encoder."""
    only_heads = report.missing and all(not m.startswith("backbone.") for m in report.missing)
    if not args.backbone_only and only_heads and not report.unused and not report.shape_errors:
        return "it fills the backbone only: an ImageNet encoder? pass --backbone-only"
    if args.backbone_only and report.unused and not report.missing and not report.shape_errors:
        return "it holds more than an encoder (decoders, heads): convert it without --backbone-only"
    return ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line; errors are one line (``--debug``: with the traceback)."""
    return run_cli(lambda args: run(parse_args(args)), argv)
