"""Output parity between our converted model and a reference implementation's stored outputs.

``output_differences`` compares raw outputs (max absolute difference, and relative to the
reference output's standard deviation); ``panoptic_agreement`` compares two panoptic maps as
segmentations: the same segments (pixel sets) with the same classes, whatever their instance
numbers (deeplab2 numbers instances by first appearance in raster order, we by centre order).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def output_differences(
    ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output name (the keys of ``reference``): ``max_abs`` difference, the reference's
    ``std`` and ``max_rel`` = ``max_abs / std``. Shapes must match."""
    out = {}
    for name, ref in reference.items():
        mine = np.asarray(ours[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if mine.shape != ref.shape:
            raise ValueError(f"{name}: our output {mine.shape} vs reference {ref.shape}")
        max_abs = float(np.abs(mine - ref).max())
        std = float(ref.std())
        out[name] = {"max_abs": max_abs, "std": std, "max_rel": max_abs / max(std, 1e-12)}
    return out


def panoptic_agreement(
    ours: np.ndarray,
    reference: np.ndarray,
    *,
    label_divisor: int,
    void_ours: int,
    void_reference: int,
) -> dict[str, float | int | bool]:
    """Compare two ``[H, W]`` panoptic maps (``class * label_divisor + instance``).

    Returns ``identical`` (every segment of one is a segment of the other, same class, voids
    equal), ``segments`` (in the reference), ``pixels_differing`` (pixels whose segment does not
    correspond one-to-one) and ``fraction_differing``.
    """
    if ours.shape != reference.shape:
        raise ValueError(f"panoptic maps differ in shape: {ours.shape} vs {reference.shape}")
    a = np.where(ours == void_ours, -1, ours).astype(np.int64).ravel()
    b = np.where(reference == void_reference, -1, reference).astype(np.int64).ravel()
    pairs, inverse, counts = np.unique(
        np.stack([a, b], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    # A segment corresponds when its pair is the only pair of both of its ids.
    _, a_pos, a_num = np.unique(pairs[:, 0], return_inverse=True, return_counts=True)
    _, b_pos, b_num = np.unique(pairs[:, 1], return_inverse=True, return_counts=True)
    same_class = np.where(
        (pairs[:, 0] < 0) | (pairs[:, 1] < 0),
        pairs[:, 0] == pairs[:, 1],
        pairs[:, 0] // label_divisor == pairs[:, 1] // label_divisor,
    )
    good = (a_num[a_pos] == 1) & (b_num[b_pos] == 1) & same_class
    differing = int(counts[~good].sum())
    return {
        "identical": differing == 0,
        "segments": int(len(np.unique(b[b >= 0]))),
        "pixels_differing": differing,
        "fraction_differing": differing / max(a.size, 1),
    }
