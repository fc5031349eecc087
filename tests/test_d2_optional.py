"""detectron2 stays optional: the core never imports it, and the plugin says how to install it.

Runs with or without detectron2 (each check in a fresh interpreter)."""

import subprocess
import sys


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_core_does_not_import_detectron2():
    proc = _python(
        "import sys\n"
        "import axial_deeplab, axial_deeplab.config, axial_deeplab.modeling.build\n"
        "import axial_deeplab.data.build, axial_deeplab.engine.build, axial_deeplab.engine.train_net\n"
        "import axial_deeplab.evaluation.panoptic, axial_deeplab.quickstart\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'detectron2')\n"
        "assert not loaded, loaded\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_plugin_without_detectron2_names_the_install():
    proc = _python(
        "import sys\n"
        "sys.modules['detectron2'] = None  # as if not installed\n"
        "try:\n"
        "    import axial_deeplab.d2\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without detectron2')\n"
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (
        "not on PyPI" in proc.stdout
        and "git+https://github.com/facebookresearch/detectron2" in proc.stdout
    )
    assert "README" in proc.stdout
