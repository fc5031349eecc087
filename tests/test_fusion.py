"""Inference rewrites (``modeling.fusion``): batch norms folded into convolutions, channels-last.

The rewritten copy must compute the same function as the model (float64, random batch-norm
statistics so that no norm is an identity), fold every norm that follows a convolution, and leave
the model it was made from untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from axial_deeplab.config import get_cfg, load_config
from axial_deeplab.layers import AxialAttention
from axial_deeplab.modeling.build import build_model
from axial_deeplab.modeling.fusion import fold_batch_norms, inference_model


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            bn.weight.data = torch.rand(n, generator=gen) + 0.5
            bn.bias.data = torch.randn(n, generator=gen) * 0.2
            bn.running_mean = torch.randn(n, generator=gen) * 0.2
            bn.running_var = torch.rand(n, generator=gen) + 0.5


def config(name: str):
    if name == "resnet50":
        cfg = get_cfg()
        cfg.MODEL.BACKBONE.NAME = "resnet"
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
        return cfg
    return load_config(name)


def norms_left(model: nn.Module) -> int:
    """Batch norms outside the attention layers (those fold into the attention's own maths)."""
    inside = {id(m) for a in model.modules() if isinstance(a, AxialAttention) for m in a.modules()}
    return sum(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside
        for m in model.modules()
    )


@pytest.mark.parametrize(
    "name",
    [
        "configs/quickstart/synthetic_axial.yaml",  # paper's axial blocks (attributes pairs)
        "resnet50",  # torchvision bottlenecks
        "configs/cityscapes/deeplab2/max_deeplab_s_backbone_os16.yaml",  # deeplab2's blocks
    ],
)
def test_inference_model_computes_the_same_function(name):
    torch.manual_seed(0)
    model = build_model(config(name))
    randomize_norms(model)
    model = model.double()
    before = copy.deepcopy(model.state_dict())
    assert model.training
    fused = inference_model(model)

    assert norms_left(model) > 0
    assert norms_left(fused) == 0  # every norm after a convolution folded
    assert fused.channels_last and not fused.training
    assert not any(p.requires_grad for p in fused.parameters())
    # The model it came from is untouched: still training, same tensors.
    assert model.training and not model.channels_last
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    image = torch.rand(1, 3, 65, 97, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = model.eval()(image.double())
        got = fused(image.double())
    for key, value in expected.items():
        assert got[key].is_contiguous()
        scale = value.abs().max().item()
        # float64 round-off through a deep random network (MaX-S: ~1e-10 when the two runs
        # sum the attention projection in different orders); a wrong fold is ~1e-2.
        assert (got[key] - value).abs().max().item() <= 1e-9 * max(scale, 1.0), key


def test_norms_in_training_mode_are_not_folded():
    model = build_model(load_config("configs/quickstart/synthetic_axial.yaml"))
    assert fold_batch_norms(model.train()) == 0
    assert fold_batch_norms(model.eval()) > 0


def test_folding_handles_conv_bias_and_norm_without_affine():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True, groups=1).double()
    norm = nn.BatchNorm2d(4, affine=False).double().eval()
    norm.running_mean = torch.randn(4, dtype=torch.float64)
    norm.running_var = torch.rand(4, dtype=torch.float64) + 0.1
    net = nn.Sequential(conv, norm, nn.ReLU())
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    expected = net(x)
    assert fold_batch_norms(net) == 1
    assert isinstance(net[1], nn.Identity)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
