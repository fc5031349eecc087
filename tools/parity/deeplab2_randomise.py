"""Random weights for the deeplab2 reference models of ``deeplab2_reference.py``.

Keras' initialisation switches every residual branch off (zero gamma in the last batch norm of
every block) and leaves the heads' outputs near zero, so ``randomise`` draws the gammas, betas,
biases and constant variables and rescales the heads' last kernels; ``calibrate_batch_norms``
then sets every batch norm's moving statistics from its own input on the reference image, and
``shift_center_bias`` moves the center heatmap so that a few centres pass the threshold.
``RANDOMISATION`` records all of it in info.json. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

RANDOMISATION = {
    "bn_gamma": "U(0.5, 1.5)",
    "bn_beta": "U(-0.25, 0.25)",
    "bias": "U(-0.25, 0.25)",
    "constant_initialised_variables": "N(0, 1/fan_in) (kernels initialised to zeros, e.g. SAC)",
    "head_last_layer_kernel": "rescaled to std 1/sqrt(fan_in) (keeps its random direction)",
    "bn_moving_mean": "input batch mean + U(-0.2, 0.2) * input batch std (per layer, ref image)",
    "bn_moving_variance": "input batch variance * U(0.5, 1.5) (per layer, ref image)",
    "order": "variables in model.variables order, BN layers in call order",
    "center_head_last_bias": "then shifted so that 5% (or fewer, down to 0.01%, while more than "
    "150 centre candidates remain after NMS) of the center heatmap exceeds center_score_threshold "
    "(see center_bias_shift)",
}


def _is_batch_norm(layer: Any) -> bool:
    return all(hasattr(layer, a) for a in ("moving_mean", "moving_variance", "gamma", "beta"))


def batch_norm_layers(module: Any) -> list[Any]:
    return [layer for layer in module.submodules if _is_batch_norm(layer)]


def count_parameters(module: Any) -> dict[str, int]:
    def total(variables: list[Any]) -> int:
        unique = {v.ref(): v for v in variables}
        return int(sum(v.shape.num_elements() for v in unique.values()))

    stats = [v for bn in batch_norm_layers(module) for v in (bn.moving_mean, bn.moving_variance)]
    return {
        "trainable": total(module.trainable_variables),
        "non_trainable": total(module.non_trainable_variables),
        "bn_statistics": total(stats),
    }


def _batch_norm_kinds(module: Any) -> dict[Any, str]:
    """``{variable.ref(): "gamma" | "beta" | "stat"}`` for every batch norm's variables."""
    bn_refs = {}
    for bn in batch_norm_layers(module):
        for var, kind in ((bn.gamma, "gamma"), (bn.beta, "beta")):
            if var is not None:
                bn_refs[var.ref()] = kind
        for var in (bn.moving_mean, bn.moving_variance):
            bn_refs[var.ref()] = "stat"
    return bn_refs


def randomise(module: Any, rng: np.random.RandomState) -> dict[str, list[str]]:
    """Randomises gammas, betas, biases, constant variables and the heads' last kernels."""
    bn_refs = _batch_norm_kinds(module)
    touched: dict[str, list[str]] = {"constant": [], "head_last_kernel": []}
    seen = set()
    for var in module.variables:
        if var.ref() in seen:
            continue
        seen.add(var.ref())
        shape = var.shape.as_list()
        kind = bn_refs.get(var.ref())
        name = var.name
        if kind == "gamma":
            var.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif kind == "beta" or name.endswith("bias:0"):
            var.assign(rng.uniform(-0.25, 0.25, shape).astype(np.float32))
        elif kind == "stat":
            continue  # Set by calibrate_batch_norms.
        elif "final_conv/kernel" in name:
            value = var.numpy()
            fan_in = int(np.prod(shape[:-1]))
            value = value / value.std() / np.sqrt(fan_in)
            var.assign(value.astype(np.float32))
            touched["head_last_kernel"].append(name)
        elif var.dtype.is_floating and np.ptp(var.numpy()) == 0:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            var.assign(rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32))
            touched["constant"].append(name)
    return touched


def _center_peaks(heatmap: np.ndarray, threshold: float, nms_kernel: int) -> int:
    """Number of centre candidates: values above ``threshold`` that are their window's max."""
    import tensorflow as tf

    h = np.where(heatmap > threshold, heatmap, 0.0).astype(np.float32)[..., None]  # [1, H, W, 1]
    pooled = tf.nn.max_pool2d(h, nms_kernel, 1, "SAME").numpy()
    return int(((h == pooled) & (h > 0)).sum())


MAX_CENTER_PEAKS = 150  # well below deeplab2's keep_k_centers (400), see shift_center_bias


def shift_center_bias(
    items: dict[str, Any], heatmap: np.ndarray, threshold: float, nms_kernel: int
) -> float:
    """Shifts the center head's last bias so a few pixels exceed the score threshold.

    Random heads can leave the whole heatmap below the threshold (no instance at all), or far
    above it (thousands of peaks). The shift puts the 95th percentile at the threshold, or a
    higher percentile when that leaves more than ``MAX_CENTER_PEAKS`` candidates: past
    keep_k_centers (400), deeplab2 keeps ``top_k(sorted=False)[-1]``-thresholded centres, an
    arbitrary subset, which no other implementation can reproduce. The bias is added after the last
    batch norm and bilinear upsampling keeps constants, so the heatmap moves by exactly the shift.
    """
    for quantile in (0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999):
        shift = float(threshold - np.quantile(heatmap, quantile))
        if _center_peaks(heatmap + shift, threshold, nms_kernel) <= MAX_CENTER_PEAKS:
            break
    bias = items["instance_center_head_last_layer"].bias
    bias.assign_add(np.full(bias.shape, shift, np.float32))
    return shift


def calibrate_batch_norms(module: Any, run: Callable[[], Any], rng: np.random.RandomState) -> Any:
    """Runs ``run`` once with every BN setting its moving statistics from its input, perturbed."""
    import tensorflow as tf

    bns = batch_norm_layers(module)

    def make_call(bn: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(inputs: Any, training: Any = None, **kwargs: Any) -> Any:
            x = tf.cast(inputs, tf.float32)
            ndims = len(x.shape)
            axes = [a % ndims for a in bn.axis]
            reduce = [i for i in range(ndims) if i not in axes]
            mean, var = tf.nn.moments(x, reduce, keepdims=True)
            shape = bn.moving_mean.shape
            mean = tf.reshape(mean, shape).numpy()
            var = tf.reshape(var, shape).numpy()
            mean = mean + rng.uniform(-0.2, 0.2, mean.shape) * np.sqrt(var)
            var = var * rng.uniform(0.5, 1.5, var.shape)
            bn.moving_mean.assign(mean.astype(np.float32))
            bn.moving_variance.assign(var.astype(np.float32))
            return original(inputs, training=False, **kwargs)

        return call

    for bn in bns:  # An instance attribute shadows the class's call (eager mode).
        bn.call = make_call(bn, bn.call)
    try:
        return run()
    finally:
        for bn in bns:
            del bn.call
        assert all(bn.call.__func__ is type(bn).call for bn in bns)
