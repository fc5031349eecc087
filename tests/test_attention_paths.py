"""The layer's execution paths against the naive reference: chunks of lines, the eval-mode
projection (a 1x1 convolution or a matmul per line), norms in mixed train/eval modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attention_reference import DTYPE, NaiveAxialAttention, assert_agrees, make_layer

from axial_deeplab.layers import attention_core


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("axis", ["height", "width"])
def test_chunked_lines_match_reference(monkeypatch, train, axis):
    # One line per chunk (the default chunk holds all lines of these tiny inputs). Along the
    # width the axis (3) is shorter than a head's values (dv = 4), so a chunk's value terms
    # outgrow its logits (the buffers must be sized for both).
    monkeypatch.setattr(attention_core, "CHUNK_LOGITS", 1)
    monkeypatch.setattr(attention_core, "CHUNK_LOGITS_MAX", 1)
    layer = make_layer(axis=axis, span=3, span_mode="global")
    x = torch.randn(2, 6, 7, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(11))
    lines, length = (6, 7) if axis == "height" else (14, 3)
    chunks = attention_core.line_chunks(lines, 2 * length * length)
    assert chunks == [(i, i + 1) for i in range(lines)]
    assert_agrees(layer, x, train)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("axis", ["height", "width"])
def test_eval_projection_paths_match_reference(monkeypatch, threads, axis):
    # In eval mode on the CPU the projection runs as one 1x1 convolution of the channels-last
    # map with several threads, and as a matmul per line with one: both must hold.
    convolutions = []

    def counted(*args, **kwargs):
        if not args[0].is_contiguous():  # ours, channels-last (the reference's input is not)
            convolutions.append(args[1].shape)
        return conv2d(*args, **kwargs)

    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", counted)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        layer = make_layer(axis=axis, span=3, span_mode="local")
        x = torch.randn(2, 6, 5, 7, dtype=DTYPE, generator=torch.Generator().manual_seed(13))
        assert_agrees(layer, x, train=False)
    finally:
        torch.set_num_threads(before)
    assert len(convolutions) == (0 if threads == 1 else 1)


@pytest.mark.parametrize(
    "frozen", [("qkv_norm",), ("qkv_norm", "logits_norm"), ("logits_norm", "output_norm")]
)
def test_mixed_norm_modes_match_reference(frozen):
    # Some norms on running statistics (frozen, as when fine-tuning), the others on batch
    # statistics: the eval-mode shortcuts (the projection's shift added late, or dropped where
    # the softmax cancels it) must hold only where they are exact.
    layer = make_layer(axis="width", span=3, span_mode="local")
    ref = NaiveAxialAttention(layer)
    layer.train()
    ref.train()
    for name in frozen:
        getattr(layer, name).eval()
        getattr(ref, name).eval()
    x = torch.randn(2, 6, 3, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=0)
    ref_buffers = dict(ref.named_buffers())
    for name, buf in layer.named_buffers():  # running statistics of the training norms
        torch.testing.assert_close(buf, ref_buffers[name], atol=1e-5, rtol=0, msg=name)


def test_line_chunks_keep_enough_rows():
    # A 129-long global axis, 8 heads: 133,128 logits a line, so CHUNK_LOGITS (2^19) alone would
    # give chunks of 3 lines; they get CHUNK_LINES (16) while under CHUNK_LOGITS_MAX (2^22).
    chunks = attention_core.line_chunks(65, 8 * 129 * 129)
    assert chunks[:2] == [(0, 16), (16, 32)] and chunks[-1] == (64, 65)
    # A 1025-long axis: 16 lines would pass CHUNK_LOGITS_MAX, so one line a chunk.
    assert attention_core.line_chunks(3, 8 * 1025 * 1025) == [(0, 1), (1, 2), (2, 3)]
