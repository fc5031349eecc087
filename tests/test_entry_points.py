"""The commands ``pip install`` makes: every ``tools/`` script that only runs a package ``main``
is also a console script (``axial-deeplab-*`` in setup.py), and every console script's target
exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    """``{name: "module:function"}`` of setup.py's ``console_scripts``."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(axial-deeplab[\w-]*)=([\w.]+:\w+)"', text))


def wrapped_mains() -> dict[str, str]:
    """``{tool file: "module:main"}`` for the tools that import and run a package ``main``."""
    pattern = re.compile(r"^from (axial_deeplab[\w.]*) import main$", re.MULTILINE)
    found = {}
    for path in sorted((ROOT / "tools").glob("*.py")):
        match = pattern.search(path.read_text())
        if match:
            found[path.name] = f"{match.group(1)}:main"
    return found


def test_every_wrapped_tool_is_a_console_script():
    tools = wrapped_mains()
    # The scans must find what they look for, or the check below would pass on nothing.
    assert {"train_net.py", "infer.py", "convert_detectron2.py", "export.py"} <= set(tools)
    assert len(console_scripts()) >= 8
    targets = set(console_scripts().values())
    missing = {name: target for name, target in tools.items() if target not in targets}
    assert not missing, f"tools without an axial-deeplab-* command in setup.py: {missing}"


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_console_script_target_exists(name):
    module, function = console_scripts()[name].split(":")
    assert callable(getattr(importlib.import_module(module), function))
