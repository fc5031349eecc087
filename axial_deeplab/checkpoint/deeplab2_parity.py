"""Parity with deeplab2 on a reference folder written by ``tools/parity/deeplab2_reference.py``.

A reference folder holds the TF checkpoint (``ckpt-0.*``), ``info.json`` (the deeplab2 options,
including the widths a reduced fixture overrides) and ``reference.npz`` (the input fed and
deeplab2's eval-mode outputs: semantic logits, centre heatmap and offsets, at full resolution or
on the stride-4 lattice ``[:, ::4, ::4]``, plus its panoptic prediction).

``check_reference(folder, config_file)`` converts the checkpoint onto our model of
``config_file`` (with the fixture's overrides), runs it on the same input and returns the
differences of every output and the panoptic agreement after our post-processing with the
reference's settings.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import torch

from ..config import load_config
from ..engine.evaluate import VOID_LABEL, PostProcessing, panoptic_prediction
from ..modeling.build import build_model
from ..modeling.panoptic_deeplab import upsample
from .convert_deeplab2 import convert, read_variables
from .parity import output_differences, panoptic_agreement

_PD = "model_options.panoptic_deeplab"
# deeplab2 option (as info.json spells an override) -> our config key
SCALAR_OPTIONS = {
    "model_options.backbone.backbone_width_multiplier": "MODEL.AXIAL_RESNET.WIDTH_MULTIPLIER",
    "model_options.backbone.stem_width_multiplier": "MODEL.AXIAL_RESNET.STEM_WIDTH_MULTIPLIER",
    "model_options.backbone.backbone_layer_multiplier": "MODEL.AXIAL_RESNET.LAYER_MULTIPLIER",
    "model_options.decoder.aspp_channels": "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS",
    "model_options.decoder.decoder_channels": "MODEL.SEM_SEG_HEAD.CONVS_DIM",
    f"{_PD}.semantic_head.head_channels": "MODEL.SEM_SEG_HEAD.HEAD_CHANNELS",
    f"{_PD}.instance.instance_decoder_override.aspp_channels": "MODEL.INS_EMBED_HEAD.ASPP_CHANNELS",
    f"{_PD}.instance.instance_decoder_override.decoder_channels": "MODEL.INS_EMBED_HEAD.CONVS_DIM",
    f"{_PD}.instance.center_head.head_channels": "MODEL.INS_EMBED_HEAD.HEAD_CHANNELS",
}
# deeplab2 low-level lists run coarse to fine (res3, res2); ours list PROJECT_CHANNELS res2, res3
LIST_OPTIONS = {
    f"{_PD}.low_level": "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS",
    f"{_PD}.instance.low_level_override": "MODEL.INS_EMBED_HEAD.PROJECT_CHANNELS",
}
# Not model options: the regression head's width equals the centre head's here, and the
# post-processing settings (``evaluator_options.*``) are read from ``info["post_processing"]``.
IGNORED_OPTIONS = (f"{_PD}.instance.regression_head.head_channels",)


def config_opts(overrides: dict[str, Any]) -> list[str]:
    """Our ``KEY VALUE`` overrides for a reference's deeplab2 option overrides."""
    opts: list[str] = []
    lists: dict[str, dict[int, int]] = {}
    for name, value in overrides.items():
        if name in SCALAR_OPTIONS:
            opts += [SCALAR_OPTIONS[name], str(value)]
        elif name.endswith("].channels_project") and name.split("[")[0] in LIST_OPTIONS:
            index = int(name.split("[")[1].split("]")[0])
            lists.setdefault(LIST_OPTIONS[name.split("[")[0]], {})[index] = int(value)
        elif name not in IGNORED_OPTIONS and not name.startswith("evaluator_options."):
            raise ValueError(f"no config key for the deeplab2 option {name!r}")
    for key, values in lists.items():
        opts += [key, str([values[i] for i in sorted(values, reverse=True)])]
    return opts


def _ours_on_lattice(outputs: dict[str, torch.Tensor], names: set[str]) -> dict[str, np.ndarray]:
    """Our outputs in deeplab2's layout (``[N, H, W, C]``), on the stride-4 lattice if asked."""
    layouts = {
        "semantic_logits": outputs["semantic"].permute(0, 2, 3, 1),
        "center_heatmap": outputs["center"][:, 0],
        "offset_map": outputs["offset"].permute(0, 2, 3, 1),
    }
    out = {}
    for name, value in layouts.items():
        value = value.double().numpy()
        out[name] = value
        out[f"{name}_sub4"] = value[:, ::4, ::4]
    return {k: v for k, v in out.items() if k in names}


def _panoptic(outputs: dict[str, torch.Tensor], info: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Our post-processing with the reference's settings on ``[1, ...]`` outputs."""
    post = info["post_processing"]
    settings = PostProcessing(
        stuff_area=post["stuff_area_limit"],
        threshold=post["center_score_threshold"],
        nms_kernel=post["nms_kernel"],
        top_k=post["keep_k_centers"],
    )
    panoptic, centers = panoptic_prediction(
        {k: v[0] for k, v in outputs.items()},
        settings,
        thing_ids=info["thing_class_ids"],
        label_divisor=info["label_divisor"],
    )
    # deeplab2's void label (ignore label x divisor) is a stuff label of ours when the ignore label
    # is a class (COCO's 0): void in both.
    void = info["ignore_label"] * info["label_divisor"]
    return np.where(panoptic.numpy() == void, VOID_LABEL, panoptic.numpy()), len(centers)


def reference_outputs(ref: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """deeplab2's raw outputs as ours (``[1, C, H, W]``), upsampled from the stride-4 lattice the
    way deeplab2 does (bilinear, align corners; the lattice offsets are already in input pixels)."""
    layouts = {"semantic": "semantic_logits", "center": "center_heatmap", "offset": "offset_map"}
    out = {}
    for ours, theirs in layouts.items():
        value = ref.get(theirs, ref.get(f"{theirs}_sub4"))
        value = torch.from_numpy(value)
        value = value.unsqueeze(1) if value.dim() == 3 else value.permute(0, 3, 1, 2)
        out[ours] = upsample(value, size, align_corners=True)
    return out


def converted_model(
    folder: str, config_file: str, reader: str = "builtin"
) -> tuple[torch.nn.Module, dict[str, Any], str, Any]:
    """``(model, info, reader used, conversion report)``: our model of ``config_file`` (with the
    reference's option overrides) in eval mode, holding the reference folder's converted
    checkpoint, in the reference's dtype (float64 for ``deeplab2_reference.py --float64``)."""
    with open(os.path.join(folder, "info.json")) as f:
        info = json.load(f)
    cfg = load_config(config_file, config_opts(info.get("overrides", {})))
    dtype = torch.float64 if info.get("dtype") == "float64" else torch.float32
    model = build_model(cfg).eval().to(dtype)
    variables, reader_used = read_variables(os.path.join(folder, "ckpt-0"), reader)
    state, report = convert(variables, model)
    if not report.ok:
        raise ValueError(f"{folder}: conversion failed:\n" + "\n".join(report.lines()))
    model.load_state_dict(state)
    return model, info, reader_used, report


def check_blocks(
    folder: str,
    blocks_dir: str,
    config_file: str,
    *,
    reader: str = "builtin",
    threads: int | None = None,
) -> dict[str, Any]:
    """Block-by-block parity on deeplab2's own intermediate tensors.

    ``blocks_dir`` holds the stem's and every encoder block's output saved by
    ``deeplab2_reference.py --dump-blocks`` from the checkpoint in ``folder``. Each of our blocks
    runs on deeplab2's input to that block (the previous saved output; the stem on the input
    image), and our decoders and heads run on deeplab2's encoder outputs, so every difference is
    that one module's own, not round-off amplified through the layers before it (which, on deep
    random-weight models, grows until whole-model outputs decorrelate). Returns ``blocks``: per
    module the differences of ``output_differences`` (``max_rel``, ``rms_rel`` against the
    output's std), and ``heads``: the three outputs against ``reference.npz``."""
    if threads:
        torch.set_num_threads(threads)
    model, info, _, _ = converted_model(folder, config_file, reader)
    dtype = next(model.parameters()).dtype
    with open(os.path.join(blocks_dir, "blocks.json")) as f:
        names = [entry["name"] for entry in json.load(f)["blocks"]]

    def theirs(name: str) -> np.ndarray:  # [1, h, w, C]
        return np.load(os.path.join(blocks_dir, name.replace("/", "_") + ".npy"))

    def as_ours(value: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(value).permute(0, 3, 1, 2).to(dtype)

    backbone = model.backbone
    stages = {
        f"encoder/_stage{name[-1]}": (name, stage)
        for name, stage in zip(backbone.group_names, backbone.stages, strict=True)
    }
    ref = dict(np.load(os.path.join(folder, "reference.npz")))
    image = as_ours(ref["input"])
    blocks: list[dict[str, Any]] = []
    groups: dict[str, torch.Tensor] = {}
    previous: np.ndarray | None = None  # the last module's output, loaded once
    with torch.no_grad():
        for name in names:
            reference = theirs(name)
            if name == "encoder/_stem":
                module = backbone.stem
                given = (image - model.pixel_mean) / model.pixel_std
            else:
                stage, block = name.rsplit("/", 1)
                group, modules = stages[stage]
                module = modules[int(block.removeprefix("_block")) - 1]
                given = as_ours(previous)
                groups[group] = as_ours(reference)  # the stage's output: its last block's
            ours = module(given).permute(0, 2, 3, 1).double().numpy()
            blocks.append(
                {"name": name, **output_differences({name: ours}, {name: reference})[name]}
            )
            previous = reference
        features = {n: torch.relu(groups[n]) for n in backbone._out_features}
        outputs = model.predict_from_features(features, tuple(image.shape[2:]))
    raw = {k: v for k, v in ref.items() if k.startswith(("semantic_logits", "center", "offset"))}
    heads = output_differences(_ours_on_lattice(outputs, set(raw)), raw)
    return {"key": info["key"], "dtype": str(dtype), "blocks": blocks, "heads": heads}


def check_reference(
    folder: str,
    config_file: str,
    *,
    reader: str = "builtin",
    threads: int | None = None,
    float64: bool | None = None,
) -> dict[str, Any]:
    """Convert, run and compare (see the module docstring); returns a JSON-ready summary with
    ``differences`` (ours vs deeplab2), ``float32_error`` (our float32 run vs our float64 run:
    the round-off scale of float32 on this model and input; by default for tiny fixtures only,
    ``float64=True`` for any), with
    ``panoptic_float64``: our panoptic maps from both runs compared),
    ``panoptic`` (our whole pipeline vs deeplab2's panoptic prediction) and
    ``panoptic_postprocessing`` (our post-processing on deeplab2's raw outputs vs its panoptic
    prediction)."""
    if threads:
        torch.set_num_threads(threads)
    model, info, reader_used, report = converted_model(folder, config_file, reader)
    dtype = next(model.parameters()).dtype
    ref = dict(np.load(os.path.join(folder, "reference.npz")))
    image = torch.from_numpy(ref["input"]).permute(0, 3, 1, 2).to(dtype)
    start = time.perf_counter()
    with torch.no_grad():
        outputs = model(image)
    seconds = time.perf_counter() - start
    raw = {k: v for k, v in ref.items() if k.startswith(("semantic_logits", "center", "offset"))}
    ours = _ours_on_lattice(outputs, set(raw))
    summary: dict[str, Any] = {"differences": output_differences(ours, raw)}
    void = info["ignore_label"] * info["label_divisor"]
    agree = dict(label_divisor=info["label_divisor"], void_ours=VOID_LABEL, void_reference=void)
    panoptic, centers = _panoptic(outputs, info)
    if float64 or (float64 is None and info.get("size") == "tiny") or dtype == torch.float64:
        other = torch.float32 if dtype == torch.float64 else torch.float64
        with torch.no_grad():
            second = model.to(other)(image.to(other))
        model.to(dtype)
        single, double = (second, outputs) if dtype == torch.float64 else (outputs, second)
        summary["float32_error"] = output_differences(
            _ours_on_lattice(single, set(raw)), _ours_on_lattice(double, set(raw))
        )
        summary["panoptic_float64"] = panoptic_agreement(
            _panoptic(single, info)[0],
            _panoptic(double, info)[0],
            **{**agree, "void_reference": VOID_LABEL},
        )
    summary["panoptic"] = panoptic_agreement(panoptic, ref["panoptic_pred"][0], **agree)
    theirs, _ = _panoptic(reference_outputs(ref, tuple(image.shape[2:])), info)
    summary["panoptic_postprocessing"] = panoptic_agreement(
        theirs, ref["panoptic_pred"][0], **agree
    )
    return {
        "key": info["key"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "reference_parameters": info["parameter_counts"]["trainable"],
        **summary,
        "centers": centers,
        "seconds": seconds,
        "reader": reader_used,
        "report": report,
    }
