"""Holding input back while a batch's commit waits to be tried again, free of Kafka and clocks.

A transactional call that failed retriably is repeated after a backoff. Meanwhile
the loop keeps polling (so the group never thinks it died) but must not read past
the batch in hand: the hold pauses every partition it reads, drops anything that
was already on its way, and at the end says which partitions to resume and where to
seek the ones whose records were dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from orderpipe.core.ports import TP
from orderpipe.model.records import Run

__all__ = ["Hold"]


class Hold:
    def __init__(self) -> None:
        self.active = False
        self._paused: set[TP] = set()
        self._dropped: dict[TP, int] = {}  # partition -> offset of its first dropped record

    def begin(self, readable: Iterable[TP]) -> set[TP]:
        """Starts holding; returns the partitions to pause (those being read)."""
        self.active = True
        self._paused = set(readable)
        self._dropped.clear()
        return self._paused

    def drop(self, runs: Iterable[Run]) -> None:
        """Records that arrived during the hold: they are read again after it."""
        for run in runs:
            self._dropped.setdefault((run.topic, run.partition), run.first_offset)

    def forget(self, partitions: Collection[TP]) -> list[TP]:
        """Partitions taken away during the hold: nothing to seek there; those it paused are to be resumed now.

        librdkafka keeps a partition paused by the application across an unassign, so
        one that came back would otherwise never be read again.
        """
        paused = [tp for tp in partitions if tp in self._paused]
        self._paused.difference_update(partitions)
        for tp in partitions:
            self._dropped.pop(tp, None)
        return paused

    def end(self) -> tuple[set[TP], dict[TP, int]]:
        """Stops holding; returns the partitions to resume and where to seek those with dropped records."""
        self.active = False
        resume, seeks = self._paused, dict(self._dropped)
        self._paused, self._dropped = set(), {}
        return resume, seeks
