"""One-line errors of the export path (``tools/export.py``, ``tools/infer.py --backend
torch-export|onnxruntime``) and a quiet ``.pt2`` write.

No model is exported here: the ``.pt2`` files hold :class:`_Uniform`, the smallest program with
the pipeline's input and outputs (one ``torch.export`` of it, about 5 s on 2 CPU cores, shared by
the module), and the ``.onnx`` file is one ``Identity`` node written with ``onnx.helper``.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import cv2
import numpy as np
import pytest
import torch

from axial_deeplab.engine import infer_net
from axial_deeplab.engine.inputs import BadInputError
from axial_deeplab.export import cli
from axial_deeplab.export.pipeline import (
    DESCRIPTION_FILE,
    INPUT_NAME,
    MAX_SIZE,
    MIN_SIZE,
    OUTPUT_NAMES,
    save_onnx,
    save_program,
)
from axial_deeplab.export.runtime import ExportedPredictor, _check_image, load_program

# Two classes, "thing" with id 1; _Uniform predicts "stuff" (class 0) everywhere.
METADATA = {"class_names": ["stuff", "thing"], "thing_ids": [1], "label_divisor": 1000,
            "class_colors": None}  # fmt: skip


class _Uniform(torch.nn.Module):
    """``[H, W, 3]`` uint8 -> :data:`OUTPUT_NAMES`: class 0 (stuff) everywhere, no centre."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        zero = image.permute(2, 0, 1)[:1].float() * 0  # [H, W, 3] -> [1, H, W]
        centers = torch.full((1, 2), -1, dtype=torch.int64)  # no kept centre
        prob = torch.cat([zero + 1, zero])  # [2, H, W]
        return zero[0].long(), centers, prob, zero, torch.cat([zero, zero])


class _Described:
    """What :func:`save_program` reads of a ``PanopticPipeline``."""

    def description(self) -> dict:
        return {"metadata": METADATA}


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    """:class:`_Uniform` exported with the pipeline's dynamic sizes (``MIN_SIZE``-``MAX_SIZE``)."""
    size = torch.export.Dim.DYNAMIC(min=MIN_SIZE, max=MAX_SIZE)
    example = torch.zeros(40, 48, 3, dtype=torch.uint8)
    return torch.export.export(
        _Uniform(), (example,), dynamic_shapes=({0: size, 1: size},), strict=False
    )


@pytest.fixture()
def archive(program, tmp_path) -> str:
    path = str(tmp_path / "model.pt2")
    save_program(_Described(), path, program=program)
    return path


def _png(path, height: int, width: int) -> str:
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return str(path)


def _error_line(info: pytest.ExceptionInfo) -> str:
    """The one line that ``run_cli`` exits with."""
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# 1. Images outside the exported sizes: a BadInputError with the limits, skipped by --skip-bad.


@pytest.mark.parametrize(
    "size", [(5, 7), (MIN_SIZE - 1, 64), (64, MIN_SIZE - 1), (MAX_SIZE + 1, 40)]
)
def test_check_image_rejects_sizes_outside_the_export_range(size):
    with pytest.raises(BadInputError, match=rf"{size[0]}x{size[1]}.* {MIN_SIZE} to {MAX_SIZE}"):
        _check_image(np.zeros((*size, 3), np.uint8))


@pytest.mark.parametrize("size", [(MIN_SIZE, MIN_SIZE), (MAX_SIZE, MIN_SIZE)])
def test_check_image_accepts_the_limits(size):
    assert _check_image(np.zeros((*size, 3), np.uint8)).shape == (*size, 3)


def test_too_large_image_names_max_size():
    with pytest.raises(BadInputError, match="--max-size"):
        _check_image(np.zeros((40, MAX_SIZE + 1, 3), np.uint8))


def test_skip_bad_skips_small_image_torch_export(archive, tmp_path):
    """``tools/infer.py --backend torch-export --skip-bad``: the 5x7 image is skipped (it was the
    graph's ``AssertionError: Guard failed: image.size()[0] >= 33``, which ended the run)."""
    tiny, fine = _png(tmp_path / "tiny.png", 5, 7), _png(tmp_path / "fine.png", 40, 50)
    argv = ["--backend", "torch-export", "--weights", archive, "--input", tiny, fine,
            "--output", str(tmp_path / "out")]  # fmt: skip
    summary = infer_net.main([*argv, "--skip-bad"])
    assert summary["images"] == 1 and summary["skipped"] == [tiny]
    with pytest.raises(SystemExit) as info:
        infer_net.main(argv)
    line = _error_line(info)
    assert f"{tiny}: image of 5x7 pixels (height x width): exported models take heights" in line
    assert f"from {MIN_SIZE}" in line


def test_small_image_onnxruntime(tmp_path):
    """The ONNX Runtime backend checks the same sizes before running its graph."""
    onnx = pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")
    pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")
    helper = onnx.helper
    image = helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.UINT8, ["H", "W", 3])
    panoptic = helper.make_tensor_value_info(OUTPUT_NAMES[0], onnx.TensorProto.UINT8, ["H", "W", 3])
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAMES[0]])], "g", [image], [panoptic]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"axial_deeplab": json.dumps({"metadata": METADATA})})
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    predictor = ExportedPredictor(path, "onnxruntime")
    with pytest.raises(BadInputError, match=f"5x7 pixels .* {MIN_SIZE} to {MAX_SIZE}"):
        predictor.predict(np.zeros((5, 7, 3), np.uint8))


# 2. tools/export.py: a missing or unreadable checkpoint is one line.


def test_export_missing_weights_is_one_line(tmp_path):
    missing = str(tmp_path / "missing.pth")
    with pytest.raises(SystemExit) as info:
        cli.main(["--weights", missing, "--format", "torch-export", "--output", "m.pt2"])
    line = _error_line(info)
    assert missing in line and "unexpected" not in line


def test_export_text_file_weights_is_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["--weights", str(notes), "--format", "onnx", "--output", "m.onnx"])
    line = _error_line(info)
    assert str(notes) in line and "not a PyTorch checkpoint" in line and "unexpected" not in line


def test_export_output_checked_before_loading_anything(tmp_path, monkeypatch):
    """A folder given as --output is refused before the weights are read (the trace takes a
    minute: the error must not wait for it); a missing folder is accepted, not created."""
    monkeypatch.setattr(cli, "build_pipeline", lambda *a: pytest.fail("built before the check"))
    with pytest.raises(SystemExit) as info:
        cli.main(["--weights", "w.pth", "--format", "onnx", "--output", str(tmp_path)])
    assert f"--output {tmp_path} is a folder: give the file to write, e.g. {tmp_path}/m.onnx" in (
        _error_line(info)
    )  # the suffix of --format onnx, not .pt2

    target = tmp_path / "new" / "deeper" / "m.onnx"
    cli.check_output_file(str(target))  # missing folders are fine (the writer makes them)...
    assert not (tmp_path / "new").exists()  # ...and left alone when the export fails
    # a .pt2 archive named .onnx (or the reverse) could not be run by tools/infer.py afterwards
    for fmt, name, right in (("torch-export", "m.onnx", "m.pt2"), ("onnx", "m.pt2", "m.onnx")):
        with pytest.raises(SystemExit) as info:
            cli.main(["--weights", "w.pth", "--format", fmt, "--output", str(tmp_path / name)])
        assert f"is not what --format {fmt} writes" in _error_line(info)
        assert f"name it {tmp_path / right}" in _error_line(info)


def test_onnx_written_atomically_through_a_named_temporary(tmp_path, monkeypatch):
    """The ONNX file goes through utils.atomic (a .tmp-* file that later writes clean up), not
    a fixed `m.onnx.tmp` that a killed export leaves behind."""
    onnx = pytest.importorskip("onnx")
    written = []
    monkeypatch.setattr(onnx, "save", lambda model, path: written.append(path) or _touch(path))
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: _FakeOnnxProgram())
    save_onnx(_FakePipeline(), tmp_path / "m.onnx", program=object())
    (tmp,) = written
    assert os.path.basename(tmp).startswith(".tmp-") and tmp.endswith(".onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def _touch(path: str) -> None:
    with open(path, "wb"):
        pass


class _FakeOnnxProgram:
    def __init__(self) -> None:
        from onnx import ModelProto

        self.model_proto = ModelProto()


class _FakePipeline:
    def description(self) -> dict:
        return {"classes": []}


# 3. --backend torch-export on a file that is not a .pt2 archive: one line, nothing from torch.


def _not_pt2(tmp_path) -> dict[str, str]:
    """A torch.save checkpoint, a text file and a zip file of another layout."""
    pth, text, other = tmp_path / "model.pth", tmp_path / "notes.txt", tmp_path / "other.zip"
    torch.save({"model": {"w": torch.zeros(2)}}, pth)
    text.write_text("notes\n")
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x/readme.txt", "hello")
    return {"a torch.save checkpoint": str(pth), "not a zip file, or a truncated one": str(text),
            "a zip file without the .pt2 layout": str(other)}  # fmt: skip


def test_load_program_not_pt2(tmp_path, capfd):
    for reason, path in _not_pt2(tmp_path).items():
        with pytest.raises(ValueError) as info:
            load_program(path)
        assert str(info.value) == (
            f"{path}: not a .pt2 archive ({reason}; use --backend torch for .pth checkpoints)"
        )
    assert capfd.readouterr().err == ""


def test_infer_torch_export_with_pth_is_one_line(tmp_path, capfd):
    """The audit's command: ~19 lines of torch's log and a traceback before the error."""
    pth = _not_pt2(tmp_path)["a torch.save checkpoint"]
    argv = ["--backend", "torch-export", "--weights", pth,
            "--input", _png(tmp_path / "a.png", 40, 40), "--output", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        infer_net.main(argv)
    assert f"{pth}: a .pth file is run with --backend torch, not --backend torch-export" in (
        _error_line(info)
    )
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("suffix, backend", [(".pt2", "torch-export"), (".onnx", "onnxruntime")])
def test_infer_names_the_backend_an_exported_file_needs(tmp_path, suffix, backend):
    """An exported file given to the eager path (no --backend) used to be reported as a corrupt
    checkpoint ("PytorchStreamReader failed ...") or as "not a PyTorch checkpoint"."""
    exported = tmp_path / f"model{suffix}"
    exported.write_bytes(b"\0" * 64)
    argv = ["--weights", str(exported), "--input", _png(tmp_path / "a.png", 40, 40),
            "--output", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        infer_net.main(argv)
    line = _error_line(info)
    assert f"a {suffix} file is run with --backend {backend}, not --backend torch" in line


def test_load_program_corrupt_pt2_is_one_line(archive, tmp_path, capfd):
    """An archive with the .pt2 layout whose model record is broken: torch logs the cause (with
    its traceback) and raises 'check the warnings above'; the error carries the cause instead."""
    broken = str(tmp_path / "broken.pt2")
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(
                item, b"{not json" if item.filename.endswith("models/model.json") else data
            )
    capfd.readouterr()
    with pytest.raises(ValueError, match=r"broken\.pt2: torch.export cannot load it \(\w+") as info:
        load_program(broken)
    assert "\n" not in str(info.value) and "warnings above" not in str(info.value)
    assert capfd.readouterr().err == ""


def test_load_program_of_renamed_archive_is_quiet(archive, tmp_path, capfd):
    """A .pt2 archive under another name loads without torch's warning about the name."""
    renamed = str(tmp_path / "model.bin")
    shutil.copy(archive, renamed)
    capfd.readouterr()
    run, description = load_program(renamed)
    assert description == {"metadata": METADATA}
    assert len(run(np.zeros((40, 40, 3), np.uint8))) == len(OUTPUT_NAMES)
    assert capfd.readouterr().err == ""


# 4. save_program: the temporary file ends in .pt2 (no torch warning) and lies beside the target.


def test_save_program_is_quiet_and_atomic(program, tmp_path, capfd, monkeypatch):
    written = []
    save = torch.export.save

    def recording_save(ep, f, **kwargs):
        written.append(getattr(f, "name", f))
        return save(ep, f, **kwargs)

    monkeypatch.setattr(torch.export, "save", recording_save)
    path = tmp_path / "model2.pt2"
    save_program(_Described(), path, program=program)
    assert capfd.readouterr().err == ""  # was: "Expect archive file to be a file ending in .pt2"
    (tmp,) = written
    assert os.fspath(tmp).endswith(".pt2") and os.path.dirname(tmp) == str(tmp_path), tmp
    assert os.listdir(tmp_path) == ["model2.pt2"]
    with zipfile.ZipFile(path) as archive:
        assert ".tmp" not in archive.namelist()[0]  # the root folder is not the temporary name
        assert json.loads(archive.read(f"archive/extra/{DESCRIPTION_FILE}")) == {
            "metadata": METADATA
        }


def test_export_notes_the_config_parts_graphs_leave_out(tmp_path, capsys):
    """TEST.AMP applies to evaluation and tools/infer.py but not inside an exported graph: the
    export says so instead of silently predicting differently. TEST.PAD_TO_CROP is in the graph
    (tests/test_export_padding.py), so it gets no note."""
    from axial_deeplab.checkpoint.io import save_checkpoint_file
    from axial_deeplab.config import load_config
    from axial_deeplab.modeling.build import build_model

    config = os.path.join(
        os.path.dirname(__file__), "..", "configs/quickstart/synthetic_axial.yaml"
    )
    cfg = load_config(config, ["TEST.PAD_TO_CROP", "True", "TEST.AMP", "True"])
    weights = str(tmp_path / "model.pth")
    save_checkpoint_file(weights, build_model(cfg).state_dict(), config=cfg)
    cli.build_pipeline(weights, None, [])
    out = capsys.readouterr().out
    assert "note: TEST.AMP is not applied to exported graphs" in out
    assert "PAD_TO_CROP" not in out


def test_exported_predictor_resizes_to_the_stored_test_size(program, tmp_path, monkeypatch):
    """A file exported with INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST: the graph runs on the image
    resized as Predictor resizes it, and the prediction comes back at the image's size."""

    class Described:
        def description(self) -> dict:
            return {"metadata": METADATA, "test_size": [40, 60], "align_corners": True}

    path = str(tmp_path / "sized.pt2")
    save_program(Described(), path, program=program)
    predictor = ExportedPredictor(path, "torch-export")
    seen = []
    run = predictor._run
    monkeypatch.setattr(predictor, "_run", lambda image: seen.append(image.shape) or run(image))
    prediction = predictor.predict(np.full((90, 160, 3), 7, np.uint8))
    assert seen == [(34, 60, 3)]  # short side 40 would make the long side 71 > 60: 60 / 160
    assert prediction["panoptic"].shape == prediction["center"].shape == (90, 160)
    assert [s["area"] for s in prediction["segments_info"]] == [90 * 160]
    # the graph's size range applies to the resized image: 20 x 30 runs at 40 x 60
    assert predictor.predict(np.full((20, 30, 3), 7, np.uint8))["panoptic"].shape == (20, 30)
    assert seen[-1] == (40, 60, 3)
    for bad, said in ((np.zeros((20, 30, 3), np.int64), r"expected uint8 pixels \(0-255\), got int64"),
                      (np.zeros((20, 30, 4), np.uint8), r"RGB array, got \(20, 30, 4\)"),
                      (np.zeros((0, 30, 3), np.uint8), r"RGB array, got \(0, 30, 3\)")):  # fmt: skip
        with pytest.raises(ValueError, match=said):  # the caller's array, not the resized one
            predictor.predict(bad)
    plain = str(tmp_path / "plain.pt2")  # no test size stored: the image's own size
    save_program(_Described(), plain, program=program)
    unsized = ExportedPredictor(plain, "torch-export")
    assert unsized.test_size is None
    assert unsized.predict(np.full((50, 64, 3), 7, np.uint8))["panoptic"].shape == (50, 64)
