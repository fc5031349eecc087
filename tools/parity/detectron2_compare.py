"""Our model on detectron2's reference outputs (``tools/parity/detectron2_reference.py --out``):
convert each ``model.pkl`` with our converter, run our model on the same input and measure it.

    OMP_NUM_THREADS=2 python tools/parity/detectron2_compare.py /tmp/d2ref

Prints per model: parameter counts, max |diff| of semantic logits, centre heatmap and offsets
(absolute and relative to the reference output's std), panoptic pixels that differ from
detectron2's map (our post-processing on our outputs, and on detectron2's outputs), run times.
Needs no detectron2, unless ``--detectron2 DIR`` asks to time detectron2's model too, each side
``--repeats`` times in alternation (same machine load for both):

    OMP_NUM_THREADS=2 python tools/parity/detectron2_compare.py /tmp/d2ref \
        --detectron2 /tmp/d2src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detectron2_reference import MODELS, REPO, SIZES, load_image  # noqa: E402


def upsample_reference(ref: dict) -> dict[str, np.ndarray]:
    """Stride-4 reference outputs at input size, as detectron2's heads resize them in eval."""
    import torch.nn.functional as F

    up = {
        k: F.interpolate(torch.from_numpy(ref[k])[None], scale_factor=4, mode="bilinear")[0]
        for k in ("semantic", "center", "offset")
    }
    up["offset"] = up["offset"] * 4
    return {k: v.numpy() for k, v in up.items()}


def our_model(out_dir: str, info: dict):
    """Our model of ``info``'s config with ``out_dir/model.pkl`` converted into it, and the
    converter's report."""
    from axial_deeplab.checkpoint.detectron2 import check, convert_state_dict, load_detectron2_file
    from axial_deeplab.config import load_config
    from axial_deeplab.modeling.build import build_model

    cfg = load_config(os.path.join(REPO, info["our_config"]), info["our_opts"])
    model = build_model(cfg).eval()
    source = load_detectron2_file(os.path.join(out_dir, "model.pkl"))
    state, report = convert_state_dict(source, model)
    if not report.ok:  # the tensors by name; check's error counts them
        print("\n".join(report.lines()))
    check(report)
    model.load_state_dict(state, strict=not MODELS[info["model"]].get("backbone_only", False))
    return model, report


@torch.no_grad()
def run_ours(model, x: torch.Tensor, info: dict) -> tuple[dict, dict]:
    """Our outputs on ``[1, 3, H, W]`` ``x`` (backbone features for a backbone-only model; else
    raw outputs and the panoptic map with the reference's settings) and the run times."""
    from axial_deeplab.modeling.postprocessing import get_panoptic_segmentation

    start = time.perf_counter()
    if MODELS[info["model"]].get("backbone_only"):
        features = model.backbone((x - model.pixel_mean) / model.pixel_std)
        return {k: v[0] for k, v in features.items()}, {"network": time.perf_counter() - start}
    out = {k: v[0] for k, v in model(x).items()}
    middle = time.perf_counter()
    out["panoptic"] = get_panoptic_segmentation(
        out["semantic"].argmax(0, keepdim=True),
        out["center"],
        out["offset"],
        **info["postprocessing"],
    )[0][0]
    seconds = {"network": middle - start, "postprocessing": time.perf_counter() - middle}
    return out, seconds


def detectron2_runner(d2_root: str, out_dir: str, info: dict, image: np.ndarray):
    """A function timing detectron2's model (weights from ``out_dir/model.pkl``) on ``image``."""

    import detectron2_reference as reference
    from detectron2.modeling import build_model

    sys.path.insert(0, os.path.join(d2_root, "projects", "Panoptic-DeepLab"))
    spec = MODELS[info["model"]]
    crop = SIZES[info["size"]][spec["image"]][1]
    model = build_model(reference.d2_config(d2_root, spec, info["size"], crop)).eval()
    from axial_deeplab.checkpoint.detectron2 import load_detectron2_file

    state = load_detectron2_file(os.path.join(out_dir, "model.pkl"))  # no code runs from it
    target = model.backbone if spec.get("backbone_only") else model
    target.load_state_dict(state)
    backbone_only = spec.get("backbone_only", False)
    return lambda: reference.run_reference(model, image, backbone_only, info["size"])[1]


def compare(out_dir: str, d2_root: str = "", repeats: int = 1) -> dict:
    """Measure our converted model against detectron2's stored outputs in ``out_dir``; with
    ``d2_root`` also time detectron2's model, alternating with ours ``repeats`` times."""
    with open(os.path.join(out_dir, "meta.json")) as f:
        info = json.load(f)
    spec = MODELS[info["model"]]
    model, report = our_model(out_dir, info)
    image, _ = load_image(spec["image"], tuple(SIZES[info["size"]][spec["image"]][0]))
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    ref = dict(np.load(os.path.join(out_dir, "outputs.npz")))
    if info["size"] == "tiny" and not spec.get("backbone_only"):
        ref.update(upsample_reference(ref))
    d2_run = detectron2_runner(d2_root, out_dir, info, image) if d2_root else None
    times: dict[str, list] = {"ours": [], "detectron2": []}
    for _ in range(repeats):
        ours, seconds = run_ours(model, x, info)
        times["ours"].append(seconds)
        if d2_run is not None:
            times["detectron2"].append(d2_run())
    counted = model.backbone if spec.get("backbone_only") else model
    result = {
        "model": info["model"],
        "report": report.lines()[0],
        "parameters": {
            "ours": sum(p.numel() for p in counted.parameters()),
            "detectron2": info["parameters"],
        },
    }
    for key, value in ours.items():
        if key != "panoptic":
            diff = float((value - torch.from_numpy(ref[key])).abs().max())
            std = float(ref[key].std())
            result[key] = {"max_abs_diff": diff, "ref_std": std, "relative": diff / std}
    if "panoptic" in ours:
        result["panoptic"] = panoptic_agreement(ours["panoptic"], ref, info["postprocessing"])
    result["seconds"] = {
        "ours": times["ours"],
        "detectron2": times["detectron2"] or [info["seconds"]],
        "threads": torch.get_num_threads(),
    }
    return result


def panoptic_agreement(ours: torch.Tensor, ref: dict, post: dict) -> dict:
    """Pixels where our panoptic map differs from detectron2's, also when our post-processing
    runs on detectron2's own raw outputs; segment and instance counts of detectron2's map."""
    from axial_deeplab.modeling.postprocessing import get_panoptic_segmentation

    reference = torch.from_numpy(ref["panoptic"]).long()
    on_reference = get_panoptic_segmentation(
        torch.from_numpy(ref["semantic"]).argmax(0, keepdim=True),
        torch.from_numpy(ref["center"]),
        torch.from_numpy(ref["offset"]),
        **post,
    )[0][0]
    labels = torch.unique(reference)
    return {
        "differing_pixels": int((ours != reference).sum()),
        "ours_on_detectron2_outputs_differing_pixels": int((on_reference != reference).sum()),
        "segments": int((labels >= 0).sum()),
        "instances": int(((labels > 0) & (labels % post["label_divisor"] > 0)).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="an output folder of detectron2_reference.py")
    parser.add_argument("--models", nargs="*", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--detectron2", default="", help="checkout: also time detectron2's model")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side")
    args = parser.parse_args(argv)
    for key in args.models:
        folder = os.path.join(args.folder, key)
        if os.path.isdir(folder):
            result = compare(folder, args.detectron2, args.repeats)
            print(json.dumps(result, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
