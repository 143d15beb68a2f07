"""Stats values of owned partitions that someone else wrote, to be written over by their owner.

The stats topic is compacted and any client may write it. When the stats view reads a
value of an owned partition that its owner did not write (orderpipe.core.ownership
says which), the loop writes the owner's value again, in its next batch, with the
partition's committed offset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from orderpipe.clock import Clock
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import TP
from orderpipe.core.stats import StatsTable
from orderpipe.core.stats_view import WARN_EVERY_S

__all__ = ["StatsRewrites"]

log = logging.getLogger(__name__)


class StatsRewrites:
    """Owned partitions whose value in the stats topic is to be written again."""

    def __init__(self, ownership: Ownership, clock: Clock) -> None:
        self._ownership, self._clock = ownership, clock
        self.partitions: set[TP] = set()
        self._warned_foreign_at = -WARN_EVERY_S

    def look(self, table: StatsTable) -> None:
        """Owned partitions whose stats value someone else wrote get the owner's written over it."""
        if table.changed:
            for tp in table.changed:
                if self._ownership.foreign(tp, table.latest.get(tp), spoiled=tp in table.spoiled):
                    self.partitions.add(tp)
                    now = self._clock.monotonic()
                    if now - self._warned_foreign_at >= WARN_EVERY_S:  # a view far behind could see many
                        self._warned_foreign_at = now
                        log.warning(
                            "⚠ %s-%d: its value in the stats topic was not written by its owner; rewriting it", *tp
                        )
            table.changed.clear()

    def pending(self) -> bool:
        """Whether a stats value is to be rewritten; keeps only owned partitions with an offset to write it with."""
        if self.partitions:
            self.partitions = {tp for tp in self.partitions if _at_or_past_zero(self._ownership.offset(tp))}
        return bool(self.partitions)

    def commits(self) -> dict[TP, int]:
        """The offset to write each value with: the partition's committed one."""
        return {tp: offset for tp in self.partitions if (offset := self._ownership.offset(tp)) is not None}

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions revoked, or their values written: nothing more to rewrite for them."""
        self.partitions.difference_update(partitions)


def _at_or_past_zero(offset: int | None) -> bool:
    return offset is not None and offset >= 0
