"""The clock the consumer's edge reads, passed in so that tests can run it in virtual time."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock"]


class Clock(Protocol):
    def time(self) -> float:
        """Epoch seconds: due times, record timestamps, the console's seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go back: intervals, backoffs and deadlines."""
        ...


class _SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = _SystemClock()
