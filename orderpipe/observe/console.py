"""Console output at human rates: per-order lines while they are readable, periodic
summaries once they are not.

The caller passes the time in (one reading per batch) so this module keeps no clock.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["NORMAL", "QUIET", "VERBOSE", "Console", "throughput_line"]

QUIET, NORMAL, VERBOSE = 0, 1, 2


def throughput_line(count: int, unit: str, seconds: float, span: str) -> str:
    """The final `Throughput:` line both programs print, e.g. for bench/ to read."""
    rate = count / seconds if seconds > 0 else 0.0
    return f"Throughput: {count} {unit} in {seconds:.3f}s {span} ({rate:,.0f} {unit}/s)"


class Console:
    """Prints per-order lines within a budget per second and says when a summary is due.

    Args:
        verbosity: QUIET prints summaries only, NORMAL per-order lines up to
            `lines_per_second` and then summaries, VERBOSE every line.
        summary_every_s: how often a summary is due while lines are being held back.
    """

    def __init__(
        self,
        verbosity: int = NORMAL,
        out: TextIO | None = None,
        err: TextIO | None = None,
        lines_per_second: int = 20,
        summary_every_s: float = 5.0,
    ) -> None:
        self.verbosity = verbosity
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self._budget = lines_per_second
        self._summary_every_s = summary_every_s
        self._second = -1
        self._used = 0
        self._held_back = 0
        self._last_summary_s: float | None = None

    def tick(self, now_s: float) -> None:
        """Starts a new budget second when the time has moved on."""
        second = int(now_s)
        if second != self._second:
            self._second = second
            self._used = 0
        if self._last_summary_s is None:
            self._last_summary_s = now_s

    def claim_events(self, count: int) -> int:
        """Claims `count` per-order lines; returns how many of them to print (the first ones).

        The rest are counted as held back. Lets a caller at high rates skip building
        lines that would not be printed.
        """
        if self.verbosity >= VERBOSE:
            shown = count
        elif self.verbosity == NORMAL:
            shown = min(count, max(self._budget - self._used, 0))
        else:
            shown = 0
        self._used += shown
        self._held_back += count - shown
        return shown

    def wants_event(self) -> bool:
        """Claims one per-order line: True when it is to be printed (then print it with `info`)."""
        return self.claim_events(1) == 1

    def info(self, text: str) -> None:
        """A line always shown (start-up, final summary)."""
        print(text, file=self._out)

    def error(self, text: str) -> None:
        print(text, file=self._err)

    def summary_due(self, now_s: float) -> bool:
        """True when lines were held back (or the console is quiet) and a summary interval passed."""
        if self._last_summary_s is None or now_s - self._last_summary_s < self._summary_every_s:
            return False
        if self._held_back == 0 and self.verbosity != QUIET:
            return False
        self._last_summary_s = now_s
        self._held_back = 0
        return True
