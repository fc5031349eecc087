"""A naive dense reference for ``AxialAttention`` (the paper's eq. 4, loop-built tables), for tests.

``NaiveAxialAttention`` spells out the spec with explicit Python loops over query ``o`` and key
``p`` for the relative tables and the local window, ``nn.BatchNorm2d`` modules on the dense
``[B, 3G, L, L]`` logit terms and the ``[B, 2C, L]`` outputs, and no shortcuts. The fast layer
(analytic BN statistics, folded scales, skewed relative logits, a custom backward, banded local
attention) must agree with it in float64 on outputs, gradients and BN running statistics
(``assert_agrees``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from axial_deeplab.layers import AxialAttention

DTYPE = torch.float64


class NaiveAxialAttention(nn.Module):
    """The spec, slowly: same parameter names and shapes as ``AxialAttention``."""

    def __init__(self, layer: AxialAttention) -> None:
        super().__init__()
        self.cfg = layer
        self.qkv_proj = copy.deepcopy(layer.qkv_proj)
        self.qkv_norm = copy.deepcopy(layer.qkv_norm)
        self.logits_norm = copy.deepcopy(layer.logits_norm)
        self.output_norm = copy.deepcopy(layer.output_norm)
        self.query_rel = nn.Parameter(layer.query_rel.detach().clone())
        self.key_rel = nn.Parameter(layer.key_rel.detach().clone())
        self.value_rel = nn.Parameter(layer.value_rel.detach().clone())

    def dense_table(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """``[d, L(o), L(p)]``: the embedding of distance ``p - o``, clipped to the table's reach."""
        reach = (table.shape[1] - 1) // 2
        cols = [
            [table[:, min(max(p - o, -reach), reach) + reach] for p in range(length)]
            for o in range(length)
        ]
        return torch.stack([torch.stack(row, dim=-1) for row in cols], dim=-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        g, dk, dv, c = cfg.num_heads, cfg.key_channels, cfg.value_channels, cfg.out_channels
        qkv = self.qkv_norm(self.qkv_proj(x))  # [N, 2C, H, W]
        if cfg.axis == "height":
            qkv = qkv.permute(0, 3, 1, 2)  # [N, W, 2C, H]
        else:
            qkv = qkv.permute(0, 2, 1, 3)  # [N, H, 2C, W]
        n, lines, _, length = qkv.shape
        qkv = qkv.reshape(n * lines, 2 * c, length)  # [B, 2C, L]
        q, k, v = torch.split(qkv, [g * dk, g * dk, g * dv], dim=1)
        q = q.reshape(-1, g, dk, length)  # [B, G, dk, L]
        k = k.reshape(-1, g, dk, length)  # [B, G, dk, L]
        v = v.reshape(-1, g, dv, length)  # [B, G, dv, L]
        rq = self.dense_table(self.query_rel, length)  # [dk, L, L]
        rk = self.dense_table(self.key_rel, length)  # [dk, L, L]
        rv = self.dense_table(self.value_rel, length)  # [dv, L, L]
        qk = torch.einsum("bgco,bgcp->bgop", q, k)  # [B, G, L, L]
        qr = torch.einsum("bgco,cop->bgop", q, rq)  # [B, G, L, L]
        kr = torch.einsum("bgcp,cop->bgop", k, rk)  # [B, G, L, L]
        outside = torch.zeros(length, length, dtype=torch.bool)  # [L(o), L(p)]
        if cfg.span_mode == "local" or (cfg.span_mode == "hybrid" and length > 2 * cfg.span - 1):
            outside = torch.tensor(
                [[abs(p - o) > cfg.span // 2 for p in range(length)] for o in range(length)]
            )
        if cfg.span_mode == "block" and length > 2 * cfg.span - 1:
            # Blocks of 2m - 1 queries; each sees its block widened by m // 2 on both sides.
            block, flange = 2 * cfg.span - 1, cfg.span // 2
            outside = torch.tensor([
                [
                    p < (o // block) * block - flange or p >= (o // block + 1) * block + flange
                    for p in range(length)
                ]
                for o in range(length)
            ])  # fmt: skip
        # Batch norm of the logits the softmax sees: the module itself, applied to the
        # [B, 3G, P] pairs inside the window only (P of them), then put back in place.
        terms = torch.cat([qk, qr, kr], dim=1)  # [B, 3G, L, L]
        seen = self.logits_norm(terms[:, :, ~outside].unsqueeze(-1)).squeeze(-1)  # [B, 3G, P]
        logits = terms.new_full(terms.shape, float("-inf"))
        logits[:, :, ~outside] = seen
        logits = logits.reshape(-1, 3, g, length, length).sum(dim=1)  # [B, G, L, L]
        weights = logits.softmax(dim=-1)  # [B, G, L(o), L(p)]
        sv = torch.einsum("bgop,bgcp->bgco", weights, v).reshape(-1, c, length)  # [B, C, L]
        sve = torch.einsum("bgop,cop->bgco", weights, rv).reshape(-1, c, length)  # [B, C, L]
        out = self.output_norm(torch.cat([sv, sve], dim=1).unsqueeze(-1)).squeeze(-1)
        out = (out[:, :c] + out[:, c:]).reshape(n, lines, c, length)  # [N, lines, C, L]
        out = out.permute(0, 2, 3, 1) if cfg.axis == "height" else out.permute(0, 2, 1, 3)
        if cfg.stride > 1 and cfg.stride_mode == "avgpool":
            return F.avg_pool2d(out, cfg.stride, cfg.stride)
        if cfg.stride > 1:
            return out[:, :, :: cfg.stride] if cfg.axis == "height" else out[..., :: cfg.stride]
        return out


def make_layer(seed: int = 0, **kwargs) -> AxialAttention:
    """A float64 layer with 2 heads (dk = 2, dv = 4) and random BN affine/running statistics."""
    torch.manual_seed(seed)
    kwargs = {"num_heads": 2, **kwargs}
    layer = AxialAttention(kwargs.pop("in_channels", 6), 8, **kwargs).to(DTYPE)
    gen = torch.Generator().manual_seed(seed + 1)
    for bn in (layer.qkv_norm, layer.logits_norm, layer.output_norm):
        bn.weight.data.uniform_(0.5, 1.5, generator=gen)
        bn.bias.data.normal_(0.0, 0.5, generator=gen)
        bn.running_mean.normal_(0.0, 0.5, generator=gen)
        bn.running_var.uniform_(0.5, 2.0, generator=gen)
    return layer


def assert_agrees(layer: AxialAttention, x: torch.Tensor, train: bool, tol: float = 1e-5) -> None:
    """Output, input/parameter gradients and BN buffers agree with the naive reference."""
    layer.zero_grad(set_to_none=True)
    ref = NaiveAxialAttention(layer)
    layer.train(train)
    ref.train(train)
    x = x.clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = layer(x), ref(x_ref)
    assert out.shape == out_ref.shape
    torch.testing.assert_close(out, out_ref, atol=tol, rtol=0)
    grad = torch.randn(out.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(7))
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=tol, rtol=0)
    ref_params = dict(ref.named_parameters())
    for name, param in layer.named_parameters():
        expected = ref_params[name].grad
        got = torch.zeros_like(param) if param.grad is None else param.grad
        torch.testing.assert_close(got, expected, atol=tol, rtol=0, msg=f"grad of {name}")
    ref_buffers = dict(ref.named_buffers())
    for name, buf in layer.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name], atol=tol, rtol=0, msg=name)
