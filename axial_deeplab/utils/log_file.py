"""``OUTPUT_DIR/log.txt``: what a run printed, as detectron2 keeps it.

:func:`log_to_file` copies what is written to stdout and stderr into a file (appended, so a resumed
run's log follows the interrupted one's), line by line. Progress bars redraw their line with
carriage returns; only what the terminal finally shows of each line is kept (a bar's last state),
so the file reads as a log, not as thousands of redraws.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from .cli import one_line


class _Tee(io.TextIOBase):
    """A text stream writing to ``stream`` and, by whole lines, to ``file``."""

    def __init__(self, stream: TextIO, file: TextIO) -> None:
        super().__init__()
        self.stream, self.file, self.pending = stream, file, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def _log(self, line: str) -> None:
        """``line``, as the terminal last shows it (a redrawn line: its last state), unless blank."""
        shown = line.rsplit("\r", 1)[-1]
        if shown.strip():
            self.file.write(shown + "\n")

    def finish(self) -> None:
        """Log the unfinished last line, if any (a progress bar left without its newline)."""
        self._log(self.pending)
        self.pending = ""

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()

    def isatty(self) -> bool:  # progress bars ask: they draw as on the terminal
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")


@contextlib.contextmanager
def log_to_file(path: str) -> Iterator[None]:
    """Within the block, stdout and stderr are also appended to ``path`` (its folder created),
    after a line with the date and the command, and before a line naming the exception that
    ends the block, if one does."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {' '.join(sys.argv)}\n")
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, file), _Tee(err, file)
        try:
            yield
        except BaseException as exc:  # what ended the run, as the console will say it
            file.write(f"ended by {type(exc).__name__}: {one_line(exc)}\n")
            raise
        finally:
            for tee in (sys.stdout, sys.stderr):
                if isinstance(tee, _Tee):
                    tee.finish()
            sys.stdout, sys.stderr = out, err
