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
polling. Its parts, each in a module of this package: the restore of assigned
partitions (assignment.py), what assignment events change (rebalances.py), the idle
limit (idle.py), stats values to write again (rewrites.py), the setbacks it goes on
after (setbacks.py), the commit itself (committer.py) and the reports (reporting.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

from orderpipe.clock import Clock
from orderpipe.consumer.assignment import Restorer
from orderpipe.consumer.committer import Committer, Progress, TransactionalCommitter
from orderpipe.consumer.idle import IdleWatch
from orderpipe.consumer.rebalances import Rebalances
from orderpipe.consumer.reporting import Reporter
from orderpipe.consumer.rewrites import StatsRewrites
from orderpipe.consumer.setbacks import Setbacks
from orderpipe.core.batch_plan import BatchPlan
from orderpipe.core.effects import BatchEffects, OutputTopics, batch_effects
from orderpipe.core.hold import Hold
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import TP, KafkaEdge, Marks
from orderpipe.core.replicas import ReplicaWatch
from orderpipe.core.retry_scheduler import RetryScheduler
from orderpipe.core.stats import group_total
from orderpipe.core.stats_view import StatsView
from orderpipe.core.status import LoopReading
from orderpipe.errors import TransactionLostError
from orderpipe.model.money import RunningAverage
from orderpipe.model.records import Run
from orderpipe.observe.metrics import ConsumerMetrics

__all__ = ["ConsumerLoop", "Decide"]

log = logging.getLogger(__name__)

# Decides a batch at a time (epoch ms): routing.plan_batch with the processing bound in.
Decide = Callable[[Sequence[Run], int], BatchPlan]


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
        self._batch_size, self._interval_s = batch_size, interval_s
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
        self._setbacks = Setbacks(clock)
        started = clock.monotonic()
        self._idle_watch = IdleWatch(clock, idle_exit_s, started)
        self._batch_started = started - interval_s
        self._rewrites = StatsRewrites(self._ownership, clock)
        self._rebalances = Rebalances(
            edge,
            self._ownership,
            scheduler=self._scheduler,
            hold=self._hold,
            stats=stats,
            restorer=self._restorer,
            idle=self._idle_watch,
            rewrites=self._rewrites,
        )

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
        self._rewrites.look(self._stats.table)
        self._restorer.advance()
        self._watch_replicas()
        if self._committer.pending:
            self._wait_for_commit()
            return True
        due = self._scheduler.due(int(now * 1000))
        if due:
            edge.resume(due)
            self._idle_watch.resumed(due)
        # A batch is read every commit interval: the wait for records is what is left of
        # the interval once the previous batch was handled and committed.
        wait = max(self._interval_s - (clock.monotonic() - self._batch_started), 0.0)
        polled = edge.poll(self._batch_size, wait)
        self._batch_started = clock.monotonic()
        runs = self._rebalances.take(polled)
        if runs:
            self._idle_watch.read(runs)
        if runs or self._rewrites.pending():
            self._idle_watch.active(self._batch_started)
            self._commit(runs, now)
        elif self._idle_watch.idle(self._scheduler.paused, self._ownership, self._edge.unread):
            self._reporter.idle(self._idle_watch.limit_s or 0)
            return False
        if self._metrics is not None:
            self._metrics.refresh(self.group_total, self.lags, idle=not runs)
        self._reporter.periodic(now, self.reading)
        return True

    def reading(self) -> LoopReading:
        """What the live panel shows of the loop (orderpipe.core.status), taken from what the loop keeps anyway."""
        return LoopReading(self.group_total(), self.lags(), dict(self._scheduler.paused), self._last_commit_s)

    def lags(self) -> dict[TP, int] | None:
        """Each owned partition's records not yet processed, paused ones included (see `_lags`)."""
        return _lags(self._edge.watermarks(), self._ownership, self._scheduler.paused.keys())

    def _watch_replicas(self) -> None:
        """While a commit waits, asks whether the cluster is below min ISR; if so, the commit is waited out."""
        committer, replicas = self._committer, self._replicas
        if replicas is None:
            return
        replicas.check(self._clock.monotonic() - committer.began_at if committer.pending else 0.0)
        if replicas.below and committer.pending:
            committer.keep_waiting()

    def _commit(self, runs: list[Run], now: float) -> None:
        plan = self._decide(runs, int(now * 1000)) if runs else BatchPlan(())
        if self._rewrites.partitions:  # kept to rewritable partitions by the turn that called this
            # Each partition in a batch gets its stats value written: add the ones to rewrite.
            plan = replace(plan, commits={**self._rewrites.commits(), **plan.commits})
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
            self._rebalances.on_events(polled.events)
        self._hold.drop(self._ownership.accept(polled.runs, self._scheduler.paused.keys()))
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
        self._idle_watch.active()
        resume, seeks = self._hold.end()
        pause: set[TP] = set()
        if progress is Progress.COMMITTED:
            self._setbacks.committed()
            if self._replicas is not None:
                self._replicas.writes_done()
            self._rewrites.forget(effects.offsets.keys())
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
            self._setbacks.aborted(self._committer.aborting, transient=transient)
            log.warning("⚠ %s; reading the batch again from the last commit", self._committer.aborting)
            seeks.update(self._ownership.rewind(effects.offsets))
        if pause:
            self._edge.pause(pause)
        if seeks:
            self._edge.seek(seeks)
        if resume:
            self._edge.resume(resume)

    def _recover(self, lost: TransactionLostError) -> None:
        """Goes on after a lost transaction: a new producer, and every partition owned restored from the last commit.

        The batch in hand is dropped with the old producer (its transaction is aborted
        by the new one's registration), and each partition's state and position come
        back from Kafka as after a rebalance, so nothing the lost transaction did counts.
        """
        committer = self._committer
        self._setbacks.recovering(lost, can_recover=isinstance(committer, TransactionalCommitter))
        assert isinstance(committer, TransactionalCommitter)
        log.warning("⚠ %s; going on with a new producer, from the last commit", lost)
        self._reporter.summary.aborted += 1
        self._effects = None
        self._rebalances.restore_again(committer.renew)


def _lags(marks: dict[TP, Marks] | None, ownership: Ownership, paused: Collection[TP]) -> dict[TP, int] | None:
    """Each owned partition's records not yet processed, paused ones included; None without watermarks.

    A partition being read counts from the consumer's position (past the
    transaction markers that follow the records it processed); a paused one, whose
    position a seek back does not move, from its last commit to its end, as
    kafka-consumer-groups.sh counts.
    """
    if marks is None:
        return None
    lags = {}
    for tp, (first, end, read) in marks.items():
        offset = ownership.offset(tp)
        if offset is None:  # not owned yet: being restored
            continue
        start = offset if tp in paused else max(offset, read)
        lags[tp] = max(end - max(start, first), 0)
    return lags
