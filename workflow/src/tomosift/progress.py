"""Progress of long work: a bar on a terminal, plain lines in a log file.

A workflow job's stderr is its log file (:func:`tomosift.logs.log_to_file`), where a
progress bar's carriage returns make one unreadable line. There, :func:`progress_bar` writes
a line when the work starts, at most every ``interval_s`` seconds while it runs, and when it
ends, each with the count, the rate and the time left, so that ``tail -f`` on the log shows how
far a job is::

    shard-00003.h5: 250/500 subtomo (50%), 81.2 subtomo/s, 3 s left

On a terminal (the command line) it is a tqdm bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LINE_INTERVAL_S = 30.0


def format_seconds(seconds: float) -> str:
    """'42 s', '12 min 5 s' or '3 h 20 min'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


class LineProgress:
    """tqdm's interface (iteration, ``update``, ``set_postfix``, a context) as log lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = "", unit: str = "it", interval_s: float = LINE_INTERVAL_S,
                 stream=None, leave: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval_s = interval_s
        self.stream = stream
        self.leave = leave
        self.count = 0
        self.postfix = ""
        self.started = time.perf_counter()
        self.last_line = self.started
        self.closed = False
        if leave:
            self._write(self._line(final=False, starting=True))

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        print(text, file=stream, flush=True)

    def _line(self, final: bool, starting: bool = False) -> str:
        elapsed = time.perf_counter() - self.started
        head = f"{self.desc}: " if self.desc else ""
        of_total = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        text = f"{head}{self.count}{of_total} {self.unit}{share}"
        if starting:
            return text + ", started"
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text += f", {rate:.3g} {self.unit}/s"
        if final:
            text += f", done in {format_seconds(elapsed)}"
        elif self.total and rate > 0:
            text += f", {format_seconds((self.total - self.count) / rate)} left"
        return text + (f", {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last_line >= self.interval_s and (not self.total or self.count < self.total):
            self.last_line = now
            self._write(self._line(final=False))

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.leave:
                self._write(self._line(final=True))

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, interval_s: float = LINE_INTERVAL_S,
                 leave: bool = True):
    """A tqdm bar on a terminal, :class:`LineProgress` otherwise, or a silent tqdm.

    ``leave=False``: no first and last line, only those in between (the caller writes its
    own summary)."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=2.0, leave=leave)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, interval_s=interval_s,
                        leave=leave)
