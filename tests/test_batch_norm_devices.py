"""SyncBN where a run needs it: every batch norm (the backbone's and the axial attention's too)
on GPUs under several processes; a clear fallback to BN on CPUs, where PyTorch cannot sync."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from axial_deeplab.config import load_config
from axial_deeplab.layers.batch_norm import batch_norm_for_devices
from axial_deeplab.modeling.build import build_model

SYNTHETIC = "configs/quickstart/synthetic_axial.yaml"


def _model(norm: str = "SyncBN") -> nn.Module:
    torch.manual_seed(0)
    cfg = load_config(
        SYNTHETIC, ["MODEL.SEM_SEG_HEAD.NORM", norm, "MODEL.INS_EMBED_HEAD.NORM", norm]
    )
    return build_model(cfg)


def _kinds(model: nn.Module) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    return kinds


def test_gpu_processes_get_sync_batch_norm_everywhere():
    model = _model("BN")
    before = _kinds(model)
    assert set(before) == {"BatchNorm2d"}
    converted = batch_norm_for_devices(model, distributed=True, device_type="cuda")
    # Every one, the backbone's (convs and axial attention) included.
    assert _kinds(converted) == {"SyncBatchNorm": before["BatchNorm2d"]}
    attention = next(m for m in converted.modules() if type(m).__name__ == "AxialAttention")
    assert isinstance(attention.logits_norm, nn.SyncBatchNorm)


def test_cpu_processes_fall_back_to_batch_norm_with_a_notice(capsys):
    model = _model("SyncBN")
    kinds = _kinds(model)
    assert kinds.get("SyncBatchNorm", 0) > 0  # the heads ask for SyncBN
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.SyncBatchNorm):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 48, 64) * 255
    ref = model.eval()(x)
    out = batch_norm_for_devices(model, distributed=True, device_type="cpu")
    assert _kinds(out) == {"BatchNorm2d": sum(kinds.values())}
    assert "SyncBN needs GPUs" in capsys.readouterr().out
    got = out.eval()(x)  # same parameters and statistics
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0)
    single = _model("SyncBN")
    assert batch_norm_for_devices(single, distributed=False, device_type="cpu") is single
    assert _kinds(single) == kinds


def test_cpu_process_group_trains_a_syncbn_config(tmp_path):
    """What failed before: a SyncBN config trained in a process group on the CPU (gloo). One
    process suffices: SyncBatchNorm checks the device before it looks at the group's size."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        x = torch.rand(2, 3, 48, 64) * 255
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            _model("SyncBN").train()(x)
        model = batch_norm_for_devices(_model("SyncBN").train(), distributed=True,
                                       device_type="cpu")  # fmt: skip
        sum(v.sum() for v in model(x).values()).backward()
    finally:
        dist.destroy_process_group()
