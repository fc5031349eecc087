"""The converters' user errors: one line naming the file and what was expected, before any
conversion work (an output path that cannot be written, an input of another kind)."""

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from axial_deeplab.checkpoint import detectron2 as cd2
from axial_deeplab.checkpoint.authors import main as authors_main
from axial_deeplab.checkpoint.convert_deeplab2 import main as convert_deeplab2_main

ROOT = Path(__file__).resolve().parents[1]
D2_CONFIG = str(ROOT / "configs" / "coco" / "panoptic_deeplab_r52_dc5_dsconv_d2.yaml")
D2_PKL = ROOT / "tests" / "fixtures" / "detectron2" / "coco_r52_dc5_dsconv" / "model.pkl"
DEEPLAB2_KEY = "resnet50_os32_coco"
DEEPLAB2_CKPT = ROOT / "tests" / "fixtures" / "deeplab2" / "tiny" / DEEPLAB2_KEY
DEEPLAB2_CONFIG = str(ROOT / "configs" / "coco" / "deeplab2" / "resnet50_os32.yaml")
NOT_D2 = "not a detectron2 checkpoint (a pickled dict of numpy arrays, .pkl, or a torch .pth)"
CONVERT_DEEPLAB2 = "Convert it first: python tools/convert_deeplab2.py"


@pytest.fixture
def unwritable(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Output paths that cannot be written, with the end of the expected message."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "a_file").write_text("")
    return {
        "folder": (tmp_path / "exp", "is a folder: give the file to write, e.g. "),
        "under a file": (
            tmp_path / "a_file" / "x.pth",
            f": {tmp_path / 'a_file'} is a file, not a folder",
        ),
        "folder name": (f"{tmp_path / 'new'}/", "is a folder: give the file to write, e.g. "),
    }


CASES = ["folder", "under a file", "folder name"]


@pytest.mark.parametrize("case", CASES)
def test_deeplab2_output_is_checked_before_converting(unwritable, case, capsys):
    out, expected = unwritable[case]
    argv = [str(DEEPLAB2_CKPT), str(out), "--config-file", DEEPLAB2_CONFIG]
    with pytest.raises(SystemExit) as failed:
        convert_deeplab2_main(argv)
    assert str(failed.value).startswith(f"error: output {out}")
    assert expected in str(failed.value) and "Errno" not in str(failed.value)
    assert capsys.readouterr().out == ""  # nothing read, nothing converted


@pytest.mark.parametrize("case", CASES)
def test_detectron2_output_is_checked_before_converting(unwritable, case, capsys):
    out, expected = unwritable[case]
    with pytest.raises(SystemExit) as failed:
        cd2.main([str(D2_PKL), str(out), "--config-file", D2_CONFIG])
    assert str(failed.value).startswith(f"error: output {out}")
    assert expected in str(failed.value) and "Errno" not in str(failed.value)
    assert capsys.readouterr().out == ""  # nothing read, nothing converted


def test_converters_refuse_to_write_over_their_input(tmp_path):
    # An audit wrote each converter's output over its own input: the source was destroyed.
    dl2 = tmp_path / "dl2"
    shutil.copytree(DEEPLAB2_CKPT, dl2)
    pkl = tmp_path / "model.pkl"
    shutil.copy(D2_PKL, pkl)
    cases = [
        (convert_deeplab2_main, [str(dl2), str(dl2 / "ckpt-0.index"), "--config-file",
                                 DEEPLAB2_CONFIG], dl2 / "ckpt-0.index"),
        (convert_deeplab2_main, [str(dl2 / "ckpt-0"), str(dl2 / "ckpt-0.data-00000-of-00001"),
                                 "--config-file", DEEPLAB2_CONFIG],
         dl2 / "ckpt-0.data-00000-of-00001"),
        (cd2.main, [str(pkl), str(pkl), "--config-file", D2_CONFIG], pkl),
        (authors_main, [str(pkl), str(pkl), "--variant", "axial26s"], pkl),
    ]  # fmt: skip
    for main, argv, victim in cases:
        before = victim.read_bytes()
        with pytest.raises(SystemExit) as failed:
            main(argv)
        assert f"is the input {victim}: writing it would destroy the input" in str(failed.value)
        assert victim.read_bytes() == before


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tar_gz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(DEEPLAB2_CKPT / "ckpt-0.index", arcname="ckpt/ckpt-0.index")
    return buffer.getvalue()


# (file name, contents, the reason the message gives, whether it points to convert_deeplab2.py)
NOT_DETECTRON2 = [
    ("junk.pkl", b"hello world\nthis is text\n" * 50, "it does not unpickle (", False),
    ("photo.pkl", _jpeg(), "it does not unpickle (invalid load key, '\\xff'.)", False),
    ("text.pth", b"hello world\n" * 50, "it is neither a pickle nor the zip archive", False),
    ("model.tar.gz", _tar_gz(), "it is a gzip archive", True),
    ("renamed.pkl", _tar_gz(), "it is a gzip archive", True),
    ("ckpt-0.index", (DEEPLAB2_CKPT / "ckpt-0.index").read_bytes(), "it is neither", True),
]


@pytest.mark.parametrize(
    "name, data, reason, deeplab2", NOT_DETECTRON2, ids=[c[0] for c in NOT_DETECTRON2]
)
def test_detectron2_input_of_another_kind_is_one_line(tmp_path, name, data, reason, deeplab2):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        cd2.load_detectron2_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {NOT_D2}: {reason}"), message
    assert "\n" not in message
    assert (CONVERT_DEEPLAB2 in message) == deeplab2


def test_detectron2_command_on_a_deeplab2_archive(tmp_path, capsys):
    path = tmp_path / "resnet50_os32_panoptic_deeplab_coco_train_2.tar.gz"
    path.write_bytes(_tar_gz())
    with pytest.raises(SystemExit) as failed:
        cd2.main([str(path), str(tmp_path / "out.pth"), "--config-file", D2_CONFIG])
    hint = f"a deeplab2 (TensorFlow) checkpoint? {CONVERT_DEEPLAB2} CKPT OUT.pth --config-file"
    expected = f"error: {path}: {NOT_D2}: it is a gzip archive; {hint} configs/.../X.yaml"
    assert str(failed.value) == expected  # one line, before the published-name warning
    assert capsys.readouterr().out == ""  # or the config


def test_deeplab2_converter_names_a_config_of_another_kind(tmp_path):
    config = str(ROOT / "configs" / "quickstart" / "synthetic_axial.yaml")
    with pytest.raises(SystemExit) as failed:
        convert_deeplab2_main(
            [str(DEEPLAB2_CKPT), str(tmp_path / "o.pth"), "--config-file", config]
        )
    message = str(failed.value)
    assert message.startswith("error: deeplab2 checkpoints need the config of a deeplab2 model")
    assert "unexpected" not in message and not (tmp_path / "o.pth").exists()


def test_converters_refuse_class_names_their_head_does_not_predict(tmp_path):
    # An audit converted a Cityscapes model with a COCO config and NUM_CLASSES 19: the files
    # stored 133 COCO class names for a 19-output head, and failed only when used.
    with pytest.raises(SystemExit) as failed:
        cd2.main([str(D2_PKL), str(tmp_path / "o.pth"), "--config-file", D2_CONFIG,
                  "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19"])  # fmt: skip
    assert "has 133 classes but the model predicts 19" in str(failed.value)
    with pytest.raises(SystemExit) as failed:
        convert_deeplab2_main([str(DEEPLAB2_CKPT), str(tmp_path / "o.pth"), "--config-file",
                               DEEPLAB2_CONFIG, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "20"])  # fmt: skip
    assert "has 133 classes but the model predicts 19 (MODEL.SEM_SEG_HEAD.NUM_CLASSES 20, " in (
        str(failed.value)
    )
    assert not (tmp_path / "o.pth").exists()


def test_checkpoints_of_another_kind_are_named(tmp_path):
    # An audit's mistakes blamed the config or the path instead of saying what the file is.
    from axial_deeplab.checkpoint.io import save_checkpoint_file

    ours = tmp_path / "ours.pth"
    save_checkpoint_file(ours, {"w": torch.zeros(1)}, config="MODEL:\n  DEVICE: cpu\n")
    for main, argv in (
        (cd2.main, [str(ours), str(tmp_path / "o.pth"), "--config-file", D2_CONFIG]),
        (authors_main, [str(ours), str(tmp_path / "o.pth"), "--variant", "axial26s"]),
    ):
        with pytest.raises(SystemExit, match="is already a checkpoint of this toolkit"):
            main(argv)
    with pytest.raises(SystemExit, match="a PyTorch file is no deeplab2 checkpoint: convert "):
        convert_deeplab2_main([str(D2_PKL), str(tmp_path / "o.pth"), "--config-file",
                               DEEPLAB2_CONFIG])  # fmt: skip
    # --backbone-only misused, either way (the report's shape, as a tiny fixture gives it)
    from argparse import Namespace

    from axial_deeplab.checkpoint.convert_deeplab2 import _kind_hint
    from axial_deeplab.checkpoint.mapping import ConversionReport

    heads = ConversionReport(missing=["semantic_head.predictor.weight", "center_head.0.weight"])
    assert "an ImageNet encoder? pass --backbone-only" in _kind_hint(
        Namespace(backbone_only=False), heads
    )
    whole = ConversionReport(unused=["decoder/aspp/conv/kernel"])
    assert "convert it without --backbone-only" in _kind_hint(Namespace(backbone_only=True), whole)
    both = ConversionReport(unused=["x"], missing=["backbone.stem.0.weight"])
    assert _kind_hint(Namespace(backbone_only=False), both) == ""  # another model: no guess
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ours.read_bytes()[:200])
    with pytest.raises(SystemExit, match="is truncated or corrupt"):
        cd2.main([str(cut), str(tmp_path / "o.pth"), "--config-file", D2_CONFIG])
