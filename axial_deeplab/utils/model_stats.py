"""Parameters and multiply-adds (MACs) of a model at a given input size, total and per module.

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` during one forward pass: every
matrix product the model executes -- convolutions, linear layers, ``matmul``/``mm``/``bmm`` and
the ``einsum``s of the attention layers (which dispatch to ``bmm``) -- counted as FLOPs = 2 x MACs.
Normalisation, activations, softmax, pooling, interpolation and other element-wise work are not
counted (as in the paper's and most papers' MAC counts). The count reflects what the code computes,
e.g. logits of a local-span layer that its implementation evaluates and then masks.

``attention="window"`` replaces what the axial-attention layers' products count by the analytic
count of the paper's formulation: each query meets only its window (span ``m`` clipped at the
borders, or the whole axis for global attention), ``7C/2`` MACs per (query, key) pair (``q.k``,
``q.r_q``, ``k.r_k``: ``C/2`` each; ``sum w v``, ``sum w r_v``: ``C`` each), plus the 1x1 ``qkv``
projection (``C_in -> 2C`` at every input pixel, under ``"convolution"``).

The model is built on the ``meta`` device (``build_on_meta``): shapes only, no memory for
activations or weights, so full-resolution counts (1025 x 2049) take seconds.

Command line (``tools/model_stats.py``; entry point ``axial_deeplab.utils.model_stats:main``)::

    python tools/model_stats.py --config-file configs/cityscapes/axial_deeplab_l_1025x2049.yaml \\
        --input-size 1025 2049 [--backbone-only] [KEY VALUE ...]
    python tools/model_stats.py --backbone-variant axial_resnet_s --input-size 1025 2049
    python tools/model_stats.py --classifier axial26s --input-size 224 224
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers import AxialAttention
from ..layers.attention_core import plan_blocks, window_mask
from .cli import add_debug_flag, int_at_least, run_cli


@dataclass
class MacCount:
    """``total`` MACs, per aten operator (``"convolution"``, ``"bmm"``, ... and ``"attention"``
    for analytic window counts) and per module (names as in ``named_modules()``, ``""`` = root)."""

    total: int
    per_op: dict[str, int]
    per_module: dict[str, int]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def matmul_peak(size: int = 4096, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate now, in FLOP/s: the best of ``repeats`` timed
    ``size^3`` products (after one untimed), with the torch threads in use. About the most its
    cores deliver; ``FLOPs / matmul_peak()`` is then an approximate floor on any float32
    implementation's time (oneDNN's convolutions come within a few percent of this rate; a busy
    moment during the measurement lowers it, so callers take the best of several).
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def window_pairs(length: int, span: int, span_mode: str) -> int:
    """Number of (query, key) pairs that attend along an axis of ``length``, from the same block
    plan the layer runs (``attention_core.plan_blocks``): ``length^2`` for global attention, each
    query's window of ``span`` positions clipped at the borders (local; hybrid on axes longer than
    ``2 span - 1``), or each query block times its widened key range (blocked)."""
    total = 0
    for queries, keys, local in plan_blocks(length, span, span_mode):
        mask = window_mask(queries, keys, local, None)  # True: outside the window
        pairs = (queries[1] - queries[0]) * (keys[1] - keys[0])
        total += pairs - (0 if mask is None else int(mask.sum()))
    return total


def axial_attention_macs(layer: AxialAttention, input_shape: Sequence[int]) -> int:
    """Analytic attention MACs (projection excluded) of ``layer`` on ``[N, C_in, H, W]``."""
    n, _, h, w = input_shape
    length, lines = (h, n * w) if layer.axis == "height" else (w, n * h)
    return lines * window_pairs(length, layer.span, layer.span_mode) * 7 * layer.out_channels // 2


def axial_projection_macs(layer: AxialAttention, input_shape: Sequence[int]) -> int:
    """MACs of ``layer``'s 1x1 ``qkv`` projection (``C_in -> 2 C``) on ``[N, C_in, H, W]``."""
    n, c_in, h, w = input_shape
    return n * h * w * c_in * 2 * layer.out_channels


def _op_name(op) -> str:
    return getattr(op, "__name__", str(op)).split(".")[0]


def _run_counted(model: nn.Module, images: torch.Tensor) -> tuple[FlopCounterMode, dict]:
    """Forward in eval mode without grad under a flop counter; also the input shape of every
    axial-attention layer (by module name)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, AxialAttention)}
    shapes: dict[str, torch.Size] = {}

    def record(name: str) -> Callable:
        def hook(_: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, args[0].shape)

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(images)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counter, {name: (layers[name], shape) for name, shape in shapes.items()}


def profile_macs(model: nn.Module, images: torch.Tensor, attention: str = "executed") -> MacCount:
    """MACs of ``model(images)``, total, per operator and per module (module docstring)."""
    if attention not in ("executed", "window"):
        raise ValueError(f"attention: expected 'executed' or 'window', got {attention!r}")
    counter, layers = _run_counted(model, images)
    root = type(model).__name__  # FlopCounterMode names modules "<RootClass>.<path>"
    per_op: dict[str, int] = defaultdict(int)
    per_module: dict[str, int] = defaultdict(int)
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            for op, flops in ops.items():
                per_op[_op_name(op)] += flops // 2
        elif key == root or key.startswith(root + "."):
            per_module[key[len(root) + 1 :]] += sum(ops.values()) // 2
    total = counter.get_total_flops() // 2
    if attention == "window":
        counts = counter.get_flop_counts()
        for name, (layer, shape) in layers.items():
            executed = counts.get(f"{root}.{name}" if name else root, {})
            for op, flops in executed.items():
                per_op[_op_name(op)] -= flops // 2
            projection = axial_projection_macs(layer, shape)
            analytic = axial_attention_macs(layer, shape)
            per_op["convolution"] += projection
            per_op["attention"] += analytic
            change = projection + analytic - sum(executed.values()) // 2
            total += change
            for ancestor in _ancestors(name):
                per_module[ancestor] += change
    return MacCount(
        total=total,
        per_op={op: n for op, n in per_op.items() if n},
        per_module=dict(per_module),
    )


def _ancestors(name: str) -> Iterator[str]:
    """``"a.b.c"`` -> ``"", "a", "a.b", "a.b.c"``."""
    parts = name.split(".") if name else []
    for i in range(len(parts) + 1):
        yield ".".join(parts[:i])


def count_macs(
    model: nn.Module, images: torch.Tensor, attention: str = "executed"
) -> dict[str, int]:
    """``{"total": n, <operator>: n, ...}`` of ``profile_macs``."""
    count = profile_macs(model, images, attention)
    return {"total": count.total, **count.per_op}


def breakdown_rows(model: nn.Module, prefix: str = "") -> list[str]:
    """Module names for a per-module table: the root's children, with module lists and backbones
    (anything with ``stages``) opened one level, e.g. ``backbone.stem``, ``backbone.stages.0``."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList) or hasattr(child, "stages"):
            rows += breakdown_rows(child, f"{prefix}{name}.")
        else:
            rows.append(prefix + name)
    return rows


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """``builder()`` with every tensor on the ``meta`` device (no storage, no initialisation cost)."""
    with torch.device("meta"):
        return builder()


def format_table(model: nn.Module, count: MacCount) -> str:
    """Per-module parameters and MACs, then the total (stages labelled ``res2..res5``)."""
    modules = dict(model.named_modules())
    lines = [f"{'module':<34} {'parameters':>14} {'MACs (G)':>12}"]
    for name in breakdown_rows(model):
        label = name
        if name.rsplit(".", 2)[-2:-1] == ["stages"]:
            label += f" (res{int(name.rsplit('.', 1)[1]) + 2})"
        params = count_parameters(modules[name])
        lines.append(f"{label:<34} {params:>14,} {count.per_module.get(name, 0) / 1e9:>12.2f}")
    lines.append(f"{'total':<34} {count_parameters(model):>14,} {count.total / 1e9:>12.2f}")
    return "\n".join(lines)


def _builder(args: argparse.Namespace) -> Callable[[], nn.Module]:
    from ..modeling.backbone.variants import VARIANTS, build_variant

    name = args.backbone_variant or args.classifier
    if name is not None and name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    if args.backbone_variant:
        stages = ("res2", "res3", "res4", "res5")
        # the deeplab2-layout (grouped) encoders have no classifier head to remove
        head = {} if VARIANTS[name].get("layout") == "grouped" else {"num_classes": 0}
        return lambda: build_variant(name, out_features=stages, **head)
    if args.classifier:
        if not VARIANTS[name].get("num_classes"):
            raise ValueError(f"{name} has no classifier head; use --backbone-variant")
        return lambda: build_variant(name)
    from ..config import load_config

    cfg = load_config(args.config_file, args.opts)
    if args.backbone_only:
        from ..modeling.backbone.build import build_backbone

        return lambda: build_backbone(cfg)
    from ..modeling.build import build_model

    return lambda: build_model(cfg)


def main(argv: list[str] | None = None) -> None:
    """Print parameters and multiply-adds of a config's model, a backbone or a classifier."""
    run_cli(_main, argv)


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config-file", help="a config file; the full model unless --backbone-only"
    )
    source.add_argument("--backbone-variant", help="an Axial-ResNet variant, no classifier head")
    source.add_argument("--classifier", help="an ImageNet variant with its head (e.g. axial26s)")
    parser.add_argument("--backbone-only", action="store_true", help="count the config's backbone")
    parser.add_argument(
        "--input-size", nargs=2, type=int_at_least(1), default=(1025, 2049), metavar=("H", "W")
    )
    parser.add_argument(
        "--attention",
        choices=("executed", "window"),
        default="window",
        help="attention products per query window (the paper's formula) or as executed",
    )
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.opts and not args.config_file:
        parser.error("KEY VALUE overrides need --config-file")
    model = build_on_meta(_builder(args))
    h, w = args.input_size
    count = profile_macs(model, torch.zeros(1, 3, h, w, device="meta"), args.attention)
    params = count_parameters(model)
    print(f"parameters: {params:,} ({params / 1e6:.2f} M)")
    print(f"input: 1 x 3 x {h} x {w}")
    print(f"MACs ({args.attention} attention): {count.total / 1e9:.2f} G")
    for op, macs in sorted(count.per_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:<16} {macs / 1e9:10.2f} G")
    print(format_table(model, count))


if __name__ == "__main__":
    main()
