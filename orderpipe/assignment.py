"""Taking over assigned partitions without blocking the loop: committed offsets, state, then assign.

After an assignment the consumer needs two answers before it reads a partition: the
group's stable committed offset (the broker holds it back while a transaction with
offsets of that partition is open, for example a crashed predecessor's) and the
partition's last committed state in `orders-stats` (read up to the topic's end). Both
are asked for at once; the loop calls `advance` on every turn while it keeps polling,
so group membership and `max.poll.interval.ms` are never at risk. An answer that is
not ready yet is asked for again after a short backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from orderpipe.clock import Clock
from orderpipe.edge import TP, KafkaEdge, Pending
from orderpipe.errors import BrokerUnavailableError, KafkaCallError
from orderpipe.ownership import Ownership
from orderpipe.stats import stats_key
from orderpipe.stats_view import CatchUp, StatsView

__all__ = ["Restorer"]

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_S = 60.0
ASK_AGAIN_S = 0.2


class Restorer:
    def __init__(
        self,
        edge: KafkaEdge,
        ownership: Ownership,
        stats: StatsView,
        clock: Clock,
        *,
        timeout_s: float = RESTORE_TIMEOUT_S,
    ) -> None:
        self._edge = edge
        self._ownership = ownership
        self._stats = stats
        self._clock = clock
        self._timeout_s = timeout_s
        self._deadline = 0.0
        self._ask_at = 0.0
        self._committed: Pending[dict[TP, int | None]] | None = None
        self._offsets: dict[TP, int | None] | None = None
        self._catch_up: CatchUp | None = None
        self._caught_up = False
        self._problem = ""

    def start(self) -> None:
        """Begins restoring `ownership.restoring` (a new assignment replaces any restore under way)."""
        self._deadline = self._clock.monotonic() + self._timeout_s
        self._ask_at = 0.0
        self._committed = self._offsets = self._catch_up = None
        self._caught_up = False
        self._problem = ""

    def advance(self) -> None:
        """Moves the restore on; assigns the partitions once both answers are in.

        Raises:
            BrokerUnavailableError: no answer within the timeout, which means a
                transaction stayed open (or the broker is gone).
        """
        partitions = self._ownership.restoring
        if not partitions:
            return
        now = self._clock.monotonic()
        try:
            self._ask(partitions, now)
        except KafkaCallError as exc:
            log.debug("restore not ready (%s); asking again", exc)
            self._problem = str(exc)
            self._committed, self._ask_at = None, now + ASK_AGAIN_S
            if not self._caught_up:
                self._catch_up = None
        if self._offsets is not None and self._caught_up:
            published = self._stats.table.published
            self._warn_of_disagreements(self._offsets, published.next_offsets)
            starts = self._ownership.restored(self._offsets, published)
            self._edge.assign(starts)
            log.debug(
                "assigned: %s (stats read to offset %d, %d keys)",
                ", ".join(f"{t}-{p}@{offset}" for (t, p), offset in starts.items()),
                self._stats.position(),
                len(published.states),
            )
        elif now > self._deadline:
            missing = "the committed offsets" if self._offsets is None else "the end of the stats topic"
            raise BrokerUnavailableError(
                f"could not read {missing} for partitions {_names(partitions)} within {self._timeout_s:g}s "
                f"({self._problem or 'no answer'}); a consumer's transaction may still be open (it ends when "
                "that consumer restarts or its transaction.timeout.ms runs out)"
            )

    @staticmethod
    def _warn_of_disagreements(committed: dict[TP, int | None], next_offsets: Mapping[str, int]) -> None:
        """The committed offset and the stats value's `next_offset` are written together; say so if they differ.

        The committed offset is followed (it is the group's), but a difference means
        something committed offsets outside the pipeline (a reset, say), and the
        partition's running average no longer matches what it will read.
        """
        for (topic, partition), offset in committed.items():
            ends = next_offsets.get(stats_key(topic, partition))
            if offset is not None and ends is not None and ends != offset:
                log.warning(
                    "⚠ %s-%d: the committed offset is %d but its state in the stats topic ends at offset %d",
                    topic,
                    partition,
                    offset,
                    ends,
                )

    def _ask(self, partitions: tuple[TP, ...], now: float) -> None:
        if now < self._ask_at:
            return
        if self._offsets is None:
            if self._committed is None:
                self._committed = self._edge.committed(partitions)
            if self._committed.done():
                self._offsets = self._committed.result()
        if not self._caught_up:
            if self._catch_up is None:
                self._catch_up = self._stats.catch_up()
            self._caught_up = self._catch_up.reached()


def _names(partitions: tuple[TP, ...]) -> str:
    return ", ".join(f"{topic}-{partition}" for topic, partition in partitions)
