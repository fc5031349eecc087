"""Progress bars: redrawn at most every LOG_INTERVAL_S into a file or pipe, as usual on a
terminal."""

import io
import time

from axial_deeplab.utils.progress import LOG_INTERVAL_S, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _redraws(stream: io.StringIO, seconds: float) -> int:
    with progress(range(10**9), file=stream, total=10**9) as bar:
        end = time.monotonic() + seconds
        for _ in bar:
            if time.monotonic() > end:
                break
    return stream.getvalue().count("\r")


def test_a_log_file_gets_few_redraws_and_a_terminal_many():
    log = io.StringIO()
    assert _redraws(log, 1.0) <= 3  # the first state, the last (and at most one between)
    assert "it/s" in log.getvalue()  # the last state with its rate is there
    assert _redraws(_Terminal(), 1.0) >= 5  # ten a second


def test_interval_follows_the_stream_and_can_be_set():
    assert progress(file=io.StringIO()).mininterval == LOG_INTERVAL_S
    assert progress(file=_Terminal()).mininterval < 1
    assert progress(file=io.StringIO(), mininterval=2).mininterval == 2
