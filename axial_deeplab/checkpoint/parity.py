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
    ``std``, ``max_rel`` = ``max_abs / std`` and ``rms_rel`` = root-mean-square difference / std.
    Shapes must match."""
    out = {}
    for name, ref in reference.items():
        mine = np.asarray(ours[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if mine.shape != ref.shape:
            raise ValueError(f"{name}: our output {mine.shape} vs reference {ref.shape}")
        diff = mine - ref
        max_abs = float(np.abs(diff).max())
        std = max(float(ref.std()), 1e-12)
        rms = float(np.sqrt(np.mean(diff * diff)))
        out[name] = {"max_abs": max_abs, "std": std, "max_rel": max_abs / std, "rms_rel": rms / std}
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

    Segments are matched when each is the other's largest overlap and both have the same class
    (void matches void); ``pixels_differing`` are the pixels outside matched pairs (a pixel given
    to another instance counts once, not its whole segment). Returns ``identical`` (no such
    pixel), ``segments`` (in the reference), ``segments_unmatched`` (reference segments without a
    match), ``pixels_differing`` and ``fraction_differing``.
    """
    if ours.shape != reference.shape:
        raise ValueError(f"panoptic maps differ in shape: {ours.shape} vs {reference.shape}")
    a = np.where(ours == void_ours, -1, ours).astype(np.int64).ravel()
    b = np.where(reference == void_reference, -1, reference).astype(np.int64).ravel()
    pairs, counts = np.unique(np.stack([a, b], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    best_a: dict[int, int] = {}  # our segment -> index of its largest pair
    best_b: dict[int, int] = {}
    for i in order:
        best_a.setdefault(int(pairs[i, 0]), int(i))
        best_b.setdefault(int(pairs[i, 1]), int(i))
    same_class = np.where(
        (pairs[:, 0] < 0) | (pairs[:, 1] < 0),
        pairs[:, 0] == pairs[:, 1],
        pairs[:, 0] // label_divisor == pairs[:, 1] // label_divisor,
    )
    matched = [i for i in best_b.values() if best_a[int(pairs[i, 0])] == i and same_class[i]]
    differing = int(counts.sum() - counts[matched].sum())
    segments = {int(x) for x in pairs[:, 1] if x >= 0}
    matched_segments = {int(pairs[i, 1]) for i in matched if pairs[i, 1] >= 0}
    return {
        "identical": differing == 0,
        "segments": len(segments),
        "segments_unmatched": len(segments - matched_segments),
        "pixels_differing": differing,
        "fraction_differing": differing / max(a.size, 1),
    }
