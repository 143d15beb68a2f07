"""The stats topic as the consumer reads it: tailed between batches, caught up before a restore.

A `StatsView` reads `orders-stats` through the edge's `StatsTail` (its one partition,
from the beginning, read_committed) into a `StatsTable`: the latest committed value of
each of the group's keys. A record it cannot use (a key of the group that names no
input partition, a value that does not parse) is ignored and counted, with a warning
at most every WARN_EVERY_S seconds. The consumer polls it without waiting between batches, for the other
consumers' partitions in the group-wide average. Before it takes over partitions it
catches up: reads everything written before that moment, once the transactions
still open on the topic have ended, so the state it restores is the last committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from orderpipe.core.ports import Pending, StatsTail
from orderpipe.core.stats import StatsKeys, StatsTable
from orderpipe.errors import DeserializationError
from orderpipe.text import printable

__all__ = ["CatchUp", "StatsView"]

log = logging.getLogger(__name__)

POLL_RECORDS = 1000
WARN_EVERY_S = 10.0


class StatsView:
    def __init__(
        self, tail: StatsTail, topic: str, keys: StatsKeys, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._tail = tail
        self._topic = topic
        self.table = StatsTable(keys)
        # Records of the topic that were ignored because they could not be used.
        self.ignored = 0
        self._monotonic = monotonic
        self._warned_at: float | None = None
        self._unwarned = 0

    def poll(self, timeout_s: float = 0.0) -> None:
        """Takes in whatever committed updates have arrived, waiting at most `timeout_s`."""
        for record in self._tail.poll(POLL_RECORDS, timeout_s):
            try:
                tp = self.table.take(record)
            except DeserializationError as exc:
                self.ignored += 1
                self._warn(record.offset, exc)
                continue
            if tp is not None and not self.table.keys.counted(tp):
                self.ignored += 1  # kept, and counted once the partition turns out to exist
                self._warn(record.offset, DeserializationError(f"stats key names {tp[0]}-{tp[1]}, not a partition"))

    def _warn(self, offset: int, problem: DeserializationError) -> None:
        now = self._monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more ignored since the last warning)" if self._unwarned else ""
        log.warning("⚠ Ignoring %s record at offset %d: %s%s", self._topic, offset, printable(str(problem)), more)
        self._warned_at, self._unwarned = now, 0

    def catch_up(self) -> CatchUp:
        """Asks for the topic's present end; `CatchUp.reached` says when the view has read that far."""
        return CatchUp(self, self._tail.end_offset(), self._tail.end_offset)

    def position(self) -> int:
        return max(self._tail.position(), 0)


class CatchUp:
    """Whether the stats view has read up to the end the topic had when this began.

    It reads nothing itself: whoever owns the view polls it (the loop on every turn).
    """

    def __init__(self, view: StatsView, end: Pending[int], ask: Callable[[], Pending[int]]) -> None:
        self._view = view
        self._end = end
        self._ask = ask

    def ask_again(self) -> None:
        """Asks for the end once more (the last question failed)."""
        self._end = self._ask()

    def reached(self) -> bool:
        """True once the end is known and the view's position is past it.

        Raises:
            KafkaCallError: the end could not be asked for.
        """
        return self._end.done() and self._view.position() >= self._end.result()
