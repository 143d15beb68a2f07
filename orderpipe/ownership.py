"""The input partitions this consumer owns, and the committed state and offset of each, free of Kafka.

The group protocol is eager: an assignment replaces the previous one. A newly
assigned partition is first *restoring*: its committed offset and its last state in
`orders-stats` are being read, and nothing of it is consumed. Once both are known,
`restored` says where each partition starts, and from then on it is *owned*: its
records are processed, and its state and offset move on with every committed batch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from orderpipe.edge import BEGINNING, TP
from orderpipe.effects import BatchEffects
from orderpipe.money import RunningAverage
from orderpipe.routing import Incoming
from orderpipe.stats import Published, stats_key

__all__ = ["Ownership"]


class Ownership:
    def __init__(self) -> None:
        self.restoring: tuple[TP, ...] = ()
        self.states: dict[TP, RunningAverage] = {}
        self._offsets: dict[TP, int] = {}

    def assigned(self, partitions: Iterable[TP]) -> None:
        """A new assignment: these partitions are to be restored before they are read."""
        self.restoring = tuple(partitions)

    def restored(self, committed: Mapping[TP, int | None], published: Published) -> dict[TP, int]:
        """Takes over the restoring partitions; returns the offset each starts at.

        The committed offset and the published state were written in one transaction,
        so they belong together. If the group's offsets expired (or were deleted) but
        the state survived in the compacted topic, the partition resumes where the
        state ends instead of counting everything again.
        """
        starts: dict[TP, int] = {}
        for tp in self.restoring:
            key = stats_key(*tp)
            offset = committed.get(tp)
            if offset is None:
                offset = published.next_offsets.get(key, BEGINNING)
            starts[tp] = self._offsets[tp] = offset
            self.states[tp] = published.states.get(key, RunningAverage())
        self.restoring = ()
        return starts

    def revoked(self, partitions: Collection[TP]) -> None:
        """Forgets partitions taken away; their state is read again if they come back.

        Never published anywhere: after a lost assignment another consumer may
        already have committed a newer state.
        """
        for tp in partitions:
            self.states.pop(tp, None)
            self._offsets.pop(tp, None)
        self.restoring = tuple(tp for tp in self.restoring if tp not in partitions)

    def accept(self, records: list[Incoming], paused: Collection[TP]) -> list[Incoming]:
        """The records of owned partitions that are not paused, in order."""
        readable = self.states.keys() - paused
        return [r for r in records if (r.topic, r.partition) in readable]

    def committed(self, effects: BatchEffects) -> None:
        """A batch was committed: its partitions that are still owned move on."""
        for tp, offset in effects.offsets.items():
            if tp in self.states:
                self.states[tp] = effects.states[tp]
                self._offsets[tp] = offset

    def rewind(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """Where the owned ones of `partitions` start again after an aborted batch: their last commit."""
        return {tp: self._offsets[tp] for tp in partitions if tp in self._offsets}
