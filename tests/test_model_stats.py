"""Parameter and multiply-add counting (``axial_deeplab.utils.model_stats``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from axial_deeplab.config import get_cfg, load_config
from axial_deeplab.layers import AxialAttention
from axial_deeplab.modeling.build import build_model
from axial_deeplab.utils.cli import DEBUG_ENV
from axial_deeplab.utils.model_stats import (
    breakdown_rows,
    build_on_meta,
    count_macs,
    count_parameters,
    main,
    profile_macs,
    window_pairs,
)


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )


def test_parameters_and_macs_of_a_small_cnn_on_cpu_and_meta():
    # weights 8*3*3*3 + 8 biases, 8*5 + 5 -> 216 + 8 + 45 = 269
    assert count_parameters(_small_cnn()) == 269
    # conv: 8 outputs * 27 taps at 10*12 pixels = 25,920; linear: 8*5 = 40
    expected = {"total": 25_960, "convolution": 25_920, "addmm": 40}
    assert count_macs(_small_cnn(), torch.zeros(1, 3, 10, 12)) == expected
    meta = build_on_meta(_small_cnn)
    assert count_macs(meta, torch.zeros(1, 3, 10, 12, device="meta")) == expected
    per_module = profile_macs(meta, torch.zeros(1, 3, 10, 12, device="meta")).per_module
    assert per_module["0"] == 25_920 and per_module["3"] == 40 and per_module[""] == 25_960


def test_window_pairs():
    assert window_pairs(20, 65, "global") == 400
    # span 5 (reach 2) on 20 positions: 3, 4, then 16 full windows of 5, then 4, 3
    assert window_pairs(20, 5, "local") == 3 + 4 + 16 * 5 + 4 + 3
    assert window_pairs(3, 65, "local") == 9  # the window covers the whole axis
    # span 3: blocks of 5 queries, flange 1; 13 positions: blocks [0, 5) [5, 10) [10, 13)
    # see keys [0, 6), [4, 11), [9, 13): 5 * 6 + 5 * 7 + 3 * 4
    assert window_pairs(13, 3, "block") == 30 + 35 + 12
    assert window_pairs(5, 3, "block") == 25  # one block: global
    assert window_pairs(5, 3, "hybrid") == 25  # L <= 2 m - 1: global
    assert window_pairs(20, 5, "hybrid") == window_pairs(20, 5, "local")


# pairs per column of 6 rows: global 6 * 6; local span 5 (reach 2): rows 0..5 see 3, 4, 5, 5, 4, 3
# blocked span 3 (blocks of 5, flange 1): rows 0..4 see keys 0..5, row 5 sees keys 4..5: 5 * 6 + 2
@pytest.mark.parametrize(
    "span, span_mode, pairs", [(9, "global", 36), (5, "local", 24), (3, "block", 32)]
)
def test_attention_products_are_counted(span, span_mode, pairs):
    # one height layer, C = 16 (8 heads: q/k width 1, v width 2 per head), input 2 x 16 x 6 x 3
    c, n, h, w = 16, 2, 6, 3
    layer = AxialAttention(c, c, axis="height", span=span, span_mode=span_mode)
    x = torch.randn(n, c, h, w)
    projection = n * h * w * c * 2 * c  # 1x1 conv 16 -> 32 (q, k, v) at every pixel
    # per (query, key) pair, summed over heads: q.k, q.rq, k.rk (C/2 each), sum w v and
    # sum w rv (C each): 7C/2 = 56 MACs; n * w columns
    assert window_pairs(h, span, span_mode) == pairs
    attention = n * w * pairs * 56
    window = count_macs(layer, x, attention="window")
    assert window == {
        "total": projection + attention,
        "convolution": projection,
        "attention": attention,
    }
    # as executed (the projection may run as a matmul): the layer's einsum/matmul products are
    # counted, at least the window's, and no runaway count (at most 4x the dense L x L ones)
    executed = count_macs(layer, x)["total"]
    assert projection + attention <= executed <= projection + 4 * n * w * h * h * 56


def test_counting_on_the_meta_device_matches_cpu():
    c, h, w = 32, 11, 7
    cpu = count_macs(AxialAttention(c, c, axis="width", span=5), torch.zeros(1, c, h, w))
    meta_layer = build_on_meta(lambda: AxialAttention(c, c, axis="width", span=5))
    assert count_macs(meta_layer, torch.zeros(1, c, h, w, device="meta")) == cpu


def _tiny_panoptic_cfg():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.AXIAL_RESNET.VARIANT", "axial_resnet_tiny"])
    cfg.merge_from_list(["MODEL.AXIAL_RESNET.SPAN", 5, "MODEL.DEVICE", "cpu"])
    return cfg


def test_per_module_breakdown_covers_the_whole_model():
    model = build_model(_tiny_panoptic_cfg())
    rows = breakdown_rows(model)
    assert rows[:5] == [
        "backbone.stem",
        "backbone.stages.0",
        "backbone.stages.1",
        "backbone.stages.2",
        "backbone.stages.3",
    ]
    assert {"semantic_decoder", "instance_decoder", "semantic_head"} <= set(rows)
    modules = dict(model.named_modules())
    # the rows partition the parameters and the counted products (the meta-architecture itself
    # only resizes, which is not counted)
    assert sum(count_parameters(modules[r]) for r in rows) == count_parameters(model)
    count = profile_macs(model, torch.zeros(1, 3, 33, 41), attention="window")
    assert sum(count.per_module.get(r, 0) for r in rows) == count.total
    assert all(count.per_module[r] > 0 for r in rows)


def test_cli_prints_parameters_macs_and_table(capsys):
    from axial_deeplab.modeling.backbone.variants import build_variant

    main(["--backbone-variant", "axial_resnet_tiny", "--input-size", "33", "41"])
    lines = capsys.readouterr().out.splitlines()
    params = count_parameters(build_variant("axial_resnet_tiny"))
    assert lines[0] == f"parameters: {params:,} ({params / 1e6:.2f} M)"
    assert lines[1] == "input: 1 x 3 x 33 x 41"
    assert lines[2].startswith("MACs (window attention): ")
    assert any(line.startswith("stages.3 (res5)") for line in lines)
    assert lines[-1].startswith("total") and f"{params:,}" in lines[-1]
    with pytest.raises(SystemExit, match="no classifier head"):
        main(["--classifier", "axial_resnet_tiny"])


QUICKSTART = "configs/quickstart/synthetic_axial.yaml"


def test_cli_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": {}}, checkpoint)
    cases = [
        (
            ["--config-file", QUICKSTART, "MODEL.AXIAL_RESNET.VARIANTS", "x"],
            "error: command-line override: unknown config key 'MODEL.AXIAL_RESNET.VARIANTS' "
            "(did you mean 'MODEL.AXIAL_RESNET.VARIANT'?)",
        ),
        (
            ["--config-file", str(tmp_path / "nope.yaml")],
            f"error: config file not found: {tmp_path / 'nope.yaml'}",
        ),
        (
            ["--config-file", str(checkpoint)],
            f"error: {checkpoint}: not a YAML config (a binary file: a checkpoint?",
        ),
        (["--backbone-variant", "nope"], "error: unknown variant 'nope'; known: ["),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert str(info.value.code).startswith(message), info.value.code
        assert "\n" not in str(info.value.code) and "Traceback" not in capsys.readouterr().err


def test_cli_refuses_an_empty_input_size(capsys):
    # was a RuntimeError inside the stem's convolution; the models run on any size >= 1 x 1
    with pytest.raises(SystemExit) as info:
        main(["--backbone-variant", "axial_resnet_tiny", "--input-size", "0", "10"])
    assert info.value.code == 2
    assert "argument --input-size: expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_cli_counts_a_grouped_backbone(capsys):
    # deeplab2-layout encoders take no num_classes (was: "unknown encoder options")
    main(["--backbone-variant", "resnet50_deeplab2", "--input-size", "33", "33"])
    assert capsys.readouterr().out.startswith("parameters: ")


# The paper's Table (Cityscapes, 1025 x 2049, span 65): parameters (M) and multiply-adds (G).
PAPER = {"s": (12.1, 220.8), "m": (25.9, 419.6), "l": (44.9, 687.4), "xl": (173.0, 2446.8)}


@pytest.mark.parametrize("variant", sorted(PAPER))
def test_panoptic_variants_match_the_paper_counts(variant):
    cfg = load_config(
        "configs/cityscapes/axial_deeplab_l_1025x2049.yaml",
        ["MODEL.AXIAL_RESNET.VARIANT", f"axial_resnet_{variant}"],
    )
    model = build_on_meta(lambda: build_model(cfg))
    params = count_parameters(model) / 1e6
    macs = profile_macs(model, torch.zeros(1, 3, 1025, 2049, device="meta"), "window").total / 1e9
    paper_params, paper_macs = PAPER[variant]
    assert abs(params / paper_params - 1) <= 0.02, f"{params:.2f} M vs the paper's {paper_params}"
    assert abs(macs / paper_macs - 1) <= 0.05, f"{macs:.1f} G vs the paper's {paper_macs}"
