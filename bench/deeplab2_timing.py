"""Bench: a deeplab2 model on the CPU, deeplab2's own TensorFlow inference against our eval path.

    # 1. deeplab2 builds, randomises and saves the model, with its outputs (TensorFlow venv):
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tools/parity/deeplab2_reference.py \\
        --deeplab2 /tmp/dl2 --size full --models max_deeplab_s_backbone_os16_cityscapes \\
        --out /tmp/dl2_ref --manifest-dir /tmp/dl2_manifests
    # 2. time both on that checkpoint and input (this venv; TensorFlow runs in a child process):
    python bench/deeplab2_timing.py --references /tmp/dl2_ref \\
        --keys max_deeplab_s_backbone_os16_cityscapes \\
        --tf-python /tmp/tfvenv/bin/python --deeplab2 /tmp/dl2

Same weights: the reference folder's checkpoint (random weights, saved by deeplab2's own code)
is restored into a fresh deeplab2 model and converted onto our config
(``checkpoint.deeplab2_parity.converted_model``), so both compute the same function. Same input:
the reference's image (``reference.npz`` ``input``, a Cityscapes photo at 1025x2049).

Timed per image, one process each, alternating (deeplab2, ours, deeplab2, ours, ...) after one
untimed call each:

- deeplab2: ``tf.function(lambda x: model(x, training=False))`` on ``[1, H, W, 3]``: the network
  and deeplab2's own post-processing (its ``DeepLab.call`` in eval mode); the first call traces
  the graph and is not timed. TensorFlow is imported only in the child process
  (``--tf-child``), run by ``--tf-python``;
- ours: what ``engine.evaluate.evaluate_panoptic`` runs per image: the model (its
  ``modeling.fusion.inference_model`` copy, batch norms folded into the convolutions) under
  ``torch.no_grad()`` and ``panoptic_prediction`` with deeplab2's post-processing settings;
  ``--compile``: the model compiled by ``torch.compile`` (for this input size; the untimed first
  call compiles), deeplab2's ``tf.function`` being its compiled graph too; ``--amp``: ours in
  mixed precision (``TEST.AMP``: bfloat16 convolutions and matmuls on a CPU with AVX512-BF16 or
  AMX, attention and heads' final layers in float32). That is no longer the same arithmetic as
  deeplab2's float32, so its outputs are not the same either (with random weights the difference
  is as chaotic as below); the README reports what it changes on a trained model.

Prints the seconds of every run, the ratio of the medians (ours / deeplab2), in wall-clock and in
process CPU time (all threads; on a loaded machine a process running more threads than cores gets
a larger share of them, so wall time alone favours it), and, from the same runs, how the outputs
agree: ours against deeplab2's (max |difference| of the raw outputs, share of
panoptic pixels that differ) and deeplab2's ``tf.function`` against its eager outputs stored in
``reference.npz``. With random weights the axial models are chaotic in float32 (round-off alone
moves their outputs by tens of percent: README, "deeplab2, full size"), so deeplab2's own graph and
eager runs disagree as much as ours and theirs do; their agreement is shown in float64 by
``tools/parity/check_deeplab2.py`` (``deeplab2_reference.py --float64``), not here.

Also printed, the arithmetic floor (``arithmetic_floor``): the network's floating-point operations
(convolutions and matmuls, counted by ``torch.utils.flop_counter``) over this machine's float32
matmul peak measured in the same run (a 4096^3 product, the better of a measurement before and
one after the timed runs). Both implementations compute the same network, so no float32
implementation of it runs much faster than that here, whatever its code. It is approximate: the
measured rate is what one large product reaches, and oneDNN's convolutions have come within a
few percent of it and, in a run where the measurement caught a busy moment, above it. The count
is of direct convolutions: where ``inference_model`` computes the wide 3x3 convolutions by
Winograd's algorithm (``layers.winograd``, ~5x fewer multiplies; printed with the share of the
convolution work it covers), the floor bounds a direct implementation such as deeplab2's, not
ours. ``AXIAL_DEEPLAB_WINOGRAD=0`` times ours without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_NAMES = ("semantic_logits", "center_heatmap", "offset_map")


# ----------------------------------------------------------------------------------------------
# deeplab2 side (TensorFlow venv).


def _reference_tool():
    """``tools/parity/deeplab2_reference.py`` (builds deeplab2 models from their configs)."""
    path = os.path.join(REPO, "tools", "parity", "deeplab2_reference.py")
    spec = importlib.util.spec_from_file_location("deeplab2_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # registered as an import would be (it imports its siblings)
    spec.loader.exec_module(module)
    return module


def tf_child(args: argparse.Namespace) -> None:
    """Restore the folder's checkpoint into deeplab2's model; answer ``run`` lines on stdin with
    one timed call each (a JSON line on stdout)."""
    tool = _reference_tool()
    with open(os.path.join(args.folder, "info.json")) as f:
        info = json.load(f)
    build_args = tool.parse_args(
        ["--deeplab2", args.deeplab2, "--out", args.folder, "--size", info["size"]]
        + ["--models", info["key"]]
        + (["--float64"] if info.get("dtype") == "float64" else [])
    )
    built = tool.build_model(info["key"], build_args)
    tf, model = built.tf, built.model
    status = tf.train.Checkpoint(**model.checkpoint_items).read(os.path.join(args.folder, "ckpt-0"))
    status.expect_partial().assert_existing_objects_matched()
    reference = np.load(os.path.join(args.folder, "reference.npz"))
    image = tf.constant(reference["input"], dtype=built.floatx)  # [1, H, W, 3], 0..255
    call = tf.function(lambda x: model(x, training=False))
    start = time.perf_counter()
    outputs = call(image)  # traces the graph
    first = time.perf_counter() - start
    names = [n for n in (*RAW_NAMES, "panoptic_pred") if n in reference.files]
    agreement = {
        n: float(np.abs(outputs[n].numpy().astype(np.float64) - reference[n]).max()) for n in names
    }
    ready = {
        "first_call_s": first,
        "tf_function_vs_eager_max_abs": agreement,
        "tensorflow": tf.__version__,
        "threads": [
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ],
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = call(image)
        _ = outputs["panoptic_pred"].numpy()  # the results, on the host
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}), flush=True)


class TfChild:
    """The deeplab2 process: ``start`` waits until it is ready, ``run`` times one call."""

    def __init__(self, args: argparse.Namespace, folder: str) -> None:
        cmd = [args.tf_python, os.path.abspath(__file__), "--tf-child", "--folder", folder]
        cmd += ["--deeplab2", args.deeplab2]
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONPATH", None)
        self.log = os.path.join(folder, "deeplab2_timing_child.log")
        with open(self.log, "w") as log:  # TensorFlow's own messages
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        self.ready = self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:  # skipping anything else deeplab2 may print
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the deeplab2 child exited ({self.process.wait()}): see {self.log}")

    def run(self) -> tuple[float, float]:
        """``(wall, CPU)`` seconds of one call (CPU: all threads of the process)."""
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        answer = self._answer()
        return answer["seconds"], answer["cpu_seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


# ----------------------------------------------------------------------------------------------
# Our side.


def ours_runner(folder: str, config: str, compile_model: bool = False, amp: bool = False):
    """``(run, outputs, info, floor)``: ``run()`` is one image through our eval path, returning
    the ``(wall, CPU)`` seconds it took; ``outputs()`` the last run's raw outputs and panoptic
    map; ``floor()`` the network's ``arithmetic_floor``. ``amp``: as ``TEST.AMP`` (bfloat16)."""
    import torch

    from axial_deeplab.checkpoint.deeplab2_parity import _panoptic, converted_model
    from axial_deeplab.layers import winograd
    from axial_deeplab.modeling.fusion import inference_model
    from axial_deeplab.utils.host_memory import keep_freed_memory_for_models

    model, info, _, _ = converted_model(folder, config)
    winograd_share = winograd.winograd_share(model)
    plain = inference_model(model)  # as evaluate_panoptic and Predictor run it
    swapped = sum(type(m) is winograd.WinogradConv2d for m in plain.modules())
    model = inference_model(model, mixed_precision=True) if amp else plain
    keep_freed_memory_for_models(torch.device("cpu"))  # as they do, too
    if compile_model:
        model = torch.compile(model, dynamic=False)
    dtype = next(model.parameters()).dtype
    reference = np.load(os.path.join(folder, "reference.npz"))
    image = torch.from_numpy(reference["input"]).permute(0, 3, 1, 2).to(dtype)  # [1, 3, H, W]
    last: dict = {}

    def run() -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            outputs = model(image)
        panoptic, _ = _panoptic(outputs, info)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        last.update(outputs=outputs, panoptic=panoptic)
        return seconds, cpu

    def floor(peak: float) -> dict:
        result = arithmetic_floor(plain, image, peak)
        result["winograd"] = {"convolutions": swapped, "share": winograd_share if swapped else 0}
        if swapped:
            result["winograd"].update(winograd_errors(plain, image))
        return result

    return run, (lambda: last), info, floor


def arithmetic_floor(model, image, earlier_peak: float = 0.0) -> dict:
    """How fast any float32 implementation could run this network here: its multiply-add work
    (``torch.utils.flop_counter``: convolutions and matmuls, on a ``meta`` copy, so nothing
    runs) and the best rate of one large matmul on this machine now (4096^3, best of 5, the
    torch threads in use), the most these cores deliver."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from axial_deeplab.utils.model_stats import matmul_peak

    with torch.device("meta"):
        meta = copy.deepcopy(model).to("meta")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(torch.empty(image.shape, dtype=image.dtype))
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    # The best of this and an earlier measurement: a busy moment on a shared machine only
    # lowers the rate measured, which would make the floor look higher (slower) than it is.
    peak = max(matmul_peak(4096, repeats=5), earlier_peak)
    return {
        "flop": counter.get_total_flops(),
        "flop_by_op": by_op,
        "matmul_peak_flop_per_s": peak,
        "floor_seconds": counter.get_total_flops() / peak,
    }


def winograd_errors(model, image, crop: int = 96) -> dict:
    """How far each Winograd convolution of ``model`` is from a float64 direct one on its own
    input in a pass over ``image`` (a ``crop`` x ``crop`` window at the map's centre, halo
    included): the largest max |error| / spread of the outputs over the convolutions, for
    Winograd and for oneDNN's direct float32 convolution. Float32 runs of random-weight models
    are chaotic (see above), so this per-convolution error is what says the two algorithms
    compute the same network."""
    import torch
    import torch.nn.functional as F

    from axial_deeplab.layers.winograd import WinogradConv2d

    worst = {"winograd": 0.0, "direct": 0.0}

    def check(conv, inputs: tuple, _output) -> None:
        x = inputs[0]
        top, left = max(x.shape[2] // 2 - crop // 2, 0), max(x.shape[3] // 2 - crop // 2, 0)
        x = x[:, :, top : top + crop, left : left + crop]
        bias = None if conv.bias is None else conv.bias.double()
        exact = F.conv2d(x.double(), conv.weight.double(), bias, padding=1)
        spread = exact.std().item()
        for name, y in (
            ("winograd", WinogradConv2d.forward(conv, x)),  # forward(): no hooks again
            ("direct", F.conv2d(x, conv.weight, conv.bias, padding=1)),
        ):
            error = (y.double() - exact).abs().max().item() / spread
            worst[name] = max(worst[name], error)

    hooks = [m.register_forward_hook(check) for m in model.modules() if type(m) is WinogradConv2d]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return {"max_error_of_spread": worst}


def agreement(folder: str, last: dict, info: dict) -> dict:
    """Ours vs deeplab2's stored outputs: max |difference| per raw output, panoptic pixels."""
    from axial_deeplab.checkpoint.deeplab2_parity import _ours_on_lattice
    from axial_deeplab.checkpoint.parity import output_differences, panoptic_agreement
    from axial_deeplab.engine.evaluate import VOID_LABEL

    reference = dict(np.load(os.path.join(folder, "reference.npz")))
    raw = {k: v for k, v in reference.items() if k.startswith(RAW_NAMES)}
    differences = output_differences(_ours_on_lattice(last["outputs"], set(raw)), raw)
    panoptic = panoptic_agreement(
        last["panoptic"],
        reference["panoptic_pred"][0],
        label_divisor=info["label_divisor"],
        void_ours=VOID_LABEL,
        void_reference=info["ignore_label"] * info["label_divisor"],
    )
    return {"differences": differences, "panoptic": panoptic}


def time_key(args: argparse.Namespace, key: str, config: str) -> dict:
    import torch

    folder = os.path.join(args.references, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    from axial_deeplab.utils.model_stats import matmul_peak

    peak_before = matmul_peak(4096, repeats=5)
    theirs = TfChild(args, folder)
    run_ours, last, info, floor = ours_runner(folder, config, args.compile, args.amp)
    runs: dict[str, list[tuple[float, float]]] = {"deeplab2": [], "ours": []}
    try:
        warm = {"deeplab2": theirs.run()[0], "ours": run_ours()[0]}  # untimed
        for _ in range(args.repeats):
            runs["deeplab2"].append(theirs.run())
            runs["ours"].append(run_ours())
    finally:
        theirs.close()
    result = {
        "key": key,
        "size": list(np.load(os.path.join(folder, "reference.npz"))["input"].shape[1:3]),
        "warm_up_seconds": warm,
        "torch_threads": torch.get_num_threads(),
        "compiled": args.compile,
        "amp": args.amp,
        "deeplab2_child": theirs.ready,
        "agreement": agreement(folder, last(), info),
        "load_average": os.getloadavg()[0],
        "floor": floor(peak_before),
    }
    for kind, column in (("seconds", 0), ("cpu_seconds", 1)):
        times = {name: [r[column] for r in rs] for name, rs in runs.items()}
        medians = {name: statistics.median(t) for name, t in times.items()}
        result[kind] = times
        result[f"median_{kind}"] = medians
        result[f"{kind}_ratio"] = medians["ours"] / medians["deeplab2"]
    result["floor_ratio"] = result["floor"]["floor_seconds"] / result["median_seconds"]["deeplab2"]
    return result


def floor_line(r: dict) -> str:
    """The ``arithmetic_floor`` of a result, in words."""
    f, deeplab2 = r["floor"], r["median_seconds"]["deeplab2"]
    ops = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in sorted(f["flop_by_op"].items()))
    peak = f["matmul_peak_flop_per_s"]
    return (
        f"the network is {f['flop'] / 1e9:.0f} GFLOP ({ops}); this machine's float32 matmul "
        f"peak now: {peak / 1e9:.0f} GFLOP/s -> no float32 implementation runs it in under "
        f"{f['floor_seconds']:.1f} s = {r['floor_ratio']:.2f}x deeplab2's time (deeplab2 ran at "
        f"{f['flop'] / deeplab2 / 1e9:.0f} GFLOP/s = {f['flop'] / deeplab2 / peak:.0%} of that "
        f"peak; ours at {f['flop'] / r['median_seconds']['ours'] / peak:.0%})"
        + (
            f"; ours computes {f['winograd']['convolutions']} 3x3 convolutions "
            f"({f['winograd']['share']:.0%} of the convolution work) by Winograd's algorithm, "
            "with fewer multiplies: the floor bounds a direct implementation, not ours. Each "
            "on its input in this pass against float64, max |error| / output spread: Winograd "
            f"{f['winograd']['max_error_of_spread']['winograd']:.1e}, oneDNN direct "
            f"{f['winograd']['max_error_of_spread']['direct']:.1e}"
            if f.get("winograd", {}).get("convolutions")
            else ""
        )
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--references", help="folder of <KEY>/ from deeplab2_reference.py")
    parser.add_argument("--keys", nargs="+", help="zoo keys (default: every one found)")
    parser.add_argument("--tf-python", help="python of a TensorFlow venv (deeplab2 runs there)")
    parser.add_argument("--deeplab2", required=True, help="folder holding deeplab2/")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--compile", action="store_true", help="ours through torch.compile")
    parser.add_argument(
        "--amp", action="store_true", help="ours in mixed precision (TEST.AMP: bfloat16)"
    )
    parser.add_argument("--tf-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.tf_child and not (args.references and args.tf_python):
        parser.error("pass --references and --tf-python")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.tf_child:
        tf_child(args)
        return
    from axial_deeplab.checkpoint.zoo import ZOO

    results = []
    for model in ZOO:
        folder = os.path.join(args.references, model.key)
        if (args.keys and model.key not in args.keys) or not os.path.isdir(folder):
            continue
        r = time_key(args, model.key, model.config)
        results.append(r)
        diffs = ", ".join(
            f"{name} {d['max_abs']:.1e} ({d['max_rel']:.1e} of std)"
            for name, d in r["agreement"]["differences"].items()
        )
        p = r["agreement"]["panoptic"]
        same = "identical" if p["identical"] else f"{p['fraction_differing']:.3%} px differ"
        wall, cpu = r["median_seconds"], r["median_cpu_seconds"]
        print(
            f"{model.key} at {r['size'][0]}x{r['size'][1]}, CPU, load {r['load_average']:.1f}: "
            f"ours{' (torch.compile)' if r['compiled'] else ''}"
            f"{' (TEST.AMP: bfloat16)' if r['amp'] else ''} {wall['ours']:.1f} s, deeplab2 tf.function {wall['deeplab2']:.1f} s -> "
            f"{r['seconds_ratio']:.2f}x wall; CPU time ours {cpu['ours']:.1f} s, deeplab2 "
            f"{cpu['deeplab2']:.1f} s -> {r['cpu_seconds_ratio']:.2f}x\n"
            f"  runs (wall s): ours {[round(t, 1) for t in r['seconds']['ours']]}, deeplab2 "
            f"{[round(t, 1) for t in r['seconds']['deeplab2']]}; warm-up {r['warm_up_seconds']}\n"
            f"  outputs ours vs deeplab2: {diffs}; panoptic {same}\n"
            f"  deeplab2 tf.function vs its eager reference: "
            f"{r['deeplab2_child']['tf_function_vs_eager_max_abs']}\n"
            f"  arithmetic floor: {floor_line(r)}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
