"""The Prometheus series of the consumer and the producer, and how the programs update them.

Each program run gets its own `CollectorRegistry` (never prometheus_client's global
one), so runs inside one process, as in the tests, do not collide. The series are
updated only from the program's main thread; prometheus_client's values are
thread-safe, so the HTTP server (orderpipe.observe.metrics_http) reads them from its own
threads at any time.

The consumer's counters count committed batches only, at the point where the
console's summary counts them (ConsumerLoop after a COMMITTED outcome): an aborted
transaction's work is read again and counted once, when it commits. So once all
input is handled, they equal what an independent read of the topics finds.
With metrics off the programs hold None instead of these objects and update nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orderpipe.core.effects import BatchEffects
from orderpipe.core.health import Health
from orderpipe.core.ports import TP
from orderpipe.core.routing import REASONS, Retry
from orderpipe.model.money import RunningAverage

__all__ = ["AVERAGE_EVERY_S", "LAG_EVERY_S", "ConsumerMetrics", "ProducerMetrics"]

# The average gauge is refreshed from the stats topic (other consumers' partitions) at most this often ...
AVERAGE_EVERY_S = 1.0
# ... and the lag gauges at most this often.
LAG_EVERY_S = 5.0
BATCH_BUCKETS = (1, 10, 100, 1_000, 10_000, 100_000)


class ConsumerMetrics:
    """The consumer's series, and its `Health` (updated with them).

    Args:
        health: the consumer's health state; a commit, or a turn with nothing to do, is progress.
        monotonic: the clock the refresh intervals are measured with.
    """

    def __init__(self, health: Health, monotonic: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = health
        self._monotonic = monotonic
        registry = self.registry
        self._processed = Counter(
            "orderpipe_orders_processed", "Orders processed and counted in the running average", registry=registry
        )
        self._retried = Counter("orderpipe_orders_retried", "Orders sent to the retry topic", registry=registry)
        self._dead_lettered = Counter(
            "orderpipe_orders_dead_lettered", "Records sent to the DLQ, by reason", ["reason"], registry=registry
        )
        for reason in REASONS:
            self._dead_lettered.labels(reason)
        self._average = Gauge(
            "orderpipe_running_average_price_dollars",
            "The group-wide running average price (in dollars, rounded to the cent as printed)",
            registry=registry,
        )
        self._lag = Gauge(
            "orderpipe_consumer_lag_records",
            "Records not yet read, per assigned input partition",
            ["topic", "partition"],
            registry=registry,
        )
        self._commit = Histogram(
            "orderpipe_transaction_commit_seconds",
            "Time from beginning a batch's commit to its being committed",
            registry=registry,
        )
        self._batch = Histogram(
            "orderpipe_batch_records", "Records per committed batch", buckets=BATCH_BUCKETS, registry=registry
        )
        self._lagging: set[TP] = set()
        self._average_at = self._lag_at = float("-inf")

    def committed(self, effects: BatchEffects, commit_s: float, average: RunningAverage) -> None:
        """A batch was committed, in `commit_s`; `average` is the group-wide one after it."""
        self._processed.inc(effects.processed)
        for decision in effects.routed:
            if isinstance(decision, Retry):
                self._retried.inc()
            else:
                self._dead_lettered.labels(decision.reason).inc()
        if effects.decisions:
            self._batch.observe(len(effects.decisions))
        self._commit.observe(commit_s)
        self._set_average(average)
        self.health.progress()

    def refresh(
        self, average: Callable[[], RunningAverage], lags: Callable[[], Mapping[TP, int] | None], idle: bool
    ) -> None:
        """Called every turn of the loop: the average and the lags when due; `idle`: nothing to do this turn."""
        now = self._monotonic()
        if idle:
            self.health.progress()
        if now - self._average_at >= AVERAGE_EVERY_S:
            self._set_average(average())
        if now - self._lag_at >= LAG_EVERY_S:
            self._lag_at = now
            self._set_lags(lags())

    def _set_average(self, average: RunningAverage) -> None:
        self._average_at = self._monotonic()
        cents = average.average_cents
        self._average.set(0 if cents is None else cents / 100)

    def _set_lags(self, lags: Mapping[TP, int] | None) -> None:
        """Each assigned partition's lag; gauges of partitions no longer assigned are removed. None: unknown, kept."""
        if lags is None:
            return
        for topic, partition in self._lagging - lags.keys():
            self._lag.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self._lag.labels(topic, str(partition)).set(lag)
        self._lagging = set(lags)


class ProducerMetrics:
    """The producer's series, and its `Health`."""

    def __init__(self, health: Health) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = health
        self._produced = Counter(
            "orderpipe_orders_produced", "Orders acknowledged by the broker", registry=self.registry
        )
        self._failed = Counter(
            "orderpipe_orders_failed", "Orders whose delivery failed or was never acknowledged", registry=self.registry
        )
        self._latency = Histogram(
            "orderpipe_produce_latency_seconds",
            "Time from produce() to the delivery report",
            registry=self.registry,
        )

    def delivered(self, ok: bool, latency_s: float | None) -> None:
        """One delivery report: acknowledged or failed, with librdkafka's produce-to-report latency."""
        (self._produced if ok else self._failed).inc()
        if latency_s is not None:
            self._latency.observe(latency_s)

    def undelivered(self, count: int) -> None:
        """Orders still not acknowledged when the final flush gave up."""
        self._failed.inc(count)
