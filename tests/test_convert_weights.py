"""Converting the authors' Axial-ResNet state dicts (csrhddlam/axial-deeplab, ``axialnet.py``).

The authors' state dict is generated here from their documented module tree (names and shapes),
and their forward pass is re-implemented compactly on that dict (reference below), so the test
needs neither their code nor their weights. Checked against their actual code outside the suite:
float64 max |difference| of axial26s logits at 224 x 224: 2.5e-13 (eval), 9.6e-13 (train).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from axial_deeplab.checkpoint.authors import (
    convert_authors_state_dict,
    convert_axial_resnet,
    main,
)
from axial_deeplab.modeling.backbone.variants import VARIANTS, axial_resnet

GROUPS = 8
# A reduced axial26s: layers [1, 2, 1, 1], s = 0.25, 32 x 32 images, 10 classes. Their
# kernel_size per block is its input length: layer1 8; layer2 8 then 4; layer3 4; layer4 2.
LAYERS, S, IMAGE, CLASSES = (1, 2, 1, 1), 0.25, 32, 10
KERNELS = [[8], [8, 4], [4], [2]]


def _bn(sd: dict, name: str, channels: int, g: torch.Generator) -> None:
    sd[f"{name}.weight"] = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    sd[f"{name}.bias"] = torch.randn(channels, generator=g, dtype=torch.float64) * 0.1
    sd[f"{name}.running_mean"] = torch.randn(channels, generator=g, dtype=torch.float64) * 0.1
    sd[f"{name}.running_var"] = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    sd[f"{name}.num_batches_tracked"] = torch.tensor(7)


def _attention(sd: dict, name: str, width: int, kernel: int, g: torch.Generator) -> None:
    gp = width // GROUPS
    sd[f"{name}.qkv_transform.weight"] = torch.randn(2 * width, width, 1, generator=g).double()
    _bn(sd, f"{name}.bn_qkv", 2 * width, g)
    _bn(sd, f"{name}.bn_similarity", 3 * GROUPS, g)
    _bn(sd, f"{name}.bn_output", 2 * width, g)
    sd[f"{name}.relative"] = torch.randn(2 * gp, 2 * kernel - 1, generator=g).double()
    i = torch.arange(kernel)
    sd[f"{name}.flatten_index"] = (i[:, None] - i[None, :] + kernel - 1).reshape(-1)


def authors_state_dict(
    g: torch.Generator, layers=LAYERS, s=S, kernels_per_layer=KERNELS, classes=CLASSES
) -> dict[str, torch.Tensor]:
    """Their ``AxialAttentionNet`` names and shapes (conv1, bn1, layerI.J.*, fc), random values."""
    sd: dict[str, torch.Tensor] = {}
    inplanes = int(64 * s)
    sd["conv1.weight"] = torch.randn(inplanes, 3, 7, 7, generator=g).double() * 0.2
    _bn(sd, "bn1", inplanes, g)
    for i, (n, kernels) in enumerate(zip(layers, kernels_per_layer), start=1):
        planes = int(128 * 2 ** (i - 1) * s)
        for j in range(n):
            p = f"layer{i}.{j}"
            sd[f"{p}.conv_down.weight"] = torch.randn(planes, inplanes, 1, 1, generator=g).double()
            _bn(sd, f"{p}.bn1", planes, g)
            _attention(sd, f"{p}.hight_block", planes, kernels[j], g)
            _attention(sd, f"{p}.width_block", planes, kernels[j], g)
            sd[f"{p}.conv_up.weight"] = torch.randn(2 * planes, planes, 1, 1, generator=g).double()
            _bn(sd, f"{p}.bn2", 2 * planes, g)
            if j == 0 and (i > 1 or inplanes != 2 * planes):
                sd[f"{p}.downsample.0.weight"] = torch.randn(
                    2 * planes, inplanes, 1, 1, generator=g
                ).double()
                _bn(sd, f"{p}.downsample.1", 2 * planes, g)
            inplanes = 2 * planes
    sd["fc.weight"] = torch.randn(classes, inplanes, generator=g).double() * 0.1
    sd["fc.bias"] = torch.randn(classes, generator=g).double()
    return sd


def _norm(x: torch.Tensor, sd: dict, name: str, training: bool) -> torch.Tensor:
    w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
    mean, var = sd[f"{name}.running_mean"].clone(), sd[f"{name}.running_var"].clone()
    return F.batch_norm(x, mean, var, w, b, training=training, eps=1e-5)


def ref_attention(x, sd, name, width, stride, training):
    """Their layer on ``x [N, C, H, W]``: height layer when ``name`` ends in hight_block."""
    along_width = name.endswith("width_block")
    lines = x.permute(0, 2, 1, 3) if along_width else x.permute(0, 3, 1, 2)  # [N, W', C, L]
    n, m, c, length = lines.shape
    gp = width // GROUPS
    qkv = F.conv1d(lines.reshape(n * m, c, length), sd[f"{name}.qkv_transform.weight"])
    qkv = _norm(qkv, sd, f"{name}.bn_qkv", training)  # [B, 2C, L], per head [q | k | v]
    q, k, v = qkv.reshape(n * m, GROUPS, 2 * gp, length).split([gp // 2, gp // 2, gp], dim=2)
    emb = sd[f"{name}.relative"][:, sd[f"{name}.flatten_index"]].reshape(2 * gp, length, length)
    eq, ek, ev = emb.split([gp // 2, gp // 2, gp], dim=0)  # e[c, i, j] = rel[c, i - j + K - 1]
    qr = torch.einsum("bgci,cij->bgij", q, eq)
    kr = torch.einsum("bgci,cij->bgij", k, ek).transpose(2, 3)
    qk = torch.einsum("bgci,bgcj->bgij", q, k)
    logits = _norm(torch.cat([qk, qr, kr], 1), sd, f"{name}.bn_similarity", training)
    weights = logits.reshape(n * m, 3, GROUPS, length, length).sum(1).softmax(dim=3)
    sv = torch.einsum("bgij,bgcj->bgci", weights, v)
    sve = torch.einsum("bgij,cij->bgci", weights, ev)
    out = torch.cat([sv, sve], dim=-1).reshape(n * m, 2 * width, length)  # channels interleaved
    out = _norm(out, sd, f"{name}.bn_output", training).reshape(n, m, width, 2, length).sum(3)
    out = out.permute(0, 2, 1, 3) if along_width else out.permute(0, 2, 3, 1)  # [N, C, H, W]
    return F.avg_pool2d(out, stride) if stride > 1 else out


def ref_forward(x: torch.Tensor, sd: dict, training: bool) -> torch.Tensor:
    x = F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.relu(_norm(x, sd, "bn1", training)), 3, 2, 1)
    for i, n in enumerate(LAYERS, start=1):
        width = int(128 * 2 ** (i - 1) * S)
        for j in range(n):
            p, stride = f"layer{i}.{j}", 2 if (i > 1 and j == 0) else 1
            out = F.relu(_norm(F.conv2d(x, sd[f"{p}.conv_down.weight"]), sd, f"{p}.bn1", training))
            out = ref_attention(out, sd, f"{p}.hight_block", width, 1, training)
            out = F.relu(ref_attention(out, sd, f"{p}.width_block", width, stride, training))
            out = _norm(F.conv2d(out, sd[f"{p}.conv_up.weight"]), sd, f"{p}.bn2", training)
            if f"{p}.downsample.0.weight" in sd:
                x = F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride)
                x = _norm(x, sd, f"{p}.downsample.1", training)
            x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def _ours() -> torch.nn.Module:
    # the axial26s row of the variant table with the reduced layout (same builder)
    row = dict(VARIANTS["axial26s"], layers=LAYERS, width_multiplier=S, image_size=IMAGE)
    row["stem_width_multiplier"] = S  # their stem has int(64 * s) channels
    return axial_resnet("reduced", **dict(row, num_classes=CLASSES)).double()


def test_converted_weights_reproduce_the_authors_forward():
    g = torch.Generator().manual_seed(0)
    theirs = authors_state_dict(g)
    converted, leftover = convert_axial_resnet(theirs)
    assert leftover == []
    model = _ours()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            ours = model(x)["linear"]
        expected = ref_forward(x, theirs, training)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


def test_cli_unwraps_writes_weights_only_and_reports_unmatched_keys(tmp_path, capsys):
    from axial_deeplab.modeling.backbone.variants import build_variant

    # the full axial26s layout: layers [1, 2, 4, 1], s = 0.5, kernels at 224, 1000 classes
    kernels = [[56], [56, 28], [28, 14, 14, 14], [14]]
    theirs = authors_state_dict(torch.Generator().manual_seed(1), (1, 2, 4, 1), 0.5, kernels, 1000)
    theirs = {k: v.float() if v.is_floating_point() else v for k, v in theirs.items()}
    src, out = tmp_path / "axial26s.pth", tmp_path / "ours.pth"
    # as saved by their DataParallel training script: wrapped, "module." prefixes
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in theirs.items()}}, src)
    assert main([str(src), str(out), "--variant", "axial26s"]) == 0
    converted = torch.load(out, weights_only=True)
    model = build_variant("axial26s")
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.stem[0].weight, theirs["conv1.weight"])
    assert torch.equal(model.stages[2][3].expand.weight, theirs["layer3.3.conv_up.weight"])
    wrapped = torch.load(src, weights_only=True)
    direct, report = convert_authors_state_dict(wrapped, variant="axial26s")
    assert report.ok and direct.keys() == converted.keys()
    # the same weights against a deeper variant: its extra blocks are reported missing
    _, report = convert_authors_state_dict(wrapped, variant="axial50s")
    assert not report.ok and "stages.0.2.reduce.weight" in report.missing

    # a stray key, a missing one and a 10-class head: all reported by name, nothing written
    theirs["layer5.0.extra.weight"] = torch.zeros(1)
    del theirs["layer3.3.conv_up.weight"]
    theirs["fc.weight"], theirs["fc.bias"] = theirs["fc.weight"][:10], theirs["fc.bias"][:10]
    torch.save(theirs, src)
    out.unlink()
    with pytest.raises(SystemExit, match=r"axial26s.pth does not match our axial26s .*written"):
        main([str(src), str(out), "--variant", "axial26s"])
    report = capsys.readouterr().out
    assert "unused (theirs): 1 key(s)\n  layer5.0.extra.weight\n" in report
    assert "missing (ours): 1 key(s)\n  stages.2.3.expand.weight\n" in report
    assert (
        "shape mismatch: 2 key(s)\n  fc.weight: converted [10, 1024] vs model [1000, 1024]"
        in report
    )
    assert not out.exists()

    # --allow-partial writes what matches; strict=False loading then lists exactly the gaps
    assert main([str(src), str(out), "--variant", "axial26s", "--allow-partial"]) == 0
    partial = torch.load(out, weights_only=True)
    assert len(partial) == len(converted) - 3
    result = model.load_state_dict(partial, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight", "stages.2.3.expand.weight"]


def test_cli_names_a_wrong_head_count(tmp_path):
    # An audit's --num-heads 0, 4, 16 and -2 ended in ZeroDivisionError or torch errors marked
    # unexpected.
    kernels = [[56], [56, 28], [28, 14, 14, 14], [14]]
    theirs = authors_state_dict(torch.Generator().manual_seed(1), (1, 2, 4, 1), 0.5, kernels, 1000)
    src = tmp_path / "axial26s.pth"
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in theirs.items()}, src)
    for heads in ("0", "4", "16", "-2"):
        with pytest.raises(SystemExit) as failed:
            main([str(src), str(tmp_path / "o.pth"), "--variant", "axial26s", "--num-heads", heads])
        assert str(failed.value).startswith(
            f"error: --num-heads {heads} does not fit the checkpoint's attention layers: they "
            "have 8 heads (bn_similarity has 24 channels)"
        )
    assert not (tmp_path / "o.pth").exists()
