"""One line per user error: the top-level handler of the command-line tools.

:func:`run_cli` calls a tool's ``main(argv)``; an exception that reaches it is printed as one line,
``error: <message>``, on stderr with exit status 1 (an error outside the kinds raised for bad
input, data, config, weights or files, is marked as unexpected). The traceback is printed only with
``--debug`` (taken out of ``argv`` wherever it is) or ``AXIAL_DEEPLAB_DEBUG=1`` in the environment.
Ctrl-C outside training exits with 130 and one line. :func:`int_at_least` and
:func:`check_output_folder` refuse bad numbers and output folders before any work is done.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "AXIAL_DEEPLAB_DEBUG"
# Errors raised for bad user input (their messages name the file, key or id) or a missing
# optional package (the message says what to install).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, OSError, pickle.UnpicklingError, ImportError,
    FloatingPointError,  # a diverging training loss: its message names the settings to change
)  # fmt: skip
MAX_MESSAGE = 600  # characters of a message kept on its line


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (whitespace runs collapsed, long text cut). An error
    re-raised by a PyTorch data-loader worker (``Caught X in DataLoader worker process N``
    followed by the worker's traceback) or by a process of ``torch.multiprocessing`` (detectron2's
    ``launch``: ``Process N terminated with the following error`` and its traceback) gives the
    worker's own message."""
    text = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    wrapped = text.startswith("Caught ") and "Original Traceback" in text
    if wrapped or ("terminated with the following error" in text and "Traceback" in text):
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception|Interrupt): ", "", last.strip())
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 5] + " ..."


def add_debug_flag(parser) -> None:
    """List ``--debug`` in an ``argparse`` parser's help (:func:`run_cli` takes it out of ``argv``
    before the parser sees it)."""
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"on an error, print the traceback (or {DEBUG_ENV}=1)"
    )


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An ``argparse`` ``type``: an integer >= ``minimum`` (argparse's error names the flag:
    ``argument --train: expected an integer >= 0, got '-2'``)."""

    def parse(text: str) -> int:
        try:
            value: int | None = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _nearest_existing(path: str) -> str:
    """``path`` made absolute, or its nearest ancestor that exists (where missing folders go)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def check_output_folder(path: str, flag: str) -> None:
    """The folder ``path`` given with ``flag`` must exist or be creatable (no file in the way)."""
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        where = "is" if existing == os.path.abspath(path) else f"lies under {existing}, which is"
        raise NotADirectoryError(f"{flag} {path} {where} a file; {flag} must be a folder")


def check_output_file(
    path: str, flag: str = "--output", example: str = "m.pt2", *, inputs: Sequence[str] = ()
) -> None:
    """The file ``path`` given with ``flag`` can be written: not a folder (nor a name ending in
    a separator), not one of the ``inputs`` files, under a folder that exists or can be made and
    is writable; checked before minutes of work (an export's trace, a conversion) rather than
    after. ``example``: a file name the message suggests. Nothing is created."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise IsADirectoryError(
            f"{flag} {path} is a folder: give the file to write, e.g. {os.path.join(path, example)}"
        )
    for source in inputs:
        if os.path.realpath(source) == os.path.realpath(path) or (
            os.path.exists(source) and os.path.exists(path) and os.path.samefile(source, path)
        ):
            raise ValueError(
                f"{flag} {path} is the input {source}: writing it would destroy the input; "
                "give another file"
            )
    folder = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{flag} {path}: its folder {folder} is not writable")


def split_debug(argv: list[str] | None) -> tuple[list[str], bool]:
    """``argv`` (default ``sys.argv[1:]``) without ``--debug``, and whether debugging is on."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return [a for a in args if a != DEBUG_FLAG], debug


class Terminated(KeyboardInterrupt):
    """SIGTERM received inside :func:`sigterm_raises` (``timeout``, a scheduler)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block (main thread), SIGTERM raises :class:`Terminated` instead of killing the
    process at once, so that the cleanup Ctrl-C runs (temporary files of atomic writes) runs for
    it too; :func:`run_cli` then exits with 143. Elsewhere, or outside the block, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> Any:
    """``main(argv)`` with the handling of the module docstring."""
    args, debug = split_debug(argv)
    try:
        return main(args)
    except Terminated:
        if debug:
            raise
        print("terminated (SIGTERM)", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - the top-level handler
        if debug:
            traceback.print_exc()
        user = isinstance(exc, USER_ERRORS)
        prefix = "" if user else f"unexpected {type(exc).__name__}: "
        hint = "" if debug else f" (traceback: rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1)"
        raise SystemExit(f"error: {prefix}{one_line(exc)}{'' if user else hint}") from None
