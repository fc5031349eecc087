"""What ``deeplab2_reference.py`` writes beside a checkpoint: ``info.json``, ``reference.npz``
and the variable manifests (their formats are in that script's docstring). TensorFlow is
imported inside the functions; the sibling modules are found on the ``sys.path`` entry that
``deeplab2_reference.py`` adds for this folder."""

from __future__ import annotations

import argparse
import gzip
import json
import os
from types import SimpleNamespace
from typing import Any

import numpy as np
from deeplab2_models import input_image, load_input
from deeplab2_randomise import RANDOMISATION


def clean(value: Any) -> Any:
    """Rounds float32 proto values (0.34 rather than 0.3400000035762787) for info.json."""
    return round(value, 7) if isinstance(value, float) else value


def array_stats(array: np.ndarray) -> dict[str, float]:
    a = np.asarray(array, np.float64)
    return {
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "finite": bool(np.isfinite(a).all()),
    }


def store_on_lattice(arrays: dict[str, np.ndarray], deeplab_utils: Any) -> dict[str, str]:
    """Replaces the float maps by their stride-4 lattice (``x[:, ::4, ::4]``), checking it is exact.

    deeplab2 upsamples the decoder's stride-4 outputs to the input size with align_corners=True
    (and multiplies offsets by the upsampling factor), so for H = 4k + 1 the lattice values are
    the decoder's raw outputs (offsets times 4) and upsampling them back gives the full maps.
    """
    import tensorflow as tf

    notes = {}
    for name in ("semantic_logits", "center_heatmap", "offset_map"):
        full = arrays.pop(name)
        sub = full[:, ::4, ::4]
        squeeze = full.ndim == 3
        sub4 = sub[..., None] if squeeze else sub
        back = deeplab_utils.resize_bilinear(tf.constant(sub4), full.shape[1:3]).numpy()
        back = back[..., 0] if squeeze else back
        err = float(np.abs(back - full).max())
        assert err < 1e-4 * max(1.0, float(np.abs(full).max())), (name, err)
        arrays[name + "_sub4"] = sub
        notes[name + "_sub4"] = (
            f"{name}[:, ::4, ::4]; deeplab2 resize_bilinear (align_corners) of it gives the "
            f"full map within {err:.1e}"
        )
    return notes


def write_manifest(ckpt_prefix: str, path: str, key: str, counts: dict[str, int]) -> None:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(ckpt_prefix)
    dtypes = reader.get_variable_to_dtype_map()
    variables = [
        [name, list(shape), dtypes[name].name]
        for name, shape in tf.train.list_variables(ckpt_prefix)
    ]
    model_vars = [v for v in variables if v[0].endswith("/.ATTRIBUTES/VARIABLE_VALUE")]
    manifest = {
        "key": key,
        "note": "variables of a deeplab2-built checkpoint with random values; real zoo "
        "checkpoints additionally hold optimizer slots",
        "num_entries": len(variables),
        "num_variables": len(model_vars),
        "num_elements": int(sum(int(np.prod(s)) for _, s, _ in model_vars)),
        "parameter_counts": counts,
        "variables": variables,
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(manifest, indent=0).encode())


# --------------------------------------------------------------------------------------------
# info.json.


def _dataset_info(built: SimpleNamespace) -> dict[str, Any]:
    """The deeplab2 dataset's classes and labels."""
    dataset_info = built.dataset_info
    return {
        "dataset": built.spec.dataset,
        "num_classes": dataset_info.num_classes,
        "ignore_label": dataset_info.ignore_label,
        "label_divisor": dataset_info.panoptic_label_divisor,
        "thing_class_ids": list(dataset_info.class_has_instances_list),
    }


def _config_info(config: Any) -> dict[str, Any]:
    """The config's backbone, batch-norm and post-processing settings."""
    return {
        "backbone": {
            name: clean(getattr(config.model_options.backbone, name))
            for name in (
                "name",
                "output_stride",
                "stem_width_multiplier",
                "backbone_width_multiplier",
                "backbone_layer_multiplier",
                "use_sac_beyond_stride",
                "use_squeeze_and_excite",
            )
        },
        "batchnorm": {
            "epsilon": clean(config.trainer_options.solver_options.batchnorm_epsilon),
            "momentum": clean(config.trainer_options.solver_options.batchnorm_momentum),
            "sync": config.trainer_options.solver_options.use_sync_batchnorm,
        },
        "post_processing": {
            name: clean(getattr(config.evaluator_options, name))
            for name in (
                "center_score_threshold",
                "nms_kernel",
                "keep_k_centers",
                "stuff_area_limit",
                "thing_area_limit",
                "merge_semantic_and_instance_with_tf_op",
                "add_flipped_images",
            )
        },
        "eval_scales": list(config.evaluator_options.eval_scales) or [1.0],
    }


def _randomisation_info(
    args: argparse.Namespace, seed: int, touched: dict[str, Any]
) -> dict[str, Any]:
    """The seeds and what ``randomise`` and ``shift_center_bias`` did (``touched``)."""
    return {
        "seed": args.seed,
        "key_seed": seed,
        "seeding": "key_seed = (seed + crc32(key)) % 2**31; tf.keras.utils.set_random_seed("
        "key_seed) (initialisers), numpy RandomState(key_seed) (randomisation)",
        "center_bias_shift": touched.get("center_bias_shift"),
        "randomisation": RANDOMISATION,
        "randomised_constant_variables": touched.get("constant", []),
        "rescaled_head_kernels": touched.get("head_last_kernel", []),
    }


def model_info(
    key: str,
    args: argparse.Namespace,
    built: SimpleNamespace,
    *,
    checkpoint_objects: list[str],
    counts: dict[str, int],
    touched: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """info.json's content for a model saved in ``args.out/key`` (``timings`` is kept, not
    copied: later steps add to it); ``save_outputs`` adds the outputs' part."""
    spec, out_dir = built.spec, os.path.join(args.out, key)
    return {
        "key": key,
        "size": args.size,
        "dtype": "float64" if args.float64 else "float32",
        "textproto": "deeplab2/configs/" + spec.textproto,
        "imagenet_encoder_only": spec.imagenet,
        "checkpoint_objects": checkpoint_objects,
        "crop_size": list(built.size),
        "input": "raw 0..255 pixels; the model normalises with x / 127.5 - 1",
        "input_image": os.path.basename(
            input_image(built.kind, args.cityscapes_image, args.coco_image)
        ),
        "input_preparation": " ".join(load_input.__doc__.split("\n\n")[1].split()),
        **_dataset_info(built),
        **_config_info(built.config),
        "parameter_counts": counts,
        "overrides": built.overrides,
        "tensorflow": built.tf.__version__,
        "deeplab2_commit": args.deeplab2_commit,
        **_randomisation_info(args, built.seed, touched),
        "timings": timings,
        "checkpoint_files": sorted(
            f for f in os.listdir(out_dir) if f == "checkpoint" or f.startswith("ckpt-0")
        ),
    }


def summary(info: dict[str, Any]) -> str:
    """A few lines on a built model for the log: parameters, timings, output statistics."""
    lines = [f"{info['key']} [{info['size']}]: params {info['parameter_counts']}"]
    lines.append(f"  timings { ({k: round(v, 1) for k, v in info['timings'].items()}) }")
    for name, s in info.get("outputs", {}).items():
        extra = f" unique={s['num_unique']}" if "num_unique" in s else ""
        lines.append(
            f"  {name:16s} {str(s['shape']):22s} min={s['min']:.4g} max={s['max']:.4g} "
            f"std={s['std']:.4g}{extra}"
        )
    if info.get("problems"):
        lines.append(f"  PROBLEMS: {info['problems']}")
    return "\n".join(lines)


def save_outputs(
    info: dict[str, Any],
    outputs: dict[str, np.ndarray],
    image: np.ndarray,
    out_dir: str,
    lattice_utils: Any = None,
) -> None:
    """Writes ``out_dir/reference.npz`` (``image`` as ``input``, and ``outputs``) and describes
    the outputs in ``info``. With ``lattice_utils`` (deeplab2's ``model.utils``: tiny panoptic
    fixtures) the float maps are stored on the stride-4 lattice, compressed."""
    arrays: dict[str, np.ndarray] = {"input": image}
    info["outputs"] = {}
    for name, value in outputs.items():
        info["outputs"][name] = {"shape": list(value.shape), "dtype": value.dtype.name}
        info["outputs"][name].update(array_stats(value))
        if value.dtype.kind == "i":
            info["outputs"][name]["num_unique"] = int(len(np.unique(value)))
        arrays[name] = value
    if lattice_utils is not None:
        info["stored_on_stride4_lattice"] = store_on_lattice(arrays, lattice_utils)
        np.savez_compressed(os.path.join(out_dir, "reference.npz"), **arrays)
    else:
        np.savez(os.path.join(out_dir, "reference.npz"), **arrays)
    info["problems"] = [
        n
        for n, s in info["outputs"].items()
        if not s["finite"] or (s["dtype"].startswith("float") and s["std"] < 1e-3)
    ]
