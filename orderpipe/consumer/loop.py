"""The consumer loop: poll a batch, have the core decide it, commit its effects, carry them out.

Per batch (one poll: at most `batch_size` records, or what arrived within the commit
interval): `decide` routes every record (routing.plan_batch), `batch_effects` turns
the plan into data (records to produce, offsets, states, retries to defer) and the
committer makes the records and offsets durable together. Only once the commit
succeeded does the loop move the partitions' states on, pause the deferred
partitions and report; an aborted batch is read again from the last commit.

Nothing here waits except the poll itself. A restore after an assignment, a
transactional step to be tried again, a record not yet due or readable and a stats
value to be written again are states the loop checks on every turn while it keeps
polling.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from orderpipe.clock import Clock
from orderpipe.consumer.assignment import Restorer
from orderpipe.consumer.committer import Committer, Progress, TransactionalCommitter
from orderpipe.consumer.reporting import Reporter
from orderpipe.core.effects import BatchEffects, OutputTopics, batch_effects
from orderpipe.core.hold import Hold
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import TP, Assigned, Event, KafkaEdge, Polled, Revoked
from orderpipe.core.replicas import ReplicaWatch
from orderpipe.core.retry_scheduler import RetryScheduler
from orderpipe.core.routing import BatchPlan
from orderpipe.core.stats import group_total
from orderpipe.core.stats_view import WARN_EVERY_S, StatsView
from orderpipe.core.status import LoopReading
from orderpipe.errors import FatalKafkaError, TransactionLostError
from orderpipe.model.money import RunningAverage
from orderpipe.model.records import Incoming
from orderpipe.observe.metrics import ConsumerMetrics

__all__ = ["ConsumerLoop", "Decide"]

log = logging.getLogger(__name__)

# Decides a batch at a time (epoch ms): routing.plan_batch with the processing bound in.
Decide = Callable[[Sequence[Incoming], int], BatchPlan]
# Before the first partition assignment, --idle-exit waits this much longer: joining
# the group (and, on a new broker, creating __consumer_offsets) is not idleness.
JOIN_GRACE_S = 30.0
# Aborted batches in a row before the consumer gives up: the same failure each time
# (a record the broker refuses, say) would otherwise repeat forever.
MAX_ABORTS_IN_A_ROW = 5
# A partition resumed when due counts as busy until its waiting record is read
# again, or at most this long (the record may have been deleted by retention meanwhile).
REFETCH_LIMIT_S = 30.0
# Transactions lost (a fenced producer, say) that are recovered within this window; one
# more stops the consumer: a newer consumer with the same transactional id, or a cluster
# that keeps failing, is for a person to look at.
MAX_RECOVERIES, RECOVERY_WINDOW_S = 3, 300.0


class ConsumerLoop:
    def __init__(
        self,
        edge: KafkaEdge,
        committer: Committer,
        stats: StatsView,
        reporter: Reporter,
        decide: Decide,
        *,
        outputs: OutputTopics,
        batch_size: int,
        interval_s: float,
        idle_exit_s: float | None,
        clock: Clock,
        replicas: ReplicaWatch | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self._edge, self._committer, self._stats, self._reporter = edge, committer, stats, reporter
        self._decide = decide
        self._outputs = outputs
        self._batch_size, self._interval_s, self._idle_exit_s = batch_size, interval_s, idle_exit_s
        self._clock = clock
        self._replicas = replicas
        self._metrics = metrics
        self._commit_began = 0.0  # when the batch being committed was handed to the committer
        self._last_commit_s: float | None = None  # how long the last committed batch's commit took
        self._ownership = Ownership()
        self._scheduler = RetryScheduler()
        self._hold = Hold()
        self._restorer = Restorer(edge, self._ownership, stats, clock)
        self._effects: BatchEffects | None = None  # the batch being committed
        self._batch_read_s = 0.0
        self._aborts_in_a_row = 0
        self._last_activity = clock.monotonic()
        self._batch_started = self._last_activity - interval_s
        self._assigned_once = False
        # Owned partitions whose value in the stats topic is to be written again (see _look_for_foreign_values).
        self._rewrite: set[TP] = set()
        self._warned_foreign_at = -WARN_EVERY_S
        # Resumed partitions whose waiting record was not read again yet, and when they were resumed.
        self._refetching: dict[TP, float] = {}
        self._recovered_at: list[float] = []  # when lost transactions were recovered

    def group_total(self) -> RunningAverage:
        """The group-wide running average: own partitions from memory, the others' from `orders-stats`."""
        return group_total(self._stats.table.states, self._ownership.states)

    def run(self, stop: threading.Event) -> RunningAverage:
        """Turns until `stop` is set (finishing the batch in hand) or the idle limit passes.

        Returns the group-wide running average at the end.
        """
        while (not stop.is_set() or self._committer.pending) and self.turn():
            pass
        self._reporter.last(self._clock.time(), self.reading)
        self._reporter.summary.stats_ignored = self._stats.ignored
        return self.group_total()

    def turn(self) -> bool:
        """One turn of the loop: at most one poll and one batch. False once the idle limit passed."""
        edge, clock = self._edge, self._clock
        now = clock.time()
        self._stats.poll()  # before the restorer looks at how far the stats were read
        self._look_for_foreign_values()
        self._restorer.advance()
        self._watch_replicas()
        if self._committer.pending:
            self._wait_for_commit()
            return True
        due = self._scheduler.due(int(now * 1000))
        if due:
            edge.resume(due)
            self._refetching.update(dict.fromkeys(due, clock.monotonic()))
        # A batch is read every commit interval: the wait for records is what is left of
        # the interval once the previous batch was handled and committed.
        wait = max(self._interval_s - (clock.monotonic() - self._batch_started), 0.0)
        polled = edge.poll(self._batch_size, wait)
        self._batch_started = clock.monotonic()
        records = self._take(polled)
        if records and self._refetching:
            for record in records:
                self._refetching.pop((record.topic, record.partition), None)
        if records or self._rewritable():
            self._last_activity = self._batch_started
            self._commit(records, now)
        elif self._idle():
            self._reporter.idle(self._idle_exit_s or 0)
            return False
        if self._metrics is not None:
            self._metrics.refresh(self.group_total, self.lags, idle=not records)
        self._reporter.periodic(now, self.reading)
        return True

    def reading(self) -> LoopReading:
        """What the live panel shows of the loop (orderpipe.core.status), taken from what the loop keeps anyway."""
        return LoopReading(self.group_total(), self.lags(), dict(self._scheduler.paused), self._last_commit_s)

    def lags(self) -> dict[TP, int] | None:
        """Each owned partition's records not yet processed, paused ones included.

        A partition being read counts from the consumer's position (past the
        transaction markers that follow the records it processed); a paused one, whose
        position a seek back does not move, from its last commit to its end, as
        kafka-consumer-groups.sh counts.
        """
        marks = self._edge.watermarks()
        if marks is None:
            return None
        paused = self._scheduler.paused.keys()
        lags = {}
        for tp, (first, end, read) in marks.items():
            offset = self._ownership.offset(tp)
            if offset is None:  # not owned yet: being restored
                continue
            start = offset if tp in paused else max(offset, read)
            lags[tp] = max(end - max(start, first), 0)
        return lags

    def _watch_replicas(self) -> None:
        """While a commit waits, asks whether the cluster is below min ISR; if so, the commit is waited out."""
        committer, replicas = self._committer, self._replicas
        if replicas is None:
            return
        replicas.check(self._clock.monotonic() - committer.began_at if committer.pending else 0.0)
        if replicas.below and committer.pending:
            committer.keep_waiting()

    def _take(self, polled: Polled) -> list[Incoming]:
        if polled.events:
            self._on_events(polled.events)
        elif not self._scheduler.paused and not self._ownership.restoring:
            return polled.records  # with nothing paused, revoked or restoring, every record is of an owned partition
        return self._ownership.accept(polled.records, self._scheduler.paused.keys())

    def _on_events(self, events: tuple[Event, ...]) -> None:
        for event in events:
            if isinstance(event, Assigned):
                self._stats.table.keys.extend(event.partitions)
                self._ownership.assigned(event.partitions)
                self._restorer.start()
                self._assigned_once, self._last_activity = True, self._clock.monotonic()
                continue
            # A rebalance (or partitions lost when the group coordinator was away) is
            # activity: the idle limit counts again from here, while the group settles.
            self._last_activity = self._clock.monotonic()
            self._ownership.revoked(event.partitions)
            if not self._ownership.states:  # all lost: joining again gets the same grace as the first join
                self._assigned_once = False
            self._rewrite.difference_update(event.partitions)
            for tp in event.partitions:
                self._refetching.pop(tp, None)
            paused = self._scheduler.forget(event.partitions) + self._hold.forget(event.partitions)
            if paused:
                self._edge.resume(paused)

    def _look_for_foreign_values(self) -> None:
        """Owned partitions whose stats value someone else wrote get the owner's written over it."""
        table = self._stats.table
        if table.changed:
            for tp in table.changed:
                if self._ownership.foreign(tp, table.latest.get(tp), spoiled=tp in table.spoiled):
                    self._rewrite.add(tp)
                    now = self._clock.monotonic()
                    if now - self._warned_foreign_at >= WARN_EVERY_S:  # a view far behind could see many
                        self._warned_foreign_at = now
                        log.warning(
                            "⚠ %s-%d: its value in the stats topic was not written by its owner; rewriting it", *tp
                        )
            table.changed.clear()

    def _rewritable(self) -> bool:
        """Whether a stats value is to be rewritten; keeps only owned partitions with an offset to write it with."""
        if self._rewrite:
            self._rewrite = {tp for tp in self._rewrite if _at_or_past_zero(self._ownership.offset(tp))}
        return bool(self._rewrite)

    def _commit(self, records: list[Incoming], now: float) -> None:
        plan = self._decide(records, int(now * 1000)) if records else BatchPlan(())
        if self._rewrite:  # kept to rewritable partitions by the turn that called this
            # Each partition in a batch gets its stats value written: add the ones to rewrite.
            rewrites = {tp: offset for tp in self._rewrite if (offset := self._ownership.offset(tp)) is not None}
            plan = replace(plan, commits={**rewrites, **plan.commits})
        self._effects = batch_effects(plan, self._ownership.states, self._outputs)
        self._batch_read_s = now
        self._commit_began = self._clock.monotonic()
        self._committer.begin(self._effects)
        self._advance_commit()

    def _wait_for_commit(self) -> None:
        """Polls while a commit step waits to be tried again; what arrives is read again later."""
        wait = min(max(self._committer.retry_at - self._clock.monotonic(), 0.0), self._interval_s)
        polled = self._edge.poll(self._batch_size, wait)
        if polled.events:
            self._on_events(polled.events)
        self._hold.drop(self._ownership.accept(polled.records, self._scheduler.paused.keys()))
        self._advance_commit()

    def _advance_commit(self) -> None:
        try:
            progress = self._committer.advance()
        except TransactionLostError as exc:
            self._recover(exc)
            return
        if progress is Progress.WAITING:
            if not self._hold.active:
                self._edge.pause(self._hold.begin(self._ownership.states.keys() - self._scheduler.paused.keys()))
            return
        effects, self._effects = self._effects, None
        assert effects is not None
        # The time a commit waited (a coordinator or leader away) is not idle time.
        self._last_activity = self._clock.monotonic()
        resume, seeks = self._hold.end()
        pause: set[TP] = set()
        if progress is Progress.COMMITTED:
            self._aborts_in_a_row = 0
            if self._replicas is not None:
                self._replicas.writes_done()
            self._rewrite -= effects.offsets.keys()
            before = self.group_total()
            self._ownership.committed(effects)
            owned = self._ownership.states
            deferred = self._scheduler.defer([d for d in effects.deferred if (d.topic, d.partition) in owned])
            pause, resume = set(deferred), resume - deferred.keys()
            seeks.update(deferred)
            self._last_commit_s = self._clock.monotonic() - self._commit_began
            self._reporter.committed(effects, before, self._batch_read_s, self._clock.time())
            if self._metrics is not None:
                self._metrics.committed(effects, self._last_commit_s, self.group_total())
        else:
            self._reporter.summary.aborted += 1
            # A broker or coordinator that is slow or away is waited for; only a batch
            # that fails for itself, again and again, stops the consumer.
            transient = self._committer.transient or bool(self._replicas and self._replicas.below)
            self._aborts_in_a_row += 0 if transient else 1
            if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
                raise FatalKafkaError(
                    f"{self._aborts_in_a_row} batches in a row were aborted; the last: {self._committer.aborting}"
                )
            log.warning("⚠ %s; reading the batch again from the last commit", self._committer.aborting)
            seeks.update(self._ownership.rewind(effects.offsets))
        if pause:
            self._edge.pause(pause)
        if seeks:
            self._edge.seek(seeks)
        if resume:
            self._edge.resume(resume)

    def _recover(self, lost: TransactionLostError) -> None:
        """Goes on after a lost transaction: a new producer, and every partition restored from the last commit.

        The batch in hand is dropped with the old producer (its transaction is aborted
        by the new one's registration), and each partition's state and position come
        back from Kafka as after a rebalance, so nothing the lost transaction did counts.
        """
        committer, now = self._committer, self._clock.monotonic()
        self._recovered_at = [at for at in self._recovered_at if now - at < RECOVERY_WINDOW_S]
        if not isinstance(committer, TransactionalCommitter) or len(self._recovered_at) >= MAX_RECOVERIES:
            raise FatalKafkaError(
                f"{lost}; {len(self._recovered_at)} lost transactions were recovered within "
                f"{RECOVERY_WINDOW_S:g}s, so the consumer stops"
            ) from lost
        self._recovered_at.append(now)
        log.warning("⚠ %s; going on with a new producer, from the last commit", lost)
        self._reporter.summary.aborted += 1
        self._effects = None
        partitions = tuple(sorted({*self._ownership.states, *self._ownership.restoring}))
        self._on_events((Revoked(partitions),))  # resumes what the commit's hold and the retries paused
        self._hold.end()
        self._edge.assign({})  # nothing is read until the restore assigns the partitions again
        committer.renew()
        self._on_events((Assigned(partitions),))

    def _idle(self) -> bool:
        """True once nothing arrived for the idle limit, while nothing waits: no retry paused or being read again."""
        limit = self._idle_exit_s
        if limit is None:
            return False
        if self._scheduler.paused or self._ownership.restoring:
            # Waiting is not idleness: the limit counts from when nothing waits any more
            # (a restore that took longer than the limit must not end the run before the
            # partitions' first fetch).
            self._last_activity = self._clock.monotonic()
            return False
        if self._refetching:
            now = self._clock.monotonic()
            self._refetching = {tp: at for tp, at in self._refetching.items() if now - at < REFETCH_LIMIT_S}
            if self._refetching:
                return False
        grace = 0.0 if self._assigned_once else JOIN_GRACE_S
        if self._clock.monotonic() - self._last_activity < limit + grace:
            return False
        # Nothing arrived, but a broker failure stops records arriving too: idle only once
        # the partitions' leaders say nothing is left to read.
        owned = list(self._ownership.states)
        unread = self._edge.unread(owned) if owned else {}
        if unread is None or any(unread.get(tp, 1) for tp in owned):
            self._last_activity = self._clock.monotonic()
            return False
        return True


def _at_or_past_zero(offset: int | None) -> bool:
    return offset is not None and offset >= 0
