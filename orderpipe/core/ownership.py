"""The input partitions this consumer owns, and the committed state and offset of each, free of Kafka.

The group protocol is eager: an assignment replaces the previous one. A newly
assigned partition is first *restoring*: its committed offset and its last state in
`orders-stats` are being read, and nothing of it is consumed. Once both are known,
`restored` says where each partition starts, and from then on it is *owned*: its
records are processed, and its state and offset move on with every committed batch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from orderpipe.core.effects import BatchEffects
from orderpipe.core.ports import BEGINNING, TP
from orderpipe.core.stats import Latest, StatsTable
from orderpipe.model.money import RunningAverage
from orderpipe.model.records import Run

__all__ = ["Ownership"]

# Values remembered per partition: more than the stats view lags behind.
WRITTEN = 64


class Ownership:
    def __init__(self) -> None:
        self.restoring: tuple[TP, ...] = ()
        self.states: dict[TP, RunningAverage] = {}
        self._offsets: dict[TP, int] = {}
        # Per owned partition, the values it wrote lately, by offset (see `foreign`).
        self._written: dict[TP, dict[int, RunningAverage]] = {}

    def assigned(self, partitions: Iterable[TP]) -> None:
        """A new assignment: these partitions are to be restored before they are read."""
        self.restoring = tuple(partitions)

    def restored(self, committed: Mapping[TP, int | None], table: StatsTable) -> tuple[dict[TP, int], list[TP]]:
        """Takes over the restoring partitions.

        The committed offset and the state were written in one transaction, so the
        state restored is the latest value that reaches exactly the committed offset: a
        value replayed or forged with another offset changes nothing. If the group's
        offsets expired (or were deleted) but the state survived in the compacted
        topic, the partition resumes where its latest value ends instead of counting
        everything again.

        Returns:
            The offset each partition starts at, and the partitions whose committed
            offset no value matched (their latest state is used; an offset reset, say).
        """
        starts: dict[TP, int] = {}
        unmatched: list[TP] = []
        for tp in self.restoring:
            offset = committed.get(tp)
            latest = table.latest.get(tp)
            state = None
            if offset is None:
                if latest is not None and latest.next_offset is not None:
                    state, offset = latest.state, latest.next_offset
            else:
                state = table.at(tp, offset)
                if state is None:
                    unmatched.append(tp)
                    state = None if latest is None else latest.state
            starts[tp] = self._offsets[tp] = BEGINNING if offset is None else offset
            self.states[tp] = state or RunningAverage()
            self._remember(tp)
        self.restoring = ()
        return starts, unmatched

    def foreign(self, tp: TP, latest: Latest | None, *, spoiled: bool = False) -> bool:
        """True when an owned partition's latest stats record is not a value this consumer wrote.

        Only the owner writes a partition's value, so another (forged, replayed,
        unusable, or written by a consumer that lost the partition) is written over
        with the owner's. A partition not read yet has no offset to write a value
        with; its first batch writes one.

        Args:
            latest: the latest usable value read for the partition.
            spoiled: the latest record was not a usable value.
        """
        if tp not in self.states or self._offsets[tp] < 0:
            return False
        if spoiled:
            return True
        if latest is None:
            return False  # nothing there to be wrong
        if latest.next_offset is None:
            return True
        return self._written.get(tp, {}).get(latest.next_offset) != latest.state

    def _remember(self, tp: TP) -> None:
        written = self._written.setdefault(tp, {})
        written.pop(self._offsets[tp], None)
        written[self._offsets[tp]] = self.states[tp]
        if len(written) > WRITTEN:
            del written[next(iter(written))]

    def revoked(self, partitions: Collection[TP]) -> None:
        """Forgets partitions taken away; their state is read again if they come back.

        Never published anywhere: after a lost assignment another consumer may
        already have committed a newer state.
        """
        for tp in partitions:
            self.states.pop(tp, None)
            self._offsets.pop(tp, None)
            self._written.pop(tp, None)
        self.restoring = tuple(tp for tp in self.restoring if tp not in partitions)

    def accept(self, runs: list[Run], paused: Collection[TP]) -> list[Run]:
        """The runs of owned partitions that are not paused, in order."""
        readable = self.states.keys() - paused
        return [run for run in runs if (run.topic, run.partition) in readable]

    def committed(self, effects: BatchEffects) -> None:
        """A batch was committed: its partitions that are still owned move on."""
        for tp, offset in effects.offsets.items():
            if tp in self.states:
                self.states[tp] = effects.states[tp]
                self._offsets[tp] = offset
                self._remember(tp)

    def offset(self, tp: TP) -> int | None:
        """A partition's committed offset (BEGINNING before anything of it was read), None if not owned."""
        return self._offsets.get(tp)

    def rewind(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """Where the owned ones of `partitions` start again after an aborted batch: their last commit."""
        return {tp: self._offsets[tp] for tp in partitions if tp in self._offsets}
