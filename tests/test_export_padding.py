"""``TEST.PAD_TO_CROP`` inside exported graphs: the pipeline pads its input as evaluation and
``Predictor`` do (``engine.evaluate.pad_images``), with sizes that stay symbolic under
``torch.export``. The whole trained-model export with padding is checked against eager prediction
in ``tests/test_export.py`` (its ``global`` variant)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from axial_deeplab.checkpoint.io import save_checkpoint_file
from axial_deeplab.config import load_config
from axial_deeplab.engine.evaluate import pad_images
from axial_deeplab.engine.inference import Predictor
from axial_deeplab.export import cli
from axial_deeplab.export.pipeline import pad_bottom_right
from axial_deeplab.modeling.build import build_model

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs/quickstart/synthetic_axial.yaml")
FILL = (123.675, 116.28, 103.53)
CROP = (40, 48)
# smaller in both, in one, larger in both, equal
SIZES = [(17, 33), (25, 60), (50, 21), (61, 77), CROP]


def _images(height: int, width: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(height * 1000 + width)
    return torch.randint(0, 256, (1, 3, height, width), generator=gen).float()


@pytest.mark.parametrize("size", SIZES)
def test_pad_bottom_right_equals_evaluation_padding(size):
    x = _images(*size)
    got = pad_bottom_right(x, CROP, torch.tensor(FILL))
    assert torch.equal(got, pad_images(x, CROP, FILL)), size


class _Padder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_bottom_right(x, CROP, torch.tensor(FILL)) * 2


def test_pad_bottom_right_stays_symbolic_under_torch_export():
    """One program, traced at a size that needs padding, pads every other size right (an exported
    graph that had fixed the pad amounts would fail on the larger sizes or pad them wrongly)."""
    dim = torch.export.Dim.DYNAMIC(min=8, max=256)
    program = torch.export.export(
        _Padder(), (_images(17, 33),), dynamic_shapes=({2: dim, 3: dim},), strict=False
    )
    for size in SIZES:
        x = _images(*size)
        got = program.module()(x)
        assert torch.equal(got, pad_images(x, CROP, FILL) * 2), size


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(CONFIG, ["TEST.PAD_TO_CROP", "True", "INPUT.CROP.SIZE", str(CROP)])
    model = build_model(cfg)
    for bn in model.modules():  # spread the untrained outputs, so that padding shows in them
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_var.uniform_(0.5, 2.0)
            bn.running_mean.normal_(0.0, 0.5)
    path = str(tmp_path_factory.mktemp("pad") / "model.pth")
    save_checkpoint_file(path, model.state_dict(), config=cfg)
    return path


def test_pipeline_pads_as_predictor(weights):
    """The exported pipeline's network step equals ``Predictor`` with ``TEST.PAD_TO_CROP`` on an
    image smaller than the crop, and differs from it without padding."""
    pipeline = cli.build_pipeline(weights)
    assert pipeline.pad_to == CROP
    assert pipeline.description()["pad_to"] == list(CROP)
    assert pipeline.description()["test_size"] == [0, 0]  # the quick start's: the image's size
    cfg = load_config(CONFIG)
    assert pipeline.pad_value.tolist() == pytest.approx(list(cfg.MODEL.PIXEL_MEAN))
    image = np.random.default_rng(0).integers(0, 256, (25, 37, 3), dtype=np.uint8)
    with torch.no_grad():
        prob, center, offset = pipeline.network(torch.from_numpy(image))
    kwargs = {"metadata": pipeline.metadata, "postprocessing": pipeline.postprocessing}
    padded = Predictor(pipeline.model, pad_to=CROP, pad_value=pipeline.pad_value.tolist(), **kwargs)
    raw = padded.raw(image)
    for got, key in ((prob, "semantic"), (center, "center"), (offset, "offset")):
        assert got.shape == raw[key].shape
        assert (got - raw[key]).abs().max() <= 1e-5, key
    unpadded = Predictor(pipeline.model, **kwargs).raw(image)
    assert (unpadded["offset"] - raw["offset"]).abs().max() > 1e-3


def test_pipeline_without_pad_to_crop_does_not_pad(weights):
    pipeline = cli.build_pipeline(weights, opts=["TEST.PAD_TO_CROP", "False"])
    assert pipeline.pad_to is None
    assert pipeline.description()["pad_to"] is None
