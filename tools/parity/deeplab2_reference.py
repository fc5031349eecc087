"""Build deeplab2 reference checkpoints and outputs for the PyTorch port's parity checks.

Runs under a TensorFlow environment (not the project's), importing deeplab2 from the folder given
with ``--deeplab2`` (the folder that holds ``deeplab2/``, its protos compiled). No deeplab2 code is
copied here: every model is built, run and post-processed by deeplab2 itself.

Per model key (``--models``; see ``deeplab2_models.MODELS``) it writes into ``--out/<KEY>/``:

* ``checkpoint``, ``ckpt-0.index``, ``ckpt-0.data-00000-of-00001``: saved as deeplab2's trainer
  saves (``tf.train.Checkpoint(global_step=..., **model.checkpoint_items)`` through a
  ``tf.train.CheckpointManager``), minus the optimizer. ImageNet keys (``imagenet_*``) save
  ``tf.train.Checkpoint(encoder=<the model's encoder>)``, the object layout that deeplab2's
  ``runner_utils.maybe_load_checkpoint`` reads an ``initial_checkpoint`` with.
* ``reference.npz``: ``input`` (float32 [1,H,W,3], raw 0..255 pixels as fed to the model) and
  the eval-mode outputs of ``DeepLab.call(training=False)`` including its post-processing with
  the config's settings: ``semantic_logits`` [1,H,W,C], ``center_heatmap`` [1,H,W],
  ``offset_map`` [1,H,W,2] (channels (dy, dx), in input pixels), ``semantic_pred``,
  ``instance_pred``, ``panoptic_pred`` (semantic * label_divisor + instance; int32).
  ImageNet keys instead hold the encoder endpoints ``res1..res5`` (activated stage outputs) for
  the input normalised as DeepLab does (``input / 127.5 - 1``), plus ``backbone_output`` where
  it differs from ``res5`` (MaX-L: the output of its stacked hourglass decoder, which deeplab2's
  Panoptic-DeepLab never reads: its decoder takes ``res5``, so those weights do not affect the
  panoptic outputs).
  Tiny fixtures (compressed npz) store the three float maps only on the stride-4 lattice, as
  ``semantic_logits_sub4`` = ``semantic_logits[:, ::4, ::4]`` and likewise
  ``center_heatmap_sub4``, ``offset_map_sub4``: deeplab2 upsamples the decoder's stride-4
  outputs with align_corners=True from (H-1)/4+1 rows, so these are its raw outputs (offsets
  times 4) and nothing is lost; the script checks that upsampling them back with deeplab2's
  ``resize_bilinear`` reproduces the full maps. The predictions stay full size.
* ``info.json``: build settings, post-processing settings, parameter counts, the randomisation,
  the option overrides (tiny), output statistics and timings.

And ``<manifest-dir>/<KEY>.json.gz`` (for ``--size full`` or ``--manifest-only``): every variable
of the saved full-size checkpoint as ``[name, shape, dtype]`` plus counts. These stand in for the
published zoo checkpoints' variable lists, which cannot be downloaded here; note that real zoo
checkpoints additionally hold optimizer slots (and ``optimizer/...`` entries) and the ImageNet
ones may hold classification-head variables that deeplab2 skips with ``expect_partial``.

Randomisation (see ``deeplab2_randomise.randomise``): Keras zero-initialises the gamma of the
last batch norm of every residual block, which switches every residual branch off. So every
batch norm's gamma and beta, every bias and every constant-initialised variable are drawn at
random, the heads' last 1x1 kernels are rescaled (their init std of 0.01 gives near-zero
outputs), and the batch-norm moving statistics are set per layer from the statistics of that
layer's own input on the reference image, randomly perturbed (mean + U(-0.2, 0.2) * std,
var * U(0.5, 1.5)). The data-dependent statistics keep activations finite and of order one
through the deepest models (fixed random statistics make activations grow geometrically with
depth). Finally the center head's last bias is shifted so that 5% of the center heatmap exceeds
the score threshold (else a random head may yield no instance at all). Seeds are per key,
``(seed + crc32(key)) % 2**31``, and runs are reproducible (same files from the same command).

Example (from the repository root)::

    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tools/parity/deeplab2_reference.py \\
        --deeplab2 /tmp/dl2 --size tiny --out tests/fixtures/deeplab2/tiny --models all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deeplab2_models import MODELS, build_model, new_deeplab  # noqa: E402
from deeplab2_randomise import (  # noqa: E402
    calibrate_batch_norms,
    count_parameters,
    randomise,
    shift_center_bias,
)
from deeplab2_records import (  # noqa: E402
    array_stats,
    model_info,
    save_outputs,
    summary,
    write_manifest,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
CITYSCAPES_IMAGE = os.path.join(
    SHARED_DATA,
    "cityscapes_panoptic_sample/leftImg8bit/dummy_000000_000000_leftImg8bit.png",
)
COCO_IMAGE = os.path.join(SHARED_DATA, "coco_panoptic_sample/images/000000439180.jpg")
DEFAULT_MANIFEST_DIR = os.path.join(REPO_ROOT, "tests/fixtures/deeplab2/manifests")


# --------------------------------------------------------------------------------------------
# One model.


def saved_items(model: Any, imagenet: bool) -> dict[str, Any]:
    """The model's checkpoint objects that are saved: the encoder alone for ImageNet keys."""
    items = model.checkpoint_items
    return {"encoder": items["encoder"]} if imagenet else items


def forward(built: SimpleNamespace, model: Any) -> dict[str, np.ndarray]:
    """Runs ``model`` (``built.model`` or a rebuilt copy) on the key's input: the arrays of
    ``reference.npz``, encoder endpoints for ImageNet keys, else the eval-mode outputs."""
    tf, image, floatx = built.tf, built.image, built.floatx
    if built.spec.imagenet:
        endpoints = model.checkpoint_items["encoder"](
            tf.constant(image, dtype=floatx) / 127.5 - 1.0, training=False
        )
        arrays = {n: endpoints[n].numpy() for n in [f"res{i}" for i in range(1, 6)]}
        # MaX-L's backbone ends with a stacked (hourglass) decoder whose output is only in
        # backbone_output; Panoptic-DeepLab's decoder reads res5 and never uses it.
        backbone_output = endpoints["backbone_output"].numpy()
        if not np.array_equal(backbone_output, arrays["res5"]):
            arrays["backbone_output"] = backbone_output
        return arrays
    outputs = model(tf.constant(image, dtype=floatx), training=False)
    names = [
        "semantic_logits",
        "center_heatmap",
        "offset_map",
        "semantic_pred",
        "instance_pred",
        "panoptic_pred",
    ]
    return {n: outputs[n].numpy() for n in names}


def randomise_and_run(
    built: SimpleNamespace, target: Any, timings: dict[str, float]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Randomises ``target`` (the model, or its encoder for ImageNet keys), calibrates its batch
    norms on the input, shifts the center bias (panoptic keys) and runs the model once more.
    Returns what was touched (for info.json) and the outputs."""
    start = time.time()
    rng = np.random.RandomState(built.seed)
    touched: dict[str, Any] = randomise(target, rng)
    calibrated = calibrate_batch_norms(target, lambda: forward(built, built.model), rng)
    if not built.spec.imagenet:
        evaluator = built.config.evaluator_options
        touched["center_bias_shift"] = shift_center_bias(
            built.model.checkpoint_items,
            calibrated["center_heatmap"],
            evaluator.center_score_threshold,
            evaluator.nms_kernel,
        )
    timings["randomise_and_calibrate_s"] = time.time() - start
    start = time.time()
    outputs = forward(built, built.model)
    timings["forward_s"] = time.time() - start
    return touched, outputs


def save_checkpoint(
    built: SimpleNamespace, out_dir: str, timings: dict[str, float]
) -> tuple[str, list[str]]:
    """Saves as deeplab2's trainer does, minus the optimizer (ImageNet keys: the encoder alone,
    as ``initial_checkpoint`` is read). Returns the prefix and the saved objects' names."""
    tf, imagenet = built.tf, built.spec.imagenet
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    kwargs = {} if imagenet else {"global_step": global_step}
    checkpoint_items = saved_items(built.model, imagenet)
    checkpoint = tf.train.Checkpoint(**kwargs, **checkpoint_items)
    manager = tf.train.CheckpointManager(checkpoint, directory=out_dir, max_to_keep=1)
    start = time.time()
    prefix = manager.save(checkpoint_number=0)
    timings["save_s"] = time.time() - start
    return prefix, sorted(checkpoint_items) + sorted(kwargs)


def verify_restore(
    built: SimpleNamespace,
    args: argparse.Namespace,
    prefix: str,
    outputs: dict[str, np.ndarray],
    info: dict[str, Any],
) -> None:
    """Rebuilds the model from scratch, restores the checkpoint and compares the outputs."""
    start = time.time()
    model = new_deeplab(built, args.float64)
    status = built.tf.train.Checkpoint(**saved_items(model, built.spec.imagenet)).read(prefix)
    status.expect_partial().assert_existing_objects_matched()
    again = forward(built, model)
    diff = max(float(np.abs(again[n].astype(np.float64) - outputs[n]).max()) for n in outputs)
    info["restore_check_max_abs_diff"] = diff
    info["timings"]["restore_check_s"] = time.time() - start
    assert diff < 1e-4, diff


def build_one(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Builds, randomises, runs and saves one model; returns its info dict."""
    start = time.time()
    built = build_model(key, args)
    out_dir = os.path.join(args.out, key)
    os.makedirs(out_dir, exist_ok=True)
    timings: dict[str, float] = {"build_s": time.time() - start}
    target = built.model.checkpoint_items["encoder"] if built.spec.imagenet else built.model
    counts = count_parameters(target)
    touched: dict[str, Any] = {}
    if not args.manifest_only:
        touched, outputs = randomise_and_run(built, target, timings)
    prefix, checkpoint_objects = save_checkpoint(built, out_dir, timings)
    info = model_info(
        key,
        args,
        built,
        checkpoint_objects=checkpoint_objects,
        counts=counts,
        touched=touched,
        timings=timings,
    )
    if not args.manifest_only:
        lattice = args.size == "tiny" and not built.spec.imagenet
        save_outputs(info, outputs, built.image, out_dir, built.deeplab_utils if lattice else None)
        if args.verify_restore:
            verify_restore(built, args, prefix, outputs, info)
    if args.size == "full" or args.manifest_only:
        manifest = os.path.join(args.manifest_dir, f"{key}.json.gz")
        write_manifest(prefix, manifest, key, dict(counts))
    with open(os.path.join(out_dir, "info.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return info


# --------------------------------------------------------------------------------------------
# Block by block.


def encoder_blocks(encoder: Any) -> list[tuple[str, Any]]:
    """``(name, layer)`` of the encoder's stem and of every block of its stages, in call order."""
    blocks = [("encoder/_stem", encoder._stem)]
    for stage_index in range(1, 6):
        stage = getattr(encoder, f"_stage{stage_index}", None)
        if stage is None:
            continue
        for b in range(stage._num_blocks):
            name = f"encoder/_stage{stage_index}/_block{b + 1}"
            blocks.append((name, getattr(stage, f"_block{b + 1}")))
    return blocks


def save_block_outputs(blocks: list[tuple[str, Any]], out_dir: str) -> list[dict[str, Any]]:
    """Wraps every block's ``call`` to save its output as ``out_dir/<name>.npy`` when the model
    runs; returns the list that the calls fill, one entry per call, each block after the first
    checking that its input is the previous output."""
    saved: list[dict[str, Any]] = []
    last: dict[str, np.ndarray] = {}

    def wrap(layer: Any, name: str, chained: bool) -> None:
        original = layer.call

        def call(inputs: Any, *rest: Any, **kwargs: Any) -> Any:
            entry: dict[str, Any] = {"name": name}
            if chained:
                given = inputs[0].numpy()
                entry["input_is_previous_output"] = bool(np.array_equal(given, last["value"]))
            result = original(inputs, *rest, **kwargs)
            value = result.numpy()
            np.save(os.path.join(out_dir, name.replace("/", "_") + ".npy"), value)
            entry["shape"] = list(value.shape)
            entry.update(array_stats(value))
            saved.append(entry)
            last["value"] = value
            return result

        layer.call = call

    for index, (name, layer) in enumerate(blocks):
        wrap(layer, name, chained=index > 0)
    return saved


def restored_vs_reference(outputs: dict[str, Any], reference_path: str) -> dict[str, float]:
    """Max |difference| of the restored model's float maps from ``reference.npz``'s."""
    reference = np.load(reference_path)
    restored = {}
    for n in ("semantic_logits", "center_heatmap", "offset_map"):
        ours = outputs[n].numpy().astype(np.float64)
        if n not in reference:  # a tiny fixture, stored on the stride-4 lattice
            ours, n = ours[:, ::4, ::4], f"{n}_sub4"
        restored[n] = float(np.abs(ours - reference[n]).max())
    return restored


def dump_blocks(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Block-by-block reference (``--dump-blocks DIR``) from the saved ``<out>/<key>/ckpt-0``.

    Restores the checkpoint into a freshly built model, runs it on the same input and saves, in
    the order they run, the stem's output and every encoder block's output (``[1, h, w, C]``,
    before the ReLU that the next block applies) as ``DIR/<key>/<name>.npy``, with ``blocks.json``
    listing them. Each block's input is the output saved just before it (checked here), so a
    port can run every block on deeplab2's own input and compare one block at a time: on deep
    random-weight models whole-model differences are the round-off amplified by depth, while a
    block's own difference is not. ``blocks.json`` also records that the restored model
    reproduces ``reference.npz``."""
    built = build_model(key, args)
    tf, model, floatx = built.tf, built.model, built.floatx
    prefix = os.path.join(args.out, key, "ckpt-0")
    tf.train.Checkpoint(**model.checkpoint_items).read(prefix).expect_partial()
    out_dir = os.path.join(args.dump_blocks, key)
    os.makedirs(out_dir, exist_ok=True)
    saved = save_block_outputs(encoder_blocks(model.checkpoint_items["encoder"]), out_dir)
    start = time.time()
    outputs = model(tf.constant(built.image, dtype=floatx), training=False)
    restored = restored_vs_reference(outputs, os.path.join(args.out, key, "reference.npz"))
    result = {
        "key": key,
        "dtype": floatx,
        "blocks": saved,
        "restored_vs_reference_max_abs": restored,
        "forward_s": round(time.time() - start, 1),
    }
    with open(os.path.join(out_dir, "blocks.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not all(e.get("input_is_previous_output", True) for e in saved):
        raise RuntimeError(f"{key}: a block's input is not the previous block's output")
    return result


# --------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deeplab2", required=True, help="folder holding deeplab2/")
    parser.add_argument("--models", nargs="+", default=["all"], help="keys, or 'all'")
    parser.add_argument("--size", choices=("full", "tiny"), default="tiny")
    parser.add_argument("--out", required=True, help="output folder (one subfolder per key)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float64",
        action="store_true",
        help="build and run in float64 (parity of models whose float32 round-off is amplified)",
    )
    parser.add_argument("--manifest-dir", default=DEFAULT_MANIFEST_DIR)
    parser.add_argument(
        "--manifest-only",
        action="store_true",
        help="build, save and write the manifest only (no randomisation, forward or npz)",
    )
    parser.add_argument(
        "--verify-restore",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rebuild, restore and compare the outputs (default: on for tiny, off for full)",
    )
    parser.add_argument("--deeplab2-commit", default="64bc1c1a", help="recorded in info.json")
    parser.add_argument("--cityscapes-image", default=CITYSCAPES_IMAGE)
    parser.add_argument("--coco-image", default=COCO_IMAGE)
    parser.add_argument(
        "--dump-blocks",
        metavar="DIR",
        help="instead of building: restore <out>/<key>/ckpt-0 and save every encoder block's "
        "output to DIR/<key>/ (see dump_blocks)",
    )
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.models == ["all"]:
        args.models = list(MODELS)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown keys {unknown}; known: {list(MODELS)}")
    if args.verify_restore is None:
        args.verify_restore = args.size == "tiny"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.in_process and args.dump_blocks:
        result = dump_blocks(args.models[0], args)
        print(
            f"{result['key']}: {len(result['blocks'])} outputs saved; restored model vs "
            f"reference.npz max |diff| {result['restored_vs_reference_max_abs']}",
            flush=True,
        )
        return 0
    if args.in_process:
        print(summary(build_one(args.models[0], args)), flush=True)
        return 0
    # One model per subprocess, so the memory of the biggest models is freed in between.
    failed = []
    base, skipping = [], False
    for arg in argv:  # argv without the --models list
        if arg == "--models" or arg.startswith("--models="):
            skipping = arg == "--models"
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        base.append(arg)
    for key in args.models:
        start = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), *base, "--models", key, "--in-process"]
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run(cmd, env=env)
        print(f"== {key}: rc={result.returncode} in {time.time() - start:.0f} s", flush=True)
        if result.returncode:
            failed.append(key)
    if failed:
        print(f"FAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
