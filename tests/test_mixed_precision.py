"""Mixed-precision inference (``TEST.AMP``, ``layers.precision``): which parts run in bfloat16,
which stay float32, and how it reaches the evaluation and the predictor.

The accuracy of a trained model under ``TEST.AMP`` is checked in ``test_quickstart.py`` (PQ of the
shortened quick start's model evaluated both ways).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from axial_deeplab.config import load_config
from axial_deeplab.engine import inference
from axial_deeplab.layers import AxialAttention, precision
from axial_deeplab.layers.precision import MixedPrecision
from axial_deeplab.modeling.build import build_model
from axial_deeplab.modeling.fusion import inference_model
from axial_deeplab.modeling.heads import PredictionHead

CONFIG = "configs/quickstart/synthetic_axial.yaml"
bf16 = pytest.mark.skipif(
    not precision.cpu_has_fast_bfloat16(), reason="this CPU emulates bfloat16 (slow)"
)


def _dtypes_of(model: nn.Module, kinds: tuple[type, ...]) -> dict[str, set]:
    """Runs nothing: registers hooks recording the output dtypes of every module of ``kinds``."""
    seen: dict[str, set] = {}

    def hook(module, args, output):
        out = output if isinstance(output, torch.Tensor) else output[0]
        seen.setdefault(type(module).__name__, set()).add(out.dtype)

    for m in model.modules():
        if isinstance(m, kinds):
            m.register_forward_hook(hook)
    return seen


@bf16
def test_network_in_bfloat16_attention_heads_and_outputs_in_float32():
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG))
    plain = inference_model(model)
    mixed = inference_model(model, mixed_precision=True)
    assert isinstance(mixed, MixedPrecision) and not isinstance(plain, MixedPrecision)
    seen = _dtypes_of(mixed, (nn.Conv2d, AxialAttention))
    heads = {id(m.predictor) for m in mixed.modules() if isinstance(m, PredictionHead)}
    head_out: list[torch.dtype] = []
    for m in mixed.modules():
        if id(m) in heads:
            m.register_forward_hook(lambda mod, a, out: head_out.append(out.dtype))
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        got = mixed(image)
        expected = plain(image)

    assert torch.bfloat16 in seen["Conv2d"]  # the convolutions ran in bfloat16...
    assert seen["AxialAttention"] == {torch.float32}  # ...not the attention
    assert head_out == [torch.float32] * 3  # nor the three heads' final convolutions
    assert {k: v.dtype for k, v in got.items()} == {k: torch.float32 for k in expected}
    for key in expected:  # an untrained model: the same function to bfloat16's precision
        scale = expected[key].abs().max()
        assert (got[key] - expected[key]).abs().max() <= 0.05 * scale, key


def test_head_predictor_is_float32_under_autocast():
    """Offsets of hundreds of pixels: in bfloat16 a 500-pixel offset is only known to 2 pixels."""
    head = PredictionHead(8, 8, 2, init_std=30.0).eval()
    nn.init.constant_(head.predictor.bias, 400.0)
    x = torch.randn(1, 8, 6, 7, generator=torch.Generator().manual_seed(0))
    inputs = []
    head.predictor.register_forward_hook(lambda mod, args, out: inputs.append((args[0], out)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        head(x)
    ((seen, out),) = inputs
    assert seen.dtype == out.dtype == torch.float32
    expected = F.conv2d(seen, head.predictor.weight, head.predictor.bias)
    assert out.abs().max() > 100  # offsets in the hundreds of pixels...
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-4)  # ...to float32's precision


class Recorder(nn.Module):
    """Toy model: constant outputs, records the dtype autocast gives a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.seen: list[torch.dtype] = []

    def forward(self, images):
        self.seen.append(self.conv(images).dtype)
        n, _, h, w = images.shape
        return {
            "semantic": torch.zeros(n, 2, h, w).index_fill_(1, torch.tensor([1]), 1.0),
            "center": torch.zeros(n, 1, h, w),
            "offset": torch.zeros(n, 2, h, w),
        }


@bf16
def test_config_reaches_the_predictor(monkeypatch):
    cfg = load_config(CONFIG, ["TEST.AMP", "True"])
    model = Recorder()
    monkeypatch.setattr("axial_deeplab.modeling.build.build_model", lambda cfg: model)
    predictor = inference.build_predictor(cfg, {"class_names": ["a", "b"]}, torch.device("cpu"))
    out = predictor.predict(np.zeros((8, 10, 3), dtype=np.uint8))
    assert predictor.model.model.seen == [torch.bfloat16]
    assert (out["semantic"] == 1).all()


def test_warns_where_the_cpu_emulates_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="no bfloat16 instructions"):
        inference.Predictor(Recorder(), metadata={"class_names": ["a", "b"]}, mixed_precision=True)


def test_infer_amp_flag_sets_test_amp_and_is_refused_with_exported_backends():
    from axial_deeplab.config import ConfigError
    from axial_deeplab.engine import infer_net, predictor_setup

    base = ["--weights", "m.pth", "--input", "a.png", "--output", "out"]
    opts = predictor_setup._overrides(infer_net.parse_args([*base, "--amp"]))
    assert opts[opts.index("TEST.AMP") + 1] == "True"
    assert "TEST.AMP" not in predictor_setup._overrides(infer_net.parse_args(base))
    args = infer_net.parse_args([*base, "--amp", "--backend", "onnxruntime"])
    with pytest.raises(ConfigError, match="no --amp"):
        infer_net.exported_predictor(args)


def test_demo_amp_flag_loads_a_mixed_precision_predictor(tmp_path):
    from axial_deeplab.checkpoint.io import save_checkpoint_file
    from axial_deeplab.demo.app import DemoModel
    from axial_deeplab.demo.server import parse_args

    cfg = load_config(CONFIG)
    weights = tmp_path / "model.pth"
    save_checkpoint_file(weights, build_model(cfg).state_dict(), config=cfg)
    for flags, wrapped in (([], False), (["--amp"], True)):
        args = parse_args(["--weights", str(weights), "--samples", str(tmp_path), *flags])
        model = DemoModel.load(args)
        assert isinstance(model.predictor.model, MixedPrecision) is wrapped


def test_infer_says_which_precision_runs(tmp_path, capsys):
    from axial_deeplab.checkpoint.io import save_checkpoint_file
    from axial_deeplab.engine import infer_net

    cfg = load_config(CONFIG)
    weights = tmp_path / "model.pth"
    save_checkpoint_file(weights, build_model(cfg).state_dict(), config=cfg)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((40, 48, 3), 128, np.uint8))
    base = ["--weights", str(weights), "--input", str(image), "--output", str(tmp_path / "out")]
    infer_net.main([*base, "--amp"])
    assert "mixed precision (TEST.AMP): bfloat16 on cpu" in capsys.readouterr().out
    infer_net.main(base)
    assert "mixed precision" not in capsys.readouterr().out
