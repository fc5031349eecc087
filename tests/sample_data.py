"""The real sample data of ../shared/data, which CI always has: tests that need it fail without it.

A machine without the samples can skip those tests on purpose with ``AXIAL_DEEPLAB_NO_SAMPLE_DATA=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPT_OUT = "AXIAL_DEEPLAB_NO_SAMPLE_DATA"


def require(path: Path = DATA) -> Path:
    """``path`` if it exists; else fail (or skip when ``AXIAL_DEEPLAB_NO_SAMPLE_DATA=1``)."""
    if path.exists():
        return path
    message = (
        f"real sample data not found: {path} (expected ../shared/data next to the repository, "
        f"see its README; set {OPT_OUT}=1 to skip the real-data tests on purpose)"
    )
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)
