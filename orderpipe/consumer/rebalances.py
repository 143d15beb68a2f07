"""What the group's assignment events change for the consumer loop: ownership, restores, paused partitions.

An assignment starts the restore of its partitions (orderpipe/consumer/assignment.py);
a revocation (a rebalance, or partitions lost while the group coordinator was away)
forgets everything kept of its partitions and resumes those the loop had paused, so
that whoever owns them next reads them. Both count as activity for the idle limit,
and a revocation of everything makes the consumer wait for the group's next
assignment (orderpipe/consumer/idle.py). After a lost transaction the loop takes its
partitions away and restores them again the same way (`restore_again`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orderpipe.consumer.assignment import Restorer, partition_names
from orderpipe.consumer.idle import IdleWatch
from orderpipe.consumer.rewrites import StatsRewrites
from orderpipe.core.hold import Hold
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import Assigned, Event, KafkaEdge, Polled, Revoked
from orderpipe.core.retry_scheduler import RetryScheduler
from orderpipe.core.stats_view import StatsView
from orderpipe.model.records import Run

__all__ = ["Rebalances"]

log = logging.getLogger(__name__)


class Rebalances:
    """Applies a poll's assignment events to the loop's parts, and keeps only the records of owned partitions."""

    def __init__(
        self,
        edge: KafkaEdge,
        ownership: Ownership,
        *,
        scheduler: RetryScheduler,
        hold: Hold,
        stats: StatsView,
        restorer: Restorer,
        idle: IdleWatch,
        rewrites: StatsRewrites,
    ) -> None:
        self._edge, self._ownership, self._scheduler, self._hold = edge, ownership, scheduler, hold
        self._stats, self._restorer, self._idle, self._rewrites = stats, restorer, idle, rewrites

    def take(self, polled: Polled) -> list[Run]:
        """The polled runs of owned partitions, once the poll's events are applied."""
        if polled.events:
            self.on_events(polled.events)
        elif not self._scheduler.paused and not self._ownership.restoring:
            return polled.runs  # with nothing paused, revoked or restoring, every run is of an owned partition
        return self._ownership.accept(polled.runs, self._scheduler.paused.keys())

    def on_events(self, events: tuple[Event, ...]) -> None:
        """Assignments start a restore; revocations forget their partitions and resume what the loop paused."""
        for event in events:
            log.debug("%s: %s", type(event).__name__, partition_names(event.partitions) or "none")
            if isinstance(event, Assigned):
                self._stats.table.keys.extend(event.partitions)
                self._ownership.assigned(event.partitions)
                self._restorer.start()
                self._idle.assigned()
                continue
            # A rebalance (or partitions lost when the group coordinator was away) is
            # activity: the idle limit counts again from here, while the group settles.
            self._idle.active()
            self._ownership.revoked(event.partitions)
            if not self._ownership.states and not self._ownership.restoring:
                self._idle.rejoining()  # all of it revoked (eager): not a member until the next assignment
            self._rewrites.forget(event.partitions)
            self._idle.forget(event.partitions)
            paused = self._scheduler.forget(event.partitions) + self._hold.forget(event.partitions)
            if paused:
                self._edge.resume(paused)

    def restore_again(self, renew: Callable[[], None]) -> None:
        """Every partition owned (or being restored) is restored again from the last commit, `renew` run in between.

        For a lost transaction (ConsumerLoop._recover): it takes the partitions away as
        a revocation does, which resumes what the commit's hold and the retries paused,
        and nothing is read until the restore assigns them again. Owning nothing (lost
        with the group session, say), the consumer is waiting for the group's next
        assignment, and an empty one made up here would end that wait at the idle limit.
        """
        owned = tuple(sorted({*self._ownership.states, *self._ownership.restoring}))
        if owned:
            log.debug("restoring %d partitions again", len(owned))
            self.on_events((Revoked(owned),))
            self._edge.assign({})
        else:
            log.debug("owning nothing: going on waiting for an assignment")
        self._hold.end()
        renew()
        if owned:
            self.on_events((Assigned(owned),))
