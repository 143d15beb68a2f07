"""Taking over assigned partitions without blocking the loop: committed offsets, state, then assign.

After an assignment the consumer needs two answers before it reads a partition: the
group's stable committed offset (the broker holds it back while a transaction with
offsets of that partition is open, for example a crashed predecessor's) and then the
partition's last committed state in `orders-stats` (read up to the end the topic has
once the offset is known, so that it holds the value committed with that offset). The
loop calls `advance` on every turn while it keeps polling, so group membership and
`max.poll.interval.ms` are never at risk. An answer that is
not ready yet is asked for again after a backoff of ASK_AGAIN_S (a coordinator away
answers nothing sooner).
"""

from __future__ import annotations

import logging

from orderpipe.clock import Clock
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import TP, KafkaEdge, Pending
from orderpipe.core.stats_view import CatchUp, StatsView
from orderpipe.errors import BrokerUnavailableError, KafkaCallError

__all__ = ["Restorer", "partition_names"]

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_S = 60.0
ASK_AGAIN_S = 1.0


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
        self._position = 0
        self._ask_at = 0.0
        self._committed: Pending[dict[TP, int | None]] | None = None
        self._offsets: dict[TP, int | None] | None = None
        self._catch_up: CatchUp | None = None
        self._caught_up = False
        self._problem = ""

    def start(self) -> None:
        """Begins restoring `ownership.restoring` (a new assignment replaces any restore under way)."""
        self._deadline = self._clock.monotonic() + self._timeout_s
        self._position = self._stats.position()
        self._ask_at = 0.0
        self._committed = self._offsets = self._catch_up = None
        self._caught_up = False
        self._problem = ""

    def advance(self) -> None:
        """Moves the restore on; assigns the partitions once both answers are in.

        Raises:
            BrokerUnavailableError: no answer within the timeout (counted from the
                last stats record read), which means a transaction stayed open (or
                the broker is gone).
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
            table = self._stats.table
            starts, unmatched = self._ownership.restored(self._offsets, table)
            for tp in unmatched:
                latest = table.latest.get(tp)
                log.warning(
                    "⚠ %s-%d: no value in the stats topic reaches the committed offset %d (%s), so its running "
                    "average may not match what it reads",
                    *tp,
                    starts[tp],
                    "there is none: it starts from zero"
                    if latest is None
                    else f"the latest reaches {latest.next_offset} and is used",
                )
            self._edge.assign(starts)
            table.changed.update(starts)  # the loop checks their latest values against what was restored
            log.debug(
                "assigned: %s (stats read to offset %d, %d keys)",
                ", ".join(f"{t}-{p}@{offset}" for (t, p), offset in starts.items()),
                self._stats.position(),
                len(table.latest),
            )
            return
        position = self._stats.position()
        if position > self._position:
            # Reading a long stats topic is progress, not a hang: the limit counts from the last record read.
            self._position, self._deadline = position, now + self._timeout_s
        if now > self._deadline:
            missing = "the committed offsets" if self._offsets is None else "the end of the stats topic"
            raise BrokerUnavailableError(
                f"could not read {missing} for partitions {partition_names(partitions)} within {self._timeout_s:g}s "
                f"({self._problem or 'no answer'}); a consumer's transaction may still be open (it ends when "
                "that consumer restarts or its transaction.timeout.ms runs out)"
            )

    def _ask(self, partitions: tuple[TP, ...], now: float) -> None:
        if now < self._ask_at:
            return
        if self._offsets is None:
            if self._committed is None:
                self._committed = self._edge.committed(partitions)
            if self._committed.done():
                self._offsets = self._committed.result()
        # The stats topic's end is asked for only once the committed offsets are in. A
        # transaction that committed them wrote its stats value below that end, so the
        # view reads the value before the restore looks for it, even when the
        # transaction was still open when the restore began.
        if self._offsets is not None and not self._caught_up:
            if self._catch_up is None:
                self._catch_up = self._stats.catch_up()
            self._caught_up = self._catch_up.reached()


def partition_names(partitions: tuple[TP, ...]) -> str:
    """Partitions as people read them: `orders-0, orders-1`."""
    return ", ".join(f"{topic}-{partition}" for topic, partition in partitions)
