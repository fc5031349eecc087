r"""Predict images, folders, globs and videos: ``python tools/infer.py --weights W --input ...``.

Per image ``NAME`` in ``--output`` (its path without extension, relative to the folder common to
all inputs, so that ``a/img.jpg`` and ``b/img.jpg`` give ``a/img*`` and ``b/img*``): ``NAME_panoptic.png`` (COCO panoptic
encoding, segment id = R + 256 G + 256^2 B, 0 = void), ``NAME.json`` (``segments_info``: id,
category_id (train id), category_name, isthing, area, score, label) and ``NAME_vis.png`` (panoptic
overlay with class names, semantic map, centre heatmap with detected centres, offset field).
Per video: ``NAME_overlay.avi`` (MJPG) of overlays, ``NAME.json`` with every frame's segments,
and with ``--save-frames`` the per-image files of each frame in ``NAME/``.

The config is ``--config-file`` or, without one, the config stored in the ``--weights`` checkpoint
(ours and converted ones carry it; ``KEY VALUE`` overrides and flags apply on top). Class names
and thing ids come from ``--class-names``, else from the metadata stored in the checkpoint, else
from the config's data set, else ``class_0, class_1, ...`` (without instances).

Examples (``KEY VALUE`` overrides last, after a single-value option such as ``--output``)::

    python tools/infer.py --weights converted.pth --input photos/ --output out/

    python tools/infer.py --config-file configs/coco/axial_deeplab_s_641.yaml \
        --weights model.pth --input photos/ "clips/*.mp4" street.jpg --tta-flip \
        --tta-scales 0.75 1.0 1.25 --device cuda --output out/ MODEL.PANOPTIC_DEEPLAB.STUFF_AREA 4096
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..config import ConfigError
from ..data.panoptic_io import write_panoptic_png
from ..utils.atomic import write_json, write_rgb_png
from ..utils.cli import (
    add_debug_flag,
    check_output_folder,
    int_at_least,
    run_cli,
    sigterm_raises,
)
from ..utils.progress import progress
from ..utils.visualize import compose, prediction_panels
from .evaluate import VOID_LABEL
from .inference import InferenceMetadata, Predictor
from .inputs import BadInputError, InputItem, expand_inputs, iter_video, read_image, video_info
from .prediction_size import prediction_at_size
from .predictor_setup import config_from_args, predictor_from_config, read_checkpoint_info

BACKENDS = ("torch", "torch-export", "onnxruntime")  # eager, or a file of tools/export.py


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--config-file", default="", metavar="FILE", help="config (default: the one in --weights)")
    add("--weights", default="", metavar="FILE", help="checkpoint (sets MODEL.WEIGHTS)")
    add("--input", nargs="+", required=True, help="image/video files, folders or glob patterns")
    add("--output", required=True, metavar="DIR", help="folder for the outputs")
    add("--device", default="", help="cpu or cuda (default MODEL.DEVICE); no GPU: CPU + notice")
    add("--tta-flip", action="store_true", help="add horizontally flipped passes (TEST.AUG.FLIP)")
    add("--tta-scales", type=float, nargs="+", help="TTA input scales, e.g. 0.75 1.0 1.25")
    add("--amp", action="store_true", help="mixed precision: bf16 on CPUs, fp16 on GPUs (TEST.AMP)")
    add("--max-size", type=int_at_least(0), default=0,
        help="shrink inputs whose long side exceeds this (0: never)")  # fmt: skip
    add("--class-names", default="", metavar="FILE", help="JSON categories or text, one per line")
    add("--thing-ids", type=int, nargs="*", default=None, help="thing train ids (text names)")
    add("--save-frames", action="store_true", help="also write per-frame files for videos")
    add("--skip-bad", action="store_true", help="warn and skip missing/corrupt inputs")
    add("--allow-random-weights", action="store_true",
        help="run without --weights / MODEL.WEIGHTS (a randomly initialised model)")  # fmt: skip
    add("--backend", default="torch", choices=BACKENDS, help="exported: --weights from export.py")
    add_debug_flag(parser)
    add("opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs")
    return parser.parse_args(argv)


def shrink(image: np.ndarray, max_size: int) -> np.ndarray:
    """``image`` with its long side reduced to ``max_size`` (area interpolation); unchanged when
    ``max_size`` is 0 or the image already fits."""
    height, width = image.shape[:2]
    if max_size <= 0 or max(height, width) <= max_size:
        return image
    scale = max_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2: (w, h)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def render(
    image: np.ndarray,
    prediction: dict,
    metadata: InferenceMetadata,
    ground_truth: np.ndarray | None = None,
) -> dict:
    """The titled panels ``[H', W', 3]`` uint8 RGB of one prediction (enlarged when small; the
    ground-truth panoptic map beside it when given) and, under ``"legend"``, the legend strip."""
    colors = None if metadata.class_colors is None else np.array(metadata.class_colors, np.uint8)
    panels, strip = prediction_panels(
        image,
        prediction,
        class_names=metadata.class_names,
        label_divisor=metadata.label_divisor,
        thing_ids=metadata.thing_ids,
        class_colors=colors,
        void_label=VOID_LABEL,
        ground_truth=ground_truth,
    )
    return {**panels, "legend": strip}


def write_image_outputs(
    out_dir: str, name: str, image: np.ndarray, prediction: dict, info: dict, pictures: dict
) -> None:
    """``NAME_panoptic.png``, ``NAME.json`` (``info`` + ``segments_info``), ``NAME_vis.png``;
    ``NAME`` may hold a relative folder (created)."""
    os.makedirs(os.path.dirname(os.path.join(out_dir, name)) or out_dir, exist_ok=True)
    write_panoptic_png(os.path.join(out_dir, f"{name}_panoptic.png"), prediction["segment_ids"])
    record = {
        **info,
        "height": image.shape[0],
        "width": image.shape[1],
        "panoptic_png": f"{os.path.basename(name)}_panoptic.png",  # beside this JSON
        "segments_info": prediction["segments_info"],
    }
    write_json(os.path.join(out_dir, f"{name}.json"), record, indent=1)
    panels = {k: v for k, v in pictures.items() if k != "legend"}
    write_rgb_png(os.path.join(out_dir, f"{name}_vis.png"), compose(panels, pictures["legend"]))


def _settings(predictor: Predictor) -> dict:
    """What a JSON record states of how it was predicted."""
    tta = predictor.tta
    settings = {
        "label_divisor": predictor.metadata.label_divisor,
        "test_time_augmentation": {"scales": list(tta.scales), "flip": tta.flip},
    }
    test_size = getattr(predictor, "test_size", None)
    if test_size is not None and test_size[0] > 0:  # INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST
        settings["test_size"] = {"min_size": test_size[0], "max_size": test_size[1]}
    return settings


def _predict_video(
    predictor: Predictor, item: InputItem, out_dir: str, max_size: int, save_frames: bool
) -> int:
    """Overlay video + per-frame segments JSON (+ per-frame files); returns the frame count."""
    info = video_info(item.path)
    os.makedirs(os.path.dirname(os.path.join(out_dir, item.name)) or out_dir, exist_ok=True)
    video_path = os.path.join(out_dir, f"{item.name}_overlay.avi")
    tmp = f"{video_path}.tmp.avi"
    frames_dir = os.path.join(out_dir, item.name)
    if save_frames:
        os.makedirs(frames_dir, exist_ok=True)
    writer, records = None, []
    frames: Iterator[np.ndarray] = iter_video(item.path)
    try:
        try:
            bar = progress(
                frames, total=info.num_frames or None, desc=item.name, unit="frame", leave=False
            )
            for index, frame in enumerate(bar):
                frame = shrink(frame, max_size)
                prediction = predictor.predict(frame)
                pictures = render(frame, prediction, predictor.metadata)
                if writer is None:
                    fourcc = cv2.VideoWriter_fourcc(*"MJPG")
                    overlay = pictures["prediction"]  # enlarged to a readable size
                    size = (overlay.shape[1], overlay.shape[0])
                    writer = cv2.VideoWriter(tmp, fourcc, info.fps or 25.0, size)
                writer.write(np.ascontiguousarray(pictures["prediction"][..., ::-1]))
                records.append({"frame": index, "segments_info": prediction["segments_info"]})
                if save_frames:
                    frame_info = {"file_name": item.path, "frame": index}
                    name = f"{os.path.basename(item.name)}_{index:06d}"  # in NAME/
                    write_image_outputs(frames_dir, name, frame, prediction, frame_info, pictures)
        finally:
            if writer is not None:
                writer.release()
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, video_path)
    record = {"file_name": item.path, "fps": info.fps, **_settings(predictor)}
    record["overlay_video"] = f"{os.path.basename(item.name)}_overlay.avi"
    write_json(os.path.join(out_dir, f"{item.name}.json"), {**record, "frames": records}, indent=1)
    return len(records)


def _predict_image(predictor: Predictor, item: InputItem, out_dir: str, max_size: int) -> None:
    original = read_image(item.path)
    image = shrink(original, max_size)
    prediction = predictor.predict(image)
    info = {"file_name": item.path, **_settings(predictor)}
    if image.shape != original.shape:  # --max-size: predicted smaller, written at the file's size
        info["shrunk_to"] = list(image.shape[:2])
        prediction = prediction_at_size(
            prediction,
            original.shape[:2],
            predictor.metadata,
            align_corners=getattr(predictor, "align_corners", True),
        )
    pictures = render(original, prediction, predictor.metadata)
    write_image_outputs(out_dir, item.name, original, prediction, info, pictures)


def exported_predictor(args: argparse.Namespace):
    """``--backend torch-export|onnxruntime``: a predictor of the exported ``--weights`` file (its
    config, class names and post-processing are inside it; one plain pass, no TTA)."""
    from ..export.runtime import ExportedPredictor

    ignored = [name for name, value in [("--config-file", args.config_file),
               ("--class-names", args.class_names), ("--tta-flip", args.tta_flip),
               ("--tta-scales", args.tta_scales), ("--amp", args.amp),
               ("KEY VALUE overrides", args.opts)] if value]  # fmt: skip
    if ignored or not args.weights:
        raise ConfigError(
            f"--backend {args.backend} runs the exported --weights file as it is: pass it, and "
            f"no {', '.join(ignored) or 'other model options'} (they are fixed at export time)"
        )
    try:
        predictor = ExportedPredictor(args.weights, args.backend)
    except (ValueError, OSError, ImportError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"backend {args.backend}: {args.weights}")
    return predictor


def plural(count: int, noun: str) -> str:
    """``"1 image"``, ``"2 images"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_inputs_are_not_overrides(inputs: list[str]) -> None:
    """``--input`` takes several values, so ``KEY VALUE`` overrides written after it are taken
    as inputs: say so rather than "input not found: TEST.AMP"."""
    for token in inputs:
        if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", token) and not os.path.exists(token):
            raise ConfigError(
                f"--input {token}: this looks like a KEY VALUE override; --input takes all the "
                "values after it, so put overrides after a single-value option such as --output"
            )


def run(args: argparse.Namespace) -> dict:
    """Predict every input; returns ``{"images", "frames", "skipped"}`` counts and names."""
    check_output_folder(args.output, "--output")  # before any model is loaded
    check_inputs_are_not_overrides(args.input)
    items = expand_inputs(args.input, skip_bad=args.skip_bad)
    check_outputs_spare_inputs(items, args.output, args.input)
    if args.backend != "torch":
        return run_predictor(args, exported_predictor(args), items)
    stored_config, stored_metadata = read_checkpoint_info(args)
    cfg = config_from_args(args, stored_config)
    if not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        raise ConfigError(
            "no weights: pass --weights path/to/model.pth (or MODEL.WEIGHTS); "
            "--allow-random-weights predicts with a randomly initialised model"
        )
    return run_predictor(args, predictor_from_config(args, cfg, stored_metadata), items)


# What each input writes into --output, after its name (with --save-frames a video also writes
# its frames' image outputs into the folder NAME/)
OUTPUT_SUFFIXES = {
    "image": ("_panoptic.png", ".json", "_vis.png"),
    "video": ("_overlay.avi", ".json"),
}


def check_outputs_spare_inputs(items: list[InputItem], output: str, specs: list[str]) -> None:
    """Refuse an ``--output`` that is an input folder (the outputs would land among its images
    and be read as inputs by the next run) or where an output would overwrite an input file
    (a photo ``a.png`` writes ``a_vis.png``: an input of that name would be replaced before it
    is read); before any model is loaded."""
    out = os.path.realpath(output)
    for spec in specs:
        if os.path.isdir(spec) and os.path.realpath(spec) == out:
            raise ValueError(
                f"--output {output} is the input folder {spec}: the predictions would be written "
                "among its images (and read as inputs by the next run); give another --output "
                "folder"
            )
    inputs = {os.path.realpath(item.path): item.path for item in items}
    for item in items:
        for suffix in OUTPUT_SUFFIXES[item.kind]:
            victim = inputs.get(os.path.realpath(os.path.join(output, item.name + suffix)))
            if victim is not None:
                raise ValueError(
                    f"--output {output}: {item.name}{suffix}, written for {item.path}, would "
                    f"overwrite the input {victim}; give another --output folder"
                )


def run_predictor(args: argparse.Namespace, predictor, items: list[InputItem]) -> dict:
    """Predict ``items`` with ``predictor`` into ``args.output`` (see :func:`run`)."""
    os.makedirs(args.output, exist_ok=True)
    summary: dict = {"images": 0, "frames": 0, "skipped": []}
    for item in progress(items, desc="infer", unit="input"):
        try:
            if item.kind == "video":
                summary["frames"] += _predict_video(
                    predictor, item, args.output, args.max_size, args.save_frames
                )
            else:
                _predict_image(predictor, item, args.output, args.max_size)
                summary["images"] += 1
        except BadInputError as exc:
            if not args.skip_bad:
                if item.path in str(exc):
                    raise
                raise BadInputError(f"{item.path}: {exc}") from None
            tqdm.write(f"warning: skipping {item.path}: {exc}")
            summary["skipped"].append(item.path)
    print(
        f"{plural(summary['images'], 'image')}, {plural(summary['frames'], 'video frame')} "
        f"-> {args.output}"
        + (
            f"; skipped {len(summary['skipped'])}: {summary['skipped']}"
            if summary["skipped"]
            else ""
        )
    )
    return summary


def _main(argv: list[str]) -> dict:
    args = parse_args(argv)
    try:
        with sigterm_raises():  # a killed run removes its temporary files, as Ctrl-C does
            return run(args)
    except BadInputError as exc:
        raise BadInputError(f"{exc} (use --skip-bad to skip bad inputs)") from None


def main(argv: list[str] | None = None) -> dict:
    """The command line; errors are one line (``--debug``: with the traceback)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    main()
