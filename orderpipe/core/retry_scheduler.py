"""Records that are not yet due, without holding up anything else, free of Kafka and clocks.

When the head record of a retry partition is not yet due, only that partition is
paused, and the consumer seeks back to the record; it is resumed once due (docs/reliability.md,
"Delivery guarantees"). A partition of `orders` whose head record waits for its schema to be
looked up (routing.Deferred from NotReady) is paused the same way, for a moment.
librdkafka keeps a partition paused by the application even across an unassign, so
a paused partition that is revoked is resumed at once: whoever owns it next reads
the waiting record again from the committed offset.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from orderpipe.core.batch_plan import Deferred
from orderpipe.core.ports import TP

__all__ = ["RetryScheduler"]


class RetryScheduler:
    def __init__(self) -> None:
        # Paused partition -> when its head record is due (epoch ms).
        self.paused: dict[TP, int] = {}

    def defer(self, deferred: Sequence[Deferred]) -> dict[TP, int]:
        """Pauses the partitions of records not yet due; returns where to seek each (to pause too)."""
        seeks: dict[TP, int] = {}
        for record in deferred:
            tp = (record.topic, record.partition)
            self.paused[tp] = record.due_ms
            seeks[tp] = record.offset
        return seeks

    def due(self, now_ms: int) -> list[TP]:
        """The paused partitions whose head record is due: resume them."""
        due = [tp for tp, due_ms in self.paused.items() if due_ms <= now_ms]
        for tp in due:
            del self.paused[tp]
        return due

    def forget(self, partitions: Collection[TP]) -> list[TP]:
        """Partitions taken away: those that were paused are to be resumed."""
        forgotten = [tp for tp in partitions if tp in self.paused]
        for tp in forgotten:
            del self.paused[tp]
        return forgotten
