"""Export (torch.export and ONNX) of the whole pipeline, post-processing included, equals eager.

Each model variant (Axial-DeepLab with local, hybrid and global span, the ResNet-50 baseline) is
trained for a few iterations with the quick-start recipe on synthetic scenes, exported once per
format with dynamic height and width, and run on the 2 COCO photos, the Cityscapes sample and 20
held-out synthetic scenes at several sizes (odd ones included). The eager reference is
``engine.inference.Predictor`` on the same checkpoint. Source of truth: the eager model and the
eager post-processing (``modeling/postprocessing.py``, itself checked against detectron2).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxscript", reason="the export extra: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")

from axial_deeplab.checkpoint.io import load_torch_file, save_atomic  # noqa: E402
from axial_deeplab.config import load_config  # noqa: E402
from axial_deeplab.data.panoptic_io import read_panoptic_png  # noqa: E402
from axial_deeplab.engine import infer_net  # noqa: E402
from axial_deeplab.engine.evaluate import VOID_LABEL, panoptic_prediction  # noqa: E402
from axial_deeplab.engine.inference import Predictor  # noqa: E402
from axial_deeplab.engine.inputs import read_image  # noqa: E402
from axial_deeplab.export.cli import build_pipeline  # noqa: E402
from axial_deeplab.export.cli import main as export_main  # noqa: E402
from axial_deeplab.export.pipeline import export_program, save_onnx, save_program  # noqa: E402
from axial_deeplab.export.postprocessing import (  # noqa: E402
    CENTER_CHUNK,
    panoptic_from_outputs,
    thing_table,
)
from axial_deeplab.export.runtime import ExportedPredictor  # noqa: E402
from axial_deeplab.layers import attention_graph, axial_attention, fused_eval  # noqa: E402
from axial_deeplab.modeling.postprocessing import get_panoptic_segmentation  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart" / "synthetic_axial.yaml"
DATA = REPO.parent / "shared" / "data"
REAL = [
    DATA / "coco_panoptic_sample" / "images" / "000000142238.jpg",
    DATA / "coco_panoptic_sample" / "images" / "000000439180.jpg",
    DATA / "cityscapes_panoptic_sample" / "leftImg8bit" / "dummy_000000_000000_leftImg8bit.png",
]
REAL_SIZES = [(97, 131), (160, 120)]  # (height, width), odd and even
AXIAL = ["MODEL.AXIAL_RESNET.SPAN", "9"]  # local on axes > 17 (hybrid), so both regimes occur
VARIANTS = {
    "local": [*AXIAL, "MODEL.AXIAL_RESNET.SPAN_MODE", "local"],
    "hybrid": [*AXIAL, "MODEL.AXIAL_RESNET.SPAN_MODE", "hybrid"],
    "global": [*AXIAL, "MODEL.AXIAL_RESNET.SPAN_MODE", "global"],
    "resnet": ["MODEL.BACKBONE.NAME", "resnet", "MODEL.RESNETS.DEPTH", "50"],
}
ITERATIONS = 12
# One variant is exported and run as TEST.PAD_TO_CROP evaluates: its test images smaller than the
# 96 x 128 crop (160 x 120, the 85 x 113 crop) are padded in the graph as in eager prediction.
PADDED = {"global": ["TEST.PAD_TO_CROP", "True"]}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Synthetic scenes: 8 to train on, 20 held out; and the catalog that names them."""
    from axial_deeplab.data.catalog import DatasetCatalog
    from axial_deeplab.data.synthetic_writer import register_synthetic, write_synthetic_dataset

    root = tmp_path_factory.mktemp("export_data")
    paths = write_synthetic_dataset(
        str(root), splits={"train": 8, "val": 20}, seed=5, formats=("coco",)
    )
    catalog = DatasetCatalog()
    register_synthetic(catalog, str(root), splits=("train", "val"))
    return catalog, sorted(Path(paths["coco"]["val"]["image_dir"]).iterdir())


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request, synthetic, tmp_path_factory):
    """A quick-start-trained checkpoint of one variant, its eager predictor and both exports
    (``tools/export.py`` itself for the local variant; the functions it calls for the others,
    with one trace for both formats and no exporter-side ONNX optimisation, to save time)."""
    from axial_deeplab.engine.build import build_trainer

    catalog, val = synthetic
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    opts = ["OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('synthetic_coco_train',)",
            "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "VIS_PERIOD", "0", "SOLVER.MAX_ITER", str(ITERATIONS), "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", str(ITERATIONS),
            "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "16", "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD",
            "0.05", *VARIANTS[request.param]]  # fmt: skip
    torch.manual_seed(0)
    build_trainer(load_config(str(CONFIG), opts), torch.device("cpu"), catalog).train()
    weights = str(out / f"model_{ITERATIONS:07d}.pth")
    if request.param != "resnet":
        _switch_on_attention(weights)
    # A few iterations leave the heatmap low: a threshold at a third of its peak on a held-out
    # scene makes the exports group thing pixels (the same override for every backend).
    peak = float(
        build_pipeline(weights).network(torch.from_numpy(read_image(str(val[0]))))[1].max()
    )
    opts = ["MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", f"{peak / 3:.6f}"]
    opts += PADDED.get(request.param, [])
    pipeline = build_pipeline(weights, opts=opts)
    eager = Predictor(
        pipeline.model, metadata=pipeline.metadata, postprocessing=pipeline.postprocessing,
        pad_to=pipeline.pad_to, pad_value=pipeline.pad_value.tolist(),
    )  # fmt: skip
    if request.param == "local":  # the command, with the exporter's ONNX optimisation
        export_main(
            ["--weights", weights, "--format", "onnx", "--output", str(out / "m.onnx"), *opts]
        )
        save_program(pipeline, out / "m.pt2")
    else:  # one trace for both files
        program = export_program(pipeline)
        save_program(pipeline, out / "m.pt2", program=program)
        save_onnx(pipeline, out / "m.onnx", program=program, optimize=False)
    backends = {
        "torch-export": ExportedPredictor(str(out / "m.pt2"), "torch-export"),
        "onnxruntime": ExportedPredictor(str(out / "m.onnx"), "onnxruntime"),
    }
    unpadded = Predictor(
        pipeline.model, metadata=pipeline.metadata, postprocessing=pipeline.postprocessing
    )
    return {"name": request.param, "weights": weights, "eager": eager, "backends": backends,
            "dir": out, "opts": opts, "unpadded": unpadded}  # fmt: skip


def _switch_on_attention(weights: str) -> None:
    """Set the last norm's scale of every axial block to 1 in the checkpoint ``weights``.

    Those scales start at zero (the residual branches start switched off) and 12 iterations
    leave them near 0.04: the attention then moves the outputs by about the parity tolerance, and
    on an AVX2 CPU (another training trajectory) below it, so a wrong attention could pass for a
    right one. Eager and the exports all run the edited checkpoint."""
    checkpoint = load_torch_file(weights)
    norms = [key for key in checkpoint["model"] if key.endswith("expand_norm.weight")]
    assert norms, "no axial block found"
    for key in norms:
        checkpoint["model"][key].fill_(1.0)
    save_atomic(checkpoint, weights)


def _test_images(val_paths) -> list[tuple[str, np.ndarray]]:
    images = [(p.name, read_image(str(p))) for p in val_paths]
    assert len(images) == 20, [p.name for p in val_paths]
    for path in REAL:
        image = read_image(str(path))
        for height, width in REAL_SIZES:
            small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            images.append((f"{path.stem}_{height}x{width}", small))
    name, first = images[0]
    images.append((f"{name}_crop", np.ascontiguousarray(first[5:90, 3:116])))  # 85 x 113
    return images


def test_attention_is_live(exported, synthetic, monkeypatch):
    """The parity below means something: the attention moves an output by at least 10 times its
    tolerance (a zero-initialised residual branch would hide a wrong attention, see
    ENVIRONMENT.md and ``_switch_on_attention``)."""
    if exported["name"] == "resnet":
        pytest.skip("no attention in the ResNet baseline")
    # Both runs by the PyTorch path, whose ``attend`` is swapped below (the compiled inference
    # pass would not see the swap; it is tested against that path in test_fused_eval.py).
    monkeypatch.setenv(fused_eval.ENV, "0")
    eager = exported["eager"]
    image = read_image(str(synthetic[1][0]))
    with_attention = eager.raw(image)
    saved = axial_attention.attend

    def no_attention(q1, *args, **kwargs):  # attend's (sum W v [B, C, L], sum W rv [L, B, C])
        b, heads, _, length = q1.shape
        c = heads * args[3].shape[2]  # v [B, G, dv, L]
        return q1.new_zeros(b, c, length), q1.new_zeros(length, b, c)

    axial_attention.attend = no_attention
    try:
        without = eager.raw(image)
    finally:
        axial_attention.attend = saved
    effect = {
        key: float((with_attention[key] - without[key]).abs().max())
        / _tolerance(key, with_attention[key])
        for key in with_attention
    }
    assert max(effect.values()) > 10, effect  # in tolerances


def _tolerance(key: str, ref: torch.Tensor) -> float:
    """How far an exported output may be from eager: 1e-4 of the output's scale, at least 1e-4.
    Float32 round-off of other kernels is relative: offsets are in pixels (ResNet-50 in ONNX
    Runtime: 3e-4 px at 85 px), and an under-trained centre heatmap reaches tens (ResNet-50 on an
    AVX2 CPU: 1.0e-4 at 57). Probabilities carry the round-off of their logits, whose scale the
    graph does not output (ResNet-50's torch.export on that CPU: 1.0e-4): 1e-3. The panoptic maps
    are compared exactly whatever these tolerances."""
    if key in ("semantic", "semantic_prob"):  # raw's name, the graph's name
        return 1e-3
    return 1e-4 * max(1.0, float(ref.abs().max()))


def test_exports_equal_eager(exported, synthetic):
    """Network outputs within 1e-4, identical panoptic maps and centres, every test image (at most
    two exceptions, on heatmap plateaus or semantic near-ties; see below)."""
    eager, backends = exported["eager"], exported["backends"]
    things_seen, plateaus, padding_effect = 0, [], 0.0
    for name, image in _test_images(synthetic[1]):
        raw = eager.raw(image)  # what Predictor.predict post-processes
        if exported["name"] in PADDED:  # how far off an unpadded graph would be, in tolerances
            unpadded = exported["unpadded"].raw(image)
            padding_effect = max(
                padding_effect,
                *(float((unpadded[k] - raw[k]).abs().max()) / _tolerance(k, raw[k]) for k in raw),
            )
        panoptic, centers = panoptic_prediction(
            raw, eager.postprocessing, thing_ids=eager.metadata.thing_ids,
            label_divisor=eager.metadata.label_divisor,
        )  # fmt: skip
        expected = {"panoptic": panoptic.numpy(), "centers": centers.numpy()}
        things_seen += len(centers)
        for backend, predictor in backends.items():
            got = predictor.outputs(image)
            where = f"{exported['name']} {backend} {name} {image.shape[:2]}"
            for key, ref in (("semantic_prob", raw["semantic"]), ("center", raw["center"]),
                             ("offset", raw["offset"])):  # fmt: skip
                assert got[key].shape == ref.shape, where
                assert (got[key] - ref).abs().max() <= _tolerance(key, ref), (where, key)
            if not np.array_equal(got["centers"].numpy(), expected["centers"]):
                # An under-trained heatmap has plateaus: neighbours equal to the last bit, where
                # the 1e-7 round-off of another backend decides which one is a local maximum.
                # Then every differing centre must sit on such a plateau, and the graph's
                # post-processing must equal ours on the backend's own network outputs.
                heat = raw["center"][0]
                differing = {tuple(c) for c in got["centers"].tolist()} ^ {
                    tuple(c) for c in expected["centers"].tolist()
                }
                r = eager.postprocessing.nms_kernel // 2
                for y, x in differing:
                    window = heat[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
                    assert float(window.max() - heat[y, x]) <= 1e-6, (where, (y, x))
                plateaus.append(where)
                expected = _own_prediction(got, eager)
            elif not np.array_equal(got["panoptic"].numpy(), expected["panoptic"]):
                # Likewise semantic near-ties: pixels whose two likeliest classes are within the
                # backends' round-off of each other (1e-3 each way), where another backend may
                # pick the other class. Every differing pixel must be one, and the graph's
                # post-processing must equal ours on the backend's own network outputs.
                differ = got["panoptic"].numpy() != expected["panoptic"]
                top2 = raw["semantic"].topk(2, dim=0).values  # [2, H, W]
                gap = float((top2[0] - top2[1]).numpy()[differ].max())
                assert gap <= 2 * _tolerance("semantic", raw["semantic"]), (where, gap)
                plateaus.append(where)
                expected = _own_prediction(got, eager)
            np.testing.assert_array_equal(got["panoptic"].numpy(), expected["panoptic"], where)
            np.testing.assert_array_equal(got["centers"].numpy(), expected["centers"], where)
            expected = {"panoptic": panoptic.numpy(), "centers": centers.numpy()}
    assert things_seen > 0, "no centre found on any image: the grouping was not exercised"
    if exported["name"] in PADDED:  # padding changes the outputs far beyond the tolerance
        assert padding_effect > 10, padding_effect
    assert len(plateaus) <= 2, plateaus  # rare: identical maps everywhere else


def _own_prediction(got: dict, eager) -> dict[str, np.ndarray]:
    """Our post-processing on a backend's own network outputs ``got``: its panoptic map and
    centres."""
    theirs = {"semantic": got["semantic_prob"], "center": got["center"], "offset": got["offset"]}
    panoptic, centers = panoptic_prediction(
        theirs, eager.postprocessing, thing_ids=eager.metadata.thing_ids,
        label_divisor=eager.metadata.label_divisor,
    )  # fmt: skip
    return {"panoptic": panoptic.numpy(), "centers": centers.numpy()}


def _off_plateau(exported, paths, count: int) -> list[Path]:
    """The first ``count`` scenes whose centres every backend finds as eager does (heatmap
    plateaus, where round-off picks the local maximum, are covered by the test above)."""
    eager, chosen = exported["eager"], []
    for path in paths:
        image = read_image(str(path))
        _, centers = panoptic_prediction(
            eager.raw(image), eager.postprocessing, thing_ids=eager.metadata.thing_ids,
            label_divisor=eager.metadata.label_divisor,
        )  # fmt: skip
        backends = exported["backends"].values()
        if all(np.array_equal(b.outputs(image)["centers"].numpy(), centers) for b in backends):
            chosen.append(path)
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"fewer than {count} scenes off heatmap plateaus")


def test_infer_backends_write_the_same_files(exported, synthetic, tmp_path):
    """``tools/infer.py --backend ...`` writes the eager PNGs, segments and pictures."""
    folder = tmp_path / "in"
    folder.mkdir()
    for path in _off_plateau(exported, synthetic[1], count=2):
        cv2.imwrite(str(folder / f"{path.stem}.png"), cv2.imread(str(path)))
    files = {"torch": exported["weights"], "torch-export": str(exported["dir"] / "m.pt2"),
             "onnxruntime": str(exported["dir"] / "m.onnx")}  # fmt: skip
    for backend, weights in files.items():
        argv = ["--weights", weights, "--input", str(folder), "--backend", backend, "--output",
                str(tmp_path / backend)]  # fmt: skip
        opts = exported["opts"] if backend == "torch" else []  # the others hold it already
        assert infer_net.main([*argv, *opts])["images"] == 2
    for path in sorted(folder.iterdir()):
        ref = tmp_path / "torch" / path.stem
        ref_info = json.loads(Path(f"{ref}.json").read_text())
        for backend in ("torch-export", "onnxruntime"):
            out = tmp_path / backend / path.stem
            np.testing.assert_array_equal(
                read_panoptic_png(f"{out}_panoptic.png"), read_panoptic_png(f"{ref}_panoptic.png")
            )
            info = json.loads(Path(f"{out}.json").read_text())
            for a, b in zip(info["segments_info"], ref_info["segments_info"], strict=True):
                # A score is the heatmap at the centre: the heatmap's tolerance, at its value.
                assert a["score"] == pytest.approx(b["score"], abs=1e-4 * max(1.0, b["score"]))
                assert {**a, "score": 0} == {**b, "score": 0}
            vis, ref_vis = cv2.imread(f"{out}_vis.png"), cv2.imread(f"{ref}_vis.png")
            assert vis.shape == ref_vis.shape
            # Pictures of float maps: equal up to a rare 1-level rounding step.
            assert np.mean(vis != ref_vis) < 1e-3, backend


def test_exported_backend_refuses_model_options(exported, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))  # inputs come first
    argv = ["--weights", str(exported["dir"] / "m.onnx"), "--input", str(tmp_path), "--output",
            str(tmp_path / "o"), "--backend", "onnxruntime", "--tta-flip"]  # fmt: skip
    with pytest.raises(SystemExit, match="--tta-flip"):
        infer_net.main(argv)


# ---- The post-processing graph alone, on hand-made edge cases ----------------------------


class PostOnly(torch.nn.Module):
    def __init__(self, num_classes: int, thing_ids, **settings) -> None:
        super().__init__()
        self.settings = settings
        self.register_buffer("is_thing", thing_table(thing_ids, num_classes), False)

    def forward(self, semantic, center, offset):
        return panoptic_from_outputs(
            semantic, center, offset, is_thing=self.is_thing, void_label=VOID_LABEL,
            **self.settings,
        )  # fmt: skip


def _edge_cases(height: int, width: int) -> dict[str, tuple]:
    """``(semantic [H, W] int64, center [1, H, W], offset [2, H, W])`` of each edge case."""
    gen = torch.Generator().manual_seed(height * width)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    semantic = (xx * 4 // width + 2 * (yy * 2 // height)).clamp(max=4)  # classes 0..4 in blocks
    offset = torch.randn(2, height, width, generator=gen) * 3
    smooth = torch.rand(1, height, width, generator=gen) * 0.09  # below the 0.1 threshold
    peaks = smooth.clone()
    peaks[0, 3::7, 2::6] = torch.rand(peaks[0, 3::7, 2::6].shape, generator=gen) * 0.8 + 0.15
    ties = smooth.clone()
    ties[0, 4::9, 4::9] = 0.5  # equal scores: exactly as many kept as the eager bound keeps
    return {
        "no_centre": (semantic, smooth, offset),
        "many_peaks": (semantic, peaks, offset),
        "tied_peaks": (semantic, ties, offset),
        "all_stuff": (semantic.clamp(min=3), peaks, offset),
        "all_things": (semantic.clamp(max=2), peaks, offset),
        "tied_votes": (semantic, peaks, offset.round()),  # whole-pixel votes: equidistant centres
    }


@pytest.fixture(scope="module", params=[6, 40])
def post_graphs(request, tmp_path_factory):
    """top_k 6: fewer than the peaks; 40: the peaks fill more than one chunk of centres
    (``CENTER_CHUNK``) at the larger sizes."""
    settings = dict(
        label_divisor=1000, stuff_area=20, threshold=0.1, nms_kernel=3, top_k=request.param
    )
    module = PostOnly(5, (0, 1, 2), **settings).eval()
    semantic, center, offset = _edge_cases(33, 41)["many_peaks"]
    dim = torch.export.Dim.DYNAMIC(min=8, max=512)
    shapes = ({0: dim, 1: dim}, {1: dim, 2: dim}, {1: dim, 2: dim})
    program = torch.export.export(module, (semantic, center, offset), dynamic_shapes=shapes)
    path = tmp_path_factory.mktemp("post") / "post.onnx"
    torch.onnx.export(program, (semantic, center, offset), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return settings, program.module(), session


@pytest.mark.parametrize("size", [(33, 41), (40, 64), (57, 23)])
def test_post_processing_graph_equals_eager(post_graphs, size):
    settings, program, session = post_graphs
    for case, (semantic, center, offset) in _edge_cases(*size).items():
        expected, centers = get_panoptic_segmentation(
            semantic[None], center, offset, thing_ids=(0, 1, 2), void_label=VOID_LABEL,
            **settings,
        )  # fmt: skip
        feeds = dict(zip([i.name for i in session.get_inputs()], (semantic, center, offset)))
        runs = {
            "torch-export": program(semantic, center, offset),
            "onnxruntime": session.run(None, {k: v.numpy() for k, v in feeds.items()}),
        }
        for backend, (panoptic, points) in runs.items():
            panoptic, points = torch.as_tensor(panoptic), torch.as_tensor(points)
            where = f"{case} {size} {backend}"
            assert torch.equal(panoptic, expected[0]), where
            assert torch.equal(points[points[:, 0] >= 0], centers), where
        if case == "no_centre":
            assert len(centers) == 0 and (expected[0] == VOID_LABEL).any()
        if case == "many_peaks" and settings["top_k"] == 6:  # more survivors than top_k:
            assert len(centers) == settings["top_k"] - 1  # top_k - 1 kept, as detectron2
        if case == "many_peaks" and settings["top_k"] == 40 and size == (40, 64):
            assert len(centers) > CENTER_CHUNK  # grouped in more than one chunk
        if case == "all_stuff":
            assert ((expected[0] % 1000 == 0) | (expected[0] == VOID_LABEL)).all()


@pytest.mark.parametrize("local_block", [16, 4, 1])
def test_windowed_attention_equals_the_eager_core(monkeypatch, local_block):
    """Every span mode and axis lengths around the local/global switches (hybrid: 2 span - 1);
    local query blocks of the span (9) and smaller than it (4, 1)."""
    from axial_deeplab.layers.attention_core import attend
    from axial_deeplab.layers.relative_position import table_size

    monkeypatch.setattr(attention_graph, "LOCAL_BLOCK", local_block)
    gen = torch.Generator().manual_seed(0)
    for mode in ("local", "hybrid", "global", "block"):
        for length in (1, 4, 9, 16, 17, 18, 19, 35, 41):
            size = table_size(9, mode)
            q1, k, q2, k3 = (torch.randn(2, 2, 3, length, generator=gen) for _ in range(4))
            v = torch.randn(2, 2, 4, length, generator=gen)
            tables = tuple(torch.randn(d, size, generator=gen) for d in (3, 3, 4))
            sv, sve = attend(q1, k, q2, k3, v, tables, span=9, span_mode=mode)
            ref = torch.cat((sv, sve.permute(1, 2, 0)), dim=1)  # [B, 2C, L], as the graph's
            got = attention_graph.attend_windowed(q1, k, q2, k3, v, tables, span=9, span_mode=mode)
            assert (got - ref).abs().max() < 1e-5, (mode, length)
