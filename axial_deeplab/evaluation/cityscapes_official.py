"""The official Cityscapes evaluations (cityscapesscripts) run on saved predictions.

- instance level (``evalInstanceLevelSemanticLabeling``): AP and AP50, overall and per class, of
  the instance masks that :func:`~axial_deeplab.evaluation.writers.write_cityscapes_instances`
  saves (one ``<stem>.txt`` per image);
- pixel level (``evalPixelLevelSemanticLabeling``): IoU per class, mIoU and iIoU of the label-id
  PNGs that :func:`~axial_deeplab.evaluation.writers.write_cityscapes_semantic` saves;
- panoptic (``evalPanopticSemanticLabeling``): PQ, SQ, RQ of COCO-format panoptic files.

The scripts keep their settings in a module-level ``args`` object whose paths come from the
``CITYSCAPES_DATASET`` / ``CITYSCAPES_RESULTS`` variables and write files next to themselves and
into the working folder. Here each call hands them a private copy of ``args`` with every path
set explicitly and runs inside a temporary folder that is removed afterwards, so no environment
variable, global setting or stray file leaks in or out (the working folder is the process's, so
calls must not run in parallel threads). The scripts stop with ``sys.exit`` on bad
input: that becomes a :class:`CityscapesEvaluationError` carrying their message.

cityscapesscripts 2.3.0 (installed here) predates NumPy 2.4, with two breakages that are mended only
while a script runs, then undone: ``np.in1d`` (removed in NumPy 2.4) is provided, if missing, as
``np.isin(a, b).ravel()`` (its documented equivalent); and the script's JSON dump (of its
intermediate matches, into the temporary folder), which fails on NumPy integers, gets a
serializer that writes them as ints.

:func:`cityscapes_id_maps` turns a panoptic map into the ground-truth ``labelIds`` /
``instanceIds`` maps that the instance- and pixel-level scripts read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

_INSTALL_HINT = (
    "the official Cityscapes evaluation needs cityscapesscripts: pip install cityscapesscripts"
)


class CityscapesEvaluationError(RuntimeError):
    """cityscapesscripts rejected its input (its message is in the error)."""


def _import(module: str):
    try:
        return __import__(f"cityscapesscripts.{module}", fromlist=["_"])
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err


@contextlib.contextmanager
def _private_run(script) -> Iterator[str]:
    """Run an official script inside a fresh temporary folder (its working folder), with its
    printing captured and the NumPy mends of the module doc; ``sys.exit`` from the script
    becomes :class:`CityscapesEvaluationError`."""
    cwd, printed = os.getcwd(), io.StringIO()
    name = script.__name__.rsplit(".", 1)[-1]
    missing_in1d = not hasattr(np, "in1d")
    dump = getattr(script, "writeDict2JSON", None)
    with tempfile.TemporaryDirectory(prefix="cityscapes_eval_") as folder:
        os.chdir(folder)
        if missing_in1d:
            np.in1d = _in1d
        if dump is not None:
            script.writeDict2JSON = _write_json
        try:
            with contextlib.redirect_stdout(printed):
                yield folder
        except SystemExit as stop:
            message = printed.getvalue().strip().splitlines()[-1:] or [f"exit {stop.code}"]
            raise CityscapesEvaluationError(f"cityscapesscripts {name}: {message[0]}") from None
        finally:
            if missing_in1d:
                del np.in1d
            if dump is not None:
                script.writeDict2JSON = dump
            os.chdir(cwd)


def _in1d(element, test_elements, assume_unique=False, invert=False):
    """``np.in1d`` as NumPy < 2.4 defined it, for cityscapesscripts."""
    return np.isin(element, test_elements, assume_unique=assume_unique, invert=invert).ravel()


def _write_json(data, path: str) -> None:
    """cityscapesscripts' ``writeDict2JSON``, NumPy scalars written as numbers."""

    def plain(value):
        return value.item() if isinstance(value, np.generic) else value.__dict__

    with open(path, "w") as f:
        json.dump(data, f, default=plain, sort_keys=True, indent=4)


def _args(module, folder: str, **settings):
    """A private copy of ``module.args`` with ``settings`` applied, silent, everything it writes
    (its export file) in the private ``folder``."""
    args = module.CArgs()
    vars(args).update(vars(module.args))
    vars(args).update(
        cityscapesPath=folder,
        exportFile=os.path.join(folder, "result.json"),
        JSONOutput=False,
        quiet=True,
        colorized=False,
    )
    vars(args).update(settings)
    return args


def evaluate_instances_official(
    gt_instance_pngs: Sequence[str], pred_txts: Sequence[str], *, prediction_root: str
) -> dict:
    """Cityscapes instance-level AP of saved instance predictions (one text file per image).

    Args:
        gt_instance_pngs: ``*_gtFine_instanceIds.png`` files (``label id * 1000 + k`` for
            instances, the label id elsewhere).
        pred_txts: for each of them, its prediction text file (``<mask PNG> <label id> <score>``
            lines, mask paths relative to the file).
        prediction_root: a folder holding every predicted mask (the script checks it).

    Returns:
        ``{"AP", "AP50", "per_class": {name: {"AP", "AP50"}}}`` as fractions; a class without
        ground truth has NaN (and is left out of the means), one with ground truth but no
        prediction 0.
    """
    script = _import("evaluation.evalInstanceLevelSemanticLabeling")
    gt = [os.path.abspath(p) for p in gt_instance_pngs]
    pred = [os.path.abspath(p) for p in pred_txts]
    with _private_run(script) as folder:
        args = _args(
            script,
            folder,
            gtInstancesFile=os.path.join(folder, "gtInstances.json"),  # its cache: fresh
            predictionPath=os.path.abspath(prediction_root),
            predictionWalk=None,
        )
        averages = script.evaluateImgLists(pred, gt, args)["averages"]
    return {
        "AP": float(averages["allAp"]),
        "AP50": float(averages["allAp50%"]),
        "per_class": {
            name: {"AP": float(entry["ap"]), "AP50": float(entry["ap50%"])}
            for name, entry in averages["classes"].items()
        },
    }


def evaluate_semantic_official(
    gt_label_pngs: Sequence[str], pred_pngs: Sequence[str], *, instance_level: bool = True
) -> dict:
    """Cityscapes pixel-level scores of saved label-id PNGs.

    Args:
        gt_label_pngs: ``*_gtFine_labelIds.png`` files; with ``instance_level`` their
            ``*_gtFine_instanceIds.png`` must lie beside them (for iIoU).
        pred_pngs: for each, a single-channel PNG of Cityscapes label ids.

    Returns:
        ``{"mIoU", "iIoU", "per_class": {name: IoU}, "per_class_iiou": {name: iIoU}}``, fractions;
        NaN for a class in neither ground truth nor prediction (left out of the means).
    """
    script = _import("evaluation.evalPixelLevelSemanticLabeling")
    gt = [os.path.abspath(p) for p in gt_label_pngs]
    pred = [os.path.abspath(p) for p in pred_pngs]
    with _private_run(script) as folder:
        args = _args(script, folder, evalInstLevelScore=instance_level, bold="", nocol="")
        result = script.evaluateImgLists(pred, gt, args)
    return {
        "mIoU": float(result["averageScoreClasses"]),
        "iIoU": float(result["averageScoreInstClasses"]) if instance_level else float("nan"),
        "per_class": {name: float(v) for name, v in result["classScores"].items()},
        "per_class_iiou": {name: float(v) for name, v in result["classInstScores"].items()},
    }


def evaluate_panoptic_official(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str) -> dict:
    """Cityscapes' PQ (``evaluatePanoptic``) of COCO-format panoptic files: the results of
    :meth:`~axial_deeplab.evaluation.panoptic.PanopticEvaluator.evaluate` by the official code."""
    script = _import("evaluation.evalPanopticSemanticLabeling")
    paths = [os.path.abspath(p) for p in (gt_json, gt_dir, pred_json, pred_dir)]
    with _private_run(script) as folder:
        return script.evaluatePanoptic(*paths, os.path.join(folder, "result.json"))


def find_predictions(gt_files: Sequence[str], folder: str, extension: str) -> list[str]:
    """For each Cityscapes gt file ``<city>_<seq>_<frame>_gtFine_*``, the one file named
    ``<city>_<seq>_<frame>*<extension>`` under ``folder`` (searched recursively), as the
    official scripts pair them; raises if there is none or more than one."""
    walk = [(root, files) for root, _, files in os.walk(folder)]
    found = []
    for gt in gt_files:
        stem = "_".join(os.path.basename(gt).split("_")[:3])
        matches = [
            os.path.join(root, name)
            for root, files in walk
            for name in fnmatch.filter(files, f"{stem}*{extension}")
        ]
        if len(matches) != 1:
            raise FileNotFoundError(
                f"{folder}: expected one '{stem}*{extension}' prediction for {gt}, found "
                f"{len(matches)}"
            )
        found.append(matches[0])
    return found


def run_cityscapes_official(
    gt_dir: str,
    *,
    semantic_dir: str | None = None,
    instance_dir: str | None = None,
    panoptic: tuple[str, str, str, str] | None = None,
) -> dict:
    """Every official evaluation whose predictions are given, on one Cityscapes ``gtFine`` tree.

    Args:
        gt_dir: searched recursively for ``*_gtFine_labelIds.png`` / ``*_gtFine_instanceIds.png``.
        semantic_dir: label-id PNGs, one ``<city>_<seq>_<frame>*.png`` per gt image.
        instance_dir: instance predictions, one ``<city>_<seq>_<frame>*.txt`` per gt image with
            its masks below the folder (as :func:`write_cityscapes_instances` saves them).
        panoptic: ``(gt_json, gt_png_dir, pred_json, pred_png_dir)`` in COCO panoptic format.

    Returns:
        ``{"semantic": ..., "instance": ..., "panoptic": ...}`` for those given, as returned by
        :func:`evaluate_semantic_official`, :func:`evaluate_instances_official` and
        :func:`evaluate_panoptic_official`.
    """
    results = {}
    if semantic_dir is not None:
        gt = _gt_files(gt_dir, "labelIds")
        has_instances = all(os.path.isfile(p.replace("labelIds", "instanceIds")) for p in gt)
        results["semantic"] = evaluate_semantic_official(
            gt, find_predictions(gt, semantic_dir, ".png"), instance_level=has_instances
        )
    if instance_dir is not None:
        gt = _gt_files(gt_dir, "instanceIds")
        results["instance"] = evaluate_instances_official(
            gt, find_predictions(gt, instance_dir, ".txt"), prediction_root=instance_dir
        )
    if panoptic is not None:
        results["panoptic"] = evaluate_panoptic_official(*panoptic)
    return results


def _gt_files(gt_dir: str, kind: str) -> list[str]:
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(gt_dir)
        for name in fnmatch.filter(names, f"*_gtFine_{kind}.png")
    )
    if not files:
        raise FileNotFoundError(f"no *_gtFine_{kind}.png under {gt_dir}")
    return files


def cityscapes_id_maps(
    ids: np.ndarray, segments: list[dict], category_to_label_id: Mapping[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Cityscapes ``labelIds`` ``[H, W]`` uint8 and ``instanceIds`` ``[H, W]`` uint16 maps of a
    panoptic ``[H, W]`` id map and its ``segments_info``.

    ``category_to_label_id`` maps each ``category_id`` to its Cityscapes label id (e.g. train id
    13 -> 26, car). A thing segment (``isthing`` in the label table) that is not crowd gets
    ``label id * 1000 + k`` (``k`` counting that label's instances from 0, in list order);
    crowd and stuff segments get their label id; VOID (0) stays 0 (``unlabeled``).
    """
    labels = _import("helpers.labels")
    label_ids = np.zeros(ids.shape, dtype=np.uint8)
    instance_ids = np.zeros(ids.shape, dtype=np.uint16)
    counts: dict[int, int] = {}
    for seg in segments:
        label_id = int(category_to_label_id[seg["category_id"]])
        mask = ids == seg["id"]
        label_ids[mask] = label_id
        instance = label_id
        if labels.id2label[label_id].hasInstances and not seg.get("iscrowd", 0):
            instance = label_id * 1000 + counts.get(label_id, 0)
            counts[label_id] = counts.get(label_id, 0) + 1
        instance_ids[mask] = instance
    return label_ids, instance_ids
