"""PQ of COCO-format panoptic files (a JSON + a folder of PNGs, for gt and for predictions).

Batches of images are handed out to worker processes (PNG reading and per-image statistics); the
parent sums the statistics in image order, so the numbers do not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

from axial_deeplab.data.records import read_json
from axial_deeplab.data.validation import (
    DatasetFormatError,
    validate_annotations,
    validate_images,
)
from axial_deeplab.evaluation.panoptic import PanopticEvaluator, PQStats, RunsImage
from axial_deeplab.evaluation.parallel import map_batches, shrinking_batch_sizes
from axial_deeplab.evaluation.runs import PanopticPngReader, compiled_reader_built
from axial_deeplab.utils.atomic import write_json
from axial_deeplab.utils.host_memory import keep_freed_memory

_BATCH_SIZE = 8  # images per batch at most: enough to share numpy calls, small to share work
_PROGRESS_AFTER_S = 1.0  # the progress bar appears once an evaluation has run this long
_IDS_SHOWN = 5  # image ids named in an error or warning about unmatched images

# One image's work: (gt annotation, pred annotation, (H, W) or None); the workers make the paths
# and the names in errors, so that the serial part before them does little per image.
Task = tuple[dict, dict, "tuple[int, int] | None"]


def load_json(path: str, role: str) -> dict:
    """Read a COCO panoptic JSON; clear errors for a missing file, bad JSON, and annotations or
    images that the training reader would refuse (the shared validators: a repeated image_id,
    a missing key, a size that is not a positive int)."""
    data = read_json(path, role)
    validate_annotations(data["annotations"], path)
    validate_images(data.get("images"), path)
    return data


def build_tasks(
    gt: dict, gt_json: str, gt_dir: str, pred: dict, pred_json: str, pred_dir: str
) -> list[Task]:
    """One :data:`Task` per gt annotation; raises if a gt image has no prediction. Predictions
    for images that the gt lacks are left out, as panopticapi does, with a warning on stderr."""
    for folder, role in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{role} PNG folder not found: {folder}")
    if not gt["annotations"]:  # PQ over no image is no number (panopticapi divides by 0)
        raise DatasetFormatError(f"{gt_json}: no annotations: no image to evaluate on")
    predictions = {ann["image_id"]: ann for ann in pred["annotations"]}
    missing = [a["image_id"] for a in gt["annotations"] if a["image_id"] not in predictions]
    if missing:
        as_text = {str(k): k for k in predictions}
        retyped = [(m, as_text[str(m)]) for m in missing if str(m) in as_text]
        hint = (
            f"; {pred_json} gives them as {type(retyped[0][1]).__name__} ({retyped[0][1]!r}), "
            f"{gt_json} as {type(retyped[0][0]).__name__} ({retyped[0][0]!r}): use one type"
            if retyped else ""
        )  # fmt: skip
        raise DatasetFormatError(
            f"{pred_json}: no prediction for {len(missing)} ground-truth image(s) of {gt_json}, "
            f"e.g. image_id {missing[:_IDS_SHOWN]}{hint}"
        )
    if len(predictions) > len(gt["annotations"]):  # gt image ids are unique, all predicted
        _warn_unmatched(predictions, gt["annotations"], pred_json, gt_json)
    sizes = {k: v[:2] for k, v in validate_images(gt.get("images"), gt_json).items()}
    return [
        (ann, predictions[ann["image_id"]], sizes.get(ann["image_id"])) for ann in gt["annotations"]
    ]


def _warn_unmatched(
    predictions: dict, gt_annotations: list[dict], pred_json: str, gt_json: str
) -> None:
    """Warn on stderr about the predictions (``{image_id: annotation}``) of images not in gt."""
    in_gt = {ann["image_id"] for ann in gt_annotations}
    extra = [image_id for image_id in predictions if image_id not in in_gt]
    print(
        f"warning: {pred_json}: {len(extra)} prediction(s) for image(s) not in {gt_json} are "
        f"ignored, e.g. image_id {extra[:_IDS_SHOWN]}",
        file=sys.stderr,
    )


class _BatchStats:
    """``[B, C]`` PQ statistics of a batch of :data:`Task` (in whichever process runs it)."""

    def __init__(self, evaluator: PanopticEvaluator, gt: tuple[str, str], pred: tuple[str, str]):
        """``gt``, ``pred``: (JSON, PNG folder)."""
        self.evaluator, self.gt, self.pred = evaluator, gt, pred
        self.reader = PanopticPngReader()

    def __call__(self, tasks: Sequence[Task]) -> PQStats:
        return self.evaluator.image_stats([self._image(*task) for task in tasks])

    def _image(self, gt_ann: dict, pred_ann: dict, size: tuple[int, int] | None) -> RunsImage:
        """One task's input to the evaluator; errors in a segments_info name its JSON and image."""
        (gt_json, gt_dir), (pred_json, pred_dir) = self.gt, self.pred
        image_id, g_name, p_name = gt_ann["image_id"], gt_ann["file_name"], pred_ann["file_name"]
        g, p = os.path.join(gt_dir, g_name), os.path.join(pred_dir, p_name)
        return RunsImage(
            self._read(g), gt_ann["segments_info"], self._read(p), pred_ann["segments_info"],
            g, p, size,
            gt_listing=f"{gt_json}: segments_info of image_id {image_id!r} ({g_name})",
            size_source=f"{gt_json}: 'images' entry of image_id {image_id!r}",
            pred_listing=f"{pred_json}: segments_info of image_id {image_id!r} ({p_name})",
        )  # fmt: skip

    def _read(self, path: str):
        """The PNG's runs; a file that cannot be decoded raises naming it."""
        try:
            return self.reader.read(path)
        except (FileNotFoundError, DatasetFormatError):
            raise
        except ValueError as exc:  # our checks' own message ends with the path: put it first
            text = str(exc)
            if not text.endswith(f": {path}"):
                raise DatasetFormatError(f"{path}: {text}") from None
            raise DatasetFormatError(f"{path}: {text[: -len(path) - 2]}") from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
            raise DatasetFormatError(
                f"{path}: cannot decode panoptic PNG (truncated or corrupt?): "
                f"{type(exc).__name__}: {exc}"
            ) from None


def evaluate_panoptic_files(
    gt_json: str,
    gt_dir: str,
    pred_json: str,
    pred_dir: str,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """PQ/SQ/RQ of predictions against ground truth, both in COCO panoptic format.

    Categories come from the gt JSON. ``workers``: processes, this one included (default: the
    CPUs available); ``progress``: a tqdm bar over images on stderr, once the evaluation has run
    for a second. Returns
    :meth:`PanopticEvaluator.evaluate`, the numbers of :meth:`PanopticEvaluator.process` called
    image by image in the gt JSON's order, whatever ``workers``.
    """
    gt, pred = load_json(gt_json, "ground-truth"), load_json(pred_json, "prediction")
    categories, source = gt.get("categories"), gt_json
    if categories is None:  # e.g. Cityscapes ground truth converted without them
        if "categories" not in pred:
            raise DatasetFormatError(
                f"{gt_json}: no 'categories' list, and {pred_json} has none either: add the "
                "data set's categories (id, name, isthing) to the ground-truth JSON"
            )
        categories, source = pred["categories"], pred_json
        print(f"note: {gt_json} has no 'categories' list: using those of {pred_json}")
    evaluator = PanopticEvaluator(categories, source=source)
    tasks = build_tasks(gt, gt_json, gt_dir, pred, pred_json, pred_dir)
    workers = workers or _available_cpus()
    batch_size = max(1, min(_BATCH_SIZE, len(tasks) // (4 * workers)))
    sizes = shrinking_batch_sizes(len(tasks), batch_size, workers)  # workers end together
    bar = _Progress(len(tasks)) if progress else None
    try:
        per_batch = map_batches(
            _BatchStats(evaluator, (gt_json, gt_dir), (pred_json, pred_dir)),
            tasks,
            batch_size=sizes,
            workers=workers,
            on_result=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    for stats in per_batch:
        evaluator.add_images(stats)
    return evaluator.evaluate()


class _Progress:
    """A tqdm bar over images on stderr, shown once the evaluation has run for
    ``_PROGRESS_AFTER_S``: a short run goes without it (and without importing tqdm)."""

    def __init__(self, total: int):
        self.total, self.done, self.bar = total, 0, None
        self.start = time.perf_counter()

    def __call__(self, _index: int, stats: PQStats) -> None:
        """``map_batches``' ``on_result``: one batch of images done."""
        self.done += len(stats.tp)
        if self.bar is not None:
            self.bar.update(len(stats.tp))
        elif time.perf_counter() - self.start >= _PROGRESS_AFTER_S:
            from axial_deeplab.utils.progress import progress

            self.bar = progress(total=self.total, initial=self.done, unit="img")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def format_results(results: dict, semantic: dict | None = None) -> str:
    """The per-class table (classes seen in gt or prediction) then All / Things / Stuff, in %.

    ``semantic``: a :meth:`SemanticEvaluator.evaluate` result with the same class names; adds
    each class's IoU (``-`` where the class is in neither ground truth nor prediction) and mIoU.
    """
    iou = semantic["per_class"] if semantic is not None else None
    header = f"{'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}"
    iou_header = f" | {'IoU':>5s}" if iou is not None else ""
    lines = [f"{'Category':24s}| {header} | {'TP':>6s} {'FP':>6s} {'FN':>6s}{iou_header}"]
    seen = [r for r in results["per_class"].values() if r["tp"] + r["fp"] + r["fn"] > 0]
    for r in seen:
        line = (
            f"{str(r['name'])[:24]:24s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  "
            f"{100 * r['rq']:5.1f} | {r['tp']:6d} {r['fp']:6d} {r['fn']:6d}"
        )
        if iou is not None:
            value = iou.get(str(r["name"]), float("nan"))
            line += f" | {100 * value:5.1f}" if math.isfinite(value) else f" | {'-':>5s}"
        lines.append(line)
    absent = len(results["per_class"]) - len(seen)
    if absent:
        lines.append(f"({absent} classes in neither ground truth nor prediction: not shown)")
    lines += ["-" * 62, f"{'':24s}| {header} | {'N':>6s}"]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        lines.append(
            f"{name:24s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} | "
            f"{r['n']:6d}"
        )
    if semantic is not None:
        lines.append(f"{'mIoU':24s}| {100 * semantic['mIoU']:5.1f}")
    return "\n".join(lines)


def write_json_atomic(path: str, data: dict) -> None:
    """Write ``data`` as JSON (indent 2) through a temporary file in the same folder, then rename."""
    write_json(path, data, indent=2)


def prepare_output(path: str) -> str | None:
    """Make ``path`` ready for the results JSON before an evaluation: its missing folders are
    created. Returns why it cannot serve (a folder, a folder that cannot be made), else None."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return "is a folder; give the path of the JSON file to write"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        return f"cannot create its folder {folder}: {err.strerror or err}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is not writable"
    return None


def cli(argv: list[str] | None = None) -> None:
    from axial_deeplab.utils.cli import add_debug_flag, int_at_least

    command = os.path.basename(sys.argv[0])  # the installed axial-deeplab-eval-pq, or -m
    if not command.startswith("axial-deeplab"):
        command = "python -m axial_deeplab.evaluation.panoptic"
    parser = argparse.ArgumentParser(
        prog=command,
        description="Panoptic quality (PQ, SQ, RQ) of COCO-format panoptic predictions.",
    )
    parser.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON")
    parser.add_argument("--gt-dir", required=True, help="folder of ground-truth PNGs")
    parser.add_argument("--pred-json", required=True, help="prediction COCO panoptic JSON")
    parser.add_argument("--pred-dir", required=True, help="folder of predicted PNGs")
    parser.add_argument(
        "--output", help="write the results here as JSON (its missing folders are created)"
    )
    parser.add_argument(
        "--workers", type=int_at_least(1), default=None, help="processes (default: all CPUs)"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    problem = prepare_output(args.output) if args.output else None
    if problem:
        parser.exit(2, f"error: --output {args.output}: {problem}\n")
    keep_freed_memory()  # this process is ours and one of the workers: as in the others
    if not compiled_reader_built():
        print(
            "note: the compiled PNG reader was not built at install (no C compiler found?): "
            "reading PNGs with numpy, same numbers, 3-8x slower per map. With a C compiler, "
            "reinstall: pip install -e . (README, Installation)",
            file=sys.stderr,
        )
    try:
        results = evaluate_panoptic_files(
            args.gt_json, args.gt_dir, args.pred_json, args.pred_dir, workers=args.workers
        )
    except (FileNotFoundError, DatasetFormatError) as err:
        parser.exit(2, f"error: {err}\n")
    print(format_results(results))
    count = results["num_images"]
    print(f"{count} image{'' if count == 1 else 's'} evaluated")
    if args.output:
        write_json_atomic(args.output, results)
        print(f"results written to {args.output}")
