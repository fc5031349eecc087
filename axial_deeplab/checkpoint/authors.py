"""Map state dicts of the authors' PyTorch Axial-ResNet (csrhddlam/axial-deeplab) onto ours.

Whole models: ``convert_authors_state_dict`` (checked against one of our variants) and the
``axial-deeplab-convert`` command (``main``; ``tools/convert_weights.py``).

Their ``AxialAttention`` layer stores (``C`` = width, ``G`` heads, ``gp = C / G``, ``K`` = kernel size):

- ``qkv_transform.weight [2C, C_in, 1]``: per head ``g`` the channels ``[q (gp/2) | k (gp/2) | v (gp)]``.
- ``bn_qkv.*  [2C]``: same channel order.
- ``bn_similarity.* [3G]``: ``[qk heads | qr heads | kr heads]``, the order we use.
- ``bn_output.* [2C]``: interleaved, channel ``2 * c + t`` with ``t = 0`` for ``sum w*v`` and ``1`` for
  ``sum w*rv``.
- ``relative [2 * gp, 2K - 1]``: rows ``[q (gp/2) | k (gp/2) | v (gp)]``. Their query and value terms
  index it by ``o - p`` and their key term by ``p - o``; we index every table by ``p - o``, so the
  query and value tables are flipped.
- ``flatten_index``: a buffer we recompute, dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def qkv_permutation(width: int, num_heads: int) -> torch.Tensor:
    """``perm[i]`` = the authors' qkv channel that becomes our channel ``i`` (``[q | k | v]`` order)."""
    gp = width // num_heads
    dk = gp // 2
    head = torch.arange(num_heads)[:, None] * 2 * gp  # [G, 1]
    q = (head + torch.arange(dk)).flatten()
    k = (head + dk + torch.arange(dk)).flatten()
    v = (head + 2 * dk + torch.arange(gp)).flatten()
    return torch.cat([q, k, v])


def output_permutation(width: int) -> torch.Tensor:
    """``perm[i]`` = the authors' output-BN channel that becomes our channel ``i``."""
    channel = torch.arange(width)
    return torch.cat([2 * channel, 2 * channel + 1])


def _take_bn(src: Mapping[str, torch.Tensor], prefix: str, perm: torch.Tensor | None) -> dict:
    out = {}
    for suffix in BN_SUFFIXES:
        value = src[f"{prefix}.{suffix}"]
        out[suffix] = value if perm is None or value.dim() == 0 else value[perm]
    return out


def convert_attention_layer(
    src: Mapping[str, torch.Tensor], num_heads: int = 8
) -> dict[str, torch.Tensor]:
    """Convert one authors' ``AxialAttention`` state dict (keys without prefix) to ours;
    ValueError when ``num_heads`` is not the layer's (``bn_similarity`` has 3 channels a head)."""
    weight = src["qkv_transform.weight"]
    width = weight.shape[0] // 2
    similarity = src.get("bn_similarity.weight")
    heads = None if similarity is None else similarity.shape[0] // 3
    if num_heads < 1 or (heads is not None and heads != num_heads) or width % (2 * num_heads):
        found = (
            f"{heads} heads (bn_similarity has {3 * heads} channels)" if heads else "other heads"
        )
        raise ValueError(
            f"--num-heads {num_heads} does not fit the checkpoint's attention layers: they have "
            f"{found}, {width} channels"
        )
    gp = width // num_heads
    dk = gp // 2
    qkv_perm = qkv_permutation(width, num_heads)
    out: dict[str, torch.Tensor] = {"qkv_proj.weight": weight[qkv_perm][..., None].clone()}
    for ours, theirs, perm in (
        ("qkv_norm", "bn_qkv", qkv_perm),
        ("logits_norm", "bn_similarity", None),
        ("output_norm", "bn_output", output_permutation(width)),
    ):
        for suffix, value in _take_bn(src, theirs, perm).items():
            out[f"{ours}.{suffix}"] = value.clone()
    relative = src["relative"]
    q_rel, k_rel, v_rel = torch.split(relative, [dk, dk, gp], dim=0)
    out["query_rel"] = q_rel.flip(-1).clone()
    out["key_rel"] = k_rel.clone()
    out["value_rel"] = v_rel.flip(-1).clone()
    return out


# Their module names -> ours, inside one block (``layerI.J.`` -> ``stages.{I-1}.J.``).
BLOCK_MODULES = {
    "conv_down": "reduce",
    "bn1": "reduce_norm",
    "conv_up": "expand",
    "bn2": "expand_norm",
    "downsample.0": "shortcut.0",
    "downsample.1": "shortcut.1",
}
ATTENTION_MODULES = {"hight_block": "height_attention", "width_block": "width_attention"}
# Their top-level modules -> ours (7x7 stem and classifier).
TOP_MODULES = {"conv1": "stem.0", "bn1": "stem.1", "fc": "fc"}


def _split_layer_key(key: str) -> tuple[str, str] | None:
    """``"layer2.1.bn1.weight"`` -> (``"stages.1.1."``, ``"bn1.weight"``); None if not a block key."""
    parts = key.split(".", 2)
    if len(parts) < 3 or not parts[0].startswith("layer") or not parts[1].isdigit():
        return None
    stage = int(parts[0].removeprefix("layer")) - 1
    return f"stages.{stage}.{parts[1]}.", parts[2]


def convert_axial_resnet(
    src: Mapping[str, torch.Tensor], num_heads: int = 8
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert the authors' ``AxialAttentionNet`` state dict (``axial26s``, ``axial50s/m/l``).

    Returns our state dict (for ``variants.build_variant(name)``) and the authors' keys that were
    not used (``flatten_index`` buffers are recomputed by our layer and not reported).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    attention_prefixes: dict[str, str] = {}  # theirs -> ours, e.g. layer1.0.hight_block
    for key, value in src.items():
        if key.endswith("flatten_index"):
            used.add(key)
            continue
        split = _split_layer_key(key)
        if split is None:
            module, _, suffix = key.rpartition(".")
            if module in TOP_MODULES:
                out[f"{TOP_MODULES[module]}.{suffix}"] = value.clone()
                used.add(key)
            continue
        prefix, rest = split
        attention = rest.split(".", 1)[0]
        if attention in ATTENTION_MODULES:
            theirs = key[: len(key) - len(rest)] + attention
            attention_prefixes[theirs] = prefix + ATTENTION_MODULES[attention]
            continue
        module, _, suffix = rest.rpartition(".")
        if module in BLOCK_MODULES:
            out[f"{prefix}{BLOCK_MODULES[module]}.{suffix}"] = value.clone()
            used.add(key)
    for theirs, ours in sorted(attention_prefixes.items()):
        layer = {k[len(theirs) + 1 :]: v for k, v in src.items() if k.startswith(theirs + ".")}
        try:
            converted = convert_attention_layer(layer, num_heads)
        except KeyError as err:
            raise ValueError(f"{theirs}: incomplete attention layer, missing {err}") from err
        out.update({f"{ours}.{k}": v for k, v in converted.items()})
        used.update(f"{theirs}.{k}" for k in layer if k != "flatten_index")
    return out, sorted(set(src) - used)


@dataclass
class ConversionReport:
    """What did not match when converting the authors' state dict to one of our variants."""

    unused: list[str] = field(default_factory=list)  # their keys that map to nothing
    missing: list[str] = field(default_factory=list)  # our model's keys not produced
    unexpected: list[str] = field(default_factory=list)  # produced keys our model lacks
    shape: list[str] = field(default_factory=list)  # "key: converted [..] vs model [..]"

    @property
    def ok(self) -> bool:
        return not (self.unused or self.missing or self.unexpected or self.shape)

    def format(self) -> str:
        """One section per non-empty list, every key on its own line."""
        sections = {
            "unused (theirs)": self.unused,
            "missing (ours)": self.missing,
            "unexpected (not in our model)": self.unexpected,
            "shape mismatch": self.shape,
        }
        return "\n".join(
            f"{title}: {len(keys)} key(s)\n  " + "\n  ".join(keys)
            for title, keys in sections.items()
            if keys
        )


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside ``{"state_dict": ...}`` / ``{"model": ...}``, without the ``module.``
    prefixes of ``DataParallel`` (how the authors' training script saves)."""
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_authors_state_dict(
    state: Mapping[str, torch.Tensor], *, variant: str, num_heads: int = 8
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The authors' ``AxialAttentionNet`` state dict (maybe wrapped) -> ours for ``variant``.

    Returns the converted state dict and a report of every key that did not match our
    ``build_variant(variant)`` (built on the meta device: names and shapes only).
    """
    from ..modeling.backbone.variants import build_variant

    converted, unused = convert_axial_resnet(unwrap_state_dict(state), num_heads)
    with torch.device("meta"):
        expected = build_variant(variant, num_heads=num_heads).state_dict()
    report = ConversionReport(
        unused=unused,
        missing=sorted(set(expected) - set(converted)),
        unexpected=sorted(set(converted) - set(expected)),
        shape=[
            f"{k}: converted {list(converted[k].shape)} vs model {list(v.shape)}"
            for k, v in expected.items()
            if k in converted and converted[k].shape != v.shape
        ],
    )
    return converted, report


def main(argv: list[str] | None = None) -> int:
    """``axial-deeplab-convert THEIRS.pth OURS.pth --variant axial26s``: convert, check, save.

    Exits 1 without writing when any key does not match, unless ``--allow-partial`` (then only
    the keys that match our model in name and shape are written, for ``strict=False`` loading).
    Other errors are one line (``--debug``: with the traceback).
    """
    from ..utils.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: list[str]) -> int:
    import argparse

    from ..modeling.backbone.variants import VARIANTS
    from ..utils.cli import add_debug_flag, check_output_file
    from .io import load_torch_file, refuse_our_checkpoint, save_atomic

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("input", help="the authors' checkpoint (state dict, maybe wrapped)")
    parser.add_argument("output", help="where to write our state dict (weights-only loadable)")
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--allow-partial", action="store_true", help="write despite mismatches")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    check_output_file(args.output, "output", "model.pth", inputs=[args.input])
    state = load_torch_file(args.input)
    refuse_our_checkpoint(state, args.input)
    if not isinstance(state, Mapping):
        raise ValueError(f"{args.input}: expected a state dict, got {type(state).__name__}")
    converted, report = convert_authors_state_dict(
        state, variant=args.variant, num_heads=args.num_heads
    )
    if not report.ok:
        print(report.format())
        if not args.allow_partial:
            raise ValueError(
                f"{args.input} does not match our {args.variant} (the report above): not written"
            )
        bad = set(report.unexpected) | {line.split(":", 1)[0] for line in report.shape}
        converted = {k: v for k, v in converted.items() if k not in bad}
    save_atomic(converted, args.output)
    print(f"wrote {len(converted)} tensors to {args.output} ({args.variant})")
    return 0
