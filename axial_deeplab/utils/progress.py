"""Progress bars (tqdm) suited to where the output goes.

On a terminal a bar is redrawn up to ten times a second (tqdm's default). Written to a file or a
pipe (a batch job's log, ``> log 2>&1``) every redraw stays in the file, so there a bar is
redrawn at most every ``LOG_INTERVAL_S`` seconds: a long run leaves a few lines of progress
instead of tens of thousands of carriage-return redraws.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress(iterable: Any = None, *, file: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, file=file or sys.stderr, **kwargs)``, redrawn at most every
    ``LOG_INTERVAL_S`` unless ``file`` is a terminal (an explicit ``mininterval`` wins)."""
    stream = sys.stderr if file is None else file
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, file=stream, **kwargs)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
