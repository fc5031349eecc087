"""``python tools/export.py --weights W [--config-file CFG] --format {torch-export,onnx} --output F``.

Builds the model of the config (``--config-file``, else the one stored in the checkpoint), loads
the weights, wraps it with its post-processing (:class:`PanopticPipeline`) and writes one file with
dynamic height and width: a torch.export archive (``.pt2``) or an ONNX model, each carrying the
class names, thing ids, label divisor and post-processing settings (from the checkpoint's metadata,
else the config's data set). Run it with ``tools/infer.py --backend torch-export|onnxruntime``.
"""

from __future__ import annotations

import argparse
import os
import time

from ..checkpoint.io import load_checkpoint_file
from ..config import ConfigError, load_config
from ..engine.evaluate import PostProcessing
from ..engine.inference import BACKEND_OF_SUFFIX, as_metadata
from ..utils.cli import add_debug_flag, check_output_file, run_cli
from .pipeline import PanopticPipeline, save_onnx, save_program

FORMATS = {"torch-export": save_program, "onnx": save_onnx}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--config-file", default="", metavar="FILE", help="config (default: the one in --weights)")
    add("--weights", required=True, metavar="FILE", help="checkpoint")
    add("--format", required=True, choices=sorted(FORMATS), help="torch-export (.pt2) or onnx")
    add("--output", required=True, metavar="FILE", help="exported file to write")
    add("opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def build_pipeline(weights: str, config_file: str = "", opts=()) -> PanopticPipeline:
    """The pipeline of a checkpoint: its model with its weights, metadata and post-processing."""
    from ..engine.build import load_model_weights
    from ..engine.class_names import metadata_from_config
    from ..engine.predictor_setup import config_from_yaml
    from ..modeling.build import build_model

    stored = load_checkpoint_file(weights)
    opts = list(opts)
    if config_file:
        cfg = load_config(config_file, opts)
    elif stored.config_yaml is not None:
        cfg = config_from_yaml(stored.config_yaml, opts, source=weights)
    else:
        raise ConfigError(f"{weights} carries no config: pass --config-file with the model's YAML")
    if cfg.TEST.AMP:
        print("note: TEST.AMP is not applied to exported graphs: they compute in float32")
    model = build_model(cfg)
    load_model_weights(model, weights, whole=True, state=stored.state_dict, cfg=cfg)
    if stored.metadata is not None:
        metadata = as_metadata(stored.metadata)
    else:
        metadata = metadata_from_config(cfg)[0]
    return PanopticPipeline(
        model,
        metadata=metadata,
        postprocessing=PostProcessing.from_config(cfg),
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        pad_to=tuple(cfg.INPUT.CROP.SIZE) if cfg.TEST.PAD_TO_CROP else None,
        pad_value=tuple(cfg.MODEL.PIXEL_MEAN),
        test_size=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
    )


SUFFIX_OF_FORMAT = {"torch-export": ".pt2", "onnx": ".onnx"}


def check_output_suffix(path: str, fmt: str) -> None:
    """``--output``'s suffix must not name another format's file: ``tools/infer.py`` picks the
    backend by suffix, so a ``.pt2`` archive named ``m.onnx`` could not be run (refused before
    minutes of tracing). Other suffixes are the user's choice."""
    suffix = os.path.splitext(path)[1].lower()
    wanted = SUFFIX_OF_FORMAT[fmt]
    if suffix in BACKEND_OF_SUFFIX and suffix != wanted:
        raise ValueError(
            f"--output {path}: a {suffix} file is not what --format {fmt} writes (a {wanted} "
            f"file): name it {os.path.splitext(path)[0]}{wanted}, or pick the --format of "
            f"{suffix} files"
        )


def _main(argv: list[str]) -> str:
    args = parse_args(argv)
    check_output_suffix(args.output, args.format)
    check_output_file(args.output, example=f"m{SUFFIX_OF_FORMAT[args.format]}")
    pipeline = build_pipeline(args.weights, args.config_file, args.opts)
    start = time.perf_counter()
    print(f"{args.format}: tracing the model (minutes on a CPU)...", flush=True)
    FORMATS[args.format](pipeline, args.output)
    print(f"{args.format}: {args.output} ({time.perf_counter() - start:.0f} s)")
    return args.output


def main(argv: list[str] | None = None) -> str:
    """The command line; errors are one line (``--debug``: with the traceback)."""
    return run_cli(_main, argv)
