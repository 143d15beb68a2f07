"""The producer at the edge: publishes generated orders to Kafka and checks every delivery."""

from __future__ import annotations

import functools
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from orderpipe.config.settings import Settings
from orderpipe.core.health import Health
from orderpipe.core.replicas import ReplicaWatch
from orderpipe.core.status import ProducerReading, View
from orderpipe.kafka.admin import ensure_topics, in_sync_replicas, require_grants
from orderpipe.kafka.clients import (
    FLUSH_TIMEOUT_S,
    close_producer,
    connect_admin,
    create_client,
    produce,
    produce_all,
    producer_config,
    statistics_config,
)
from orderpipe.model.generator import Generated, Kind, OrderFactory, base36
from orderpipe.model.money import RunningAverage, format_cents
from orderpipe.observe.console import QUIET, Console, throughput_line
from orderpipe.observe.metrics import ProducerMetrics
from orderpipe.observe.metrics_http import serving
from orderpipe.programs.producer_encoding import Encoding, value_encoding, writer_schema, writes_single_object
from orderpipe.serde.schemas import OrderSchema
from orderpipe.serde.wire import RawSchema

__all__ = ["ProducerOptions", "ProducerSummary", "run_producer"]

log = logging.getLogger(__name__)

# The final flush waits FLUSH_TIMEOUT_S for the last acknowledgements, in steps of
# FLUSH_STEP_S; longer while the cluster is below min.insync.replicas (librdkafka still
# fails a record once message.timeout.ms, 5 minutes, has passed).
FLUSH_STEP_S = 1.0
# Records made between two readings of the clock (and two services of delivery reports).
SLICE = 1000
PACING_S = 0.001


@dataclass(frozen=True)
class ProducerOptions:
    count: int | None = None
    rate: float = 2.0
    invalid_rate: float = 0.0
    poison_rate: float = 0.0
    seed: int | None = None
    # Which schemas/order-vN.avsc to write; None: the newest (order.avsc).
    schema_version: int | None = None


@dataclass
class ProducerSummary:
    """What a run sent, by kind, and what the broker acknowledged."""

    sent: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {Kind.VALID: 0, Kind.INVALID: 0, Kind.POISON: 0})
    delivered: int = 0
    failed: int = 0
    valid: RunningAverage = field(default_factory=RunningAverage)
    # From the first send to the last acknowledgement (the end of the final flush).
    busy_s: float = 0.0

    def describe_throughput(self) -> str:
        return throughput_line(self.delivered, "orders", self.busy_s, "from the first send to the last acknowledgement")

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.by_kind.items())
        return (
            f"Producer summary: sent {self.sent} orders ({kinds}), delivered {self.delivered}, "
            f"failed {self.failed}; valid orders total {format_cents(self.valid.sum_cents)}, "
            f"average {self.valid.describe()}"
        )


def _describe(generated: Generated) -> str:
    order = generated.order
    if generated.kind == Kind.POISON:
        return f"poison record {generated.key} ({len(generated.value or b'')} undecodable bytes)"
    label = "Order" if generated.kind == Kind.VALID else "invalid order"
    return f"{label} {order.order_id} → {order.product.strip() or '(blank)'} → ${order.price:.2f}"


def _key_label(message: Message) -> str:
    key = message.key()
    return key.decode("utf-8", errors="replace") if isinstance(key, bytes) else "(no key)"


def run_producer(
    settings: Settings,
    options: ProducerOptions,
    console: Console,
    stop: threading.Event,
    view: View[ProducerReading] | None = None,
) -> ProducerSummary:
    """Publishes orders until `count` is reached or `stop` is set, then flushes.

    With METRICS_PORT set, /metrics and /healthz are served from the start to the end.
    `view`: the live progress on a terminal (orderpipe.observe.terminal), drawn instead of the periodic summary lines.

    Raises:
        BrokerUnavailableError, RegistryUnavailableError: before anything is sent.
    """
    # An unknown version, or a writer schema for bare bodies that cannot carry an order, before anything connects.
    schema = writer_schema(settings, options.schema_version)
    with ExitStack() as stack:
        metrics = None
        if settings.metrics_port is not None:
            metrics = ProducerMetrics(Health(settings.bootstrap_servers, time.monotonic))
            url = stack.enter_context(serving(settings.metrics_port, metrics.registry, metrics.health))
            console.info(f"Metrics on {url}/metrics (health: /healthz)")
        admin = connect_admin(settings)
        require_grants(admin, settings, "producer")  # first: a topic it may not use looks absent
        ensure_topics(admin, settings)
        encoding = value_encoding(settings, schema, stack)
        return _publish(
            settings, options, console, stop, encoding, admin=admin, metrics=metrics, schema=schema, view=view
        )


def _publish(
    settings: Settings,
    options: ProducerOptions,
    console: Console,
    stop: threading.Event,
    encoding: Encoding,
    *,
    admin: AdminClient,
    metrics: ProducerMetrics | None,
    schema: OrderSchema | RawSchema,
    view: View[ProducerReading] | None,
) -> ProducerSummary:
    # The run id makes orderIds unique across runs; it is not drawn from the seeded
    # generator, so a seeded run repeats its orders but never their ids.
    run_id = base36(time.time_ns() // 1_000_000) + base36(secrets.randbelow(36 * 36)).rjust(2, "0")
    factory = OrderFactory(
        random.Random(options.seed),
        run_id,
        options.invalid_rate,
        options.poison_rate,
        settings.max_order_price_cents,
    )
    if isinstance(schema, RawSchema):
        wire = "bare Avro bodies"
    elif writes_single_object(settings):
        wire = "single-object Avro"
    else:
        wire = "schema registry at " + settings.registry_address
    wire += f", {schema.source}"
    console.info(
        f"Producing to {settings.orders_topic} on {settings.bootstrap_servers} ({wire}); "
        f"rate {'unlimited' if options.rate == 0 else f'{options.rate:g}/s'}. Ctrl-C to stop."
    )
    publisher = _Publisher(settings, console, admin, metrics, view)
    try:
        return publisher.run(factory, encoding, options, stop)
    finally:
        publisher.close()


def _replica_watch(producer: Callable[[], Producer], settings: Settings, admin: AdminClient | None) -> ReplicaWatch:
    """In-sync replicas from the producer's metadata, with the topic's minimum read afresh with each answer.

    The minimum comes from DescribeConfigs where it is allowed (an operator may raise
    it), else MIN_INSYNC_REPLICAS. The admin client is asked nothing that needs a
    coordinator.
    """
    return ReplicaWatch(
        lambda: in_sync_replicas(producer(), [settings.orders_topic], admin=admin),
        {},
        settings.min_isr,
        doing="the producer keeps its orders and waits",
        report=lambda line: log.warning("⚠ %s", line),
        monotonic=time.monotonic,
    )


class _Publisher:
    """Produces the factory's records and counts their delivery reports."""

    def __init__(
        self,
        settings: Settings,
        console: Console,
        admin: AdminClient | None = None,
        metrics: ProducerMetrics | None = None,
        view: View[ProducerReading] | None = None,
    ) -> None:
        self._topic = settings.orders_topic
        self._console = console
        self.summary = ProducerSummary()
        self._metrics = metrics
        self._view = view
        self._last_key = b""  # of the last record made, for the view
        # No per-order line to print and no metrics to feed: librdkafka reports failures
        # only, sparing a Python call per record (see `_settle`).
        self._failures_only = console.verbosity == QUIET and metrics is None
        self._producer = create_client(
            Producer,
            {
                **producer_config(settings),
                "on_delivery": self._delivered,
                **({"delivery.report.only.error": True} if self._failures_only else {}),
                **statistics_config(None if metrics is None else metrics.health.on_stats),
            },
        )
        self._replicas = _replica_watch(lambda: self._producer, settings, admin)
        # When a delivery report last arrived, or nothing was waiting for one.
        self._progress_at = time.monotonic()
        self._reported = 0

    def _settle(self) -> None:
        """With failure reports only: delivered is what is neither failed nor still in librdkafka's queue.

        The queue counts the records not yet acknowledged and the reports not yet served:
        until the final flush has served every report, the count is short, never over.
        """
        if self._failures_only:
            summary = self.summary
            summary.delivered = summary.sent - summary.failed - len(self._producer)

    def _watch_replicas(self, now: float) -> None:
        """Asks about the cluster's in-sync replicas once acknowledgements have stopped coming for a while."""
        self._settle()
        reported = self.summary.delivered + self.summary.failed
        if reported != self._reported or not len(self._producer):
            self._progress_at, self._reported = now, reported
            self._replicas.writes_done()
        self._replicas.check(now - self._progress_at)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        """Every record's delivery report (the client's default callback)."""
        if self._metrics is not None:
            self._metrics.delivered(error is None, message.latency())
        if error is None:
            self.summary.delivered += 1
            return
        self.summary.failed += 1
        self._console.error(f"✗ Not delivered: order {_key_label(message)}: {error.str()}")

    def _delivered_shown(self, generated: Generated, error: KafkaError | None, message: Message) -> None:
        """The report of a record whose line is printed: only these get a callback of their own."""
        self._delivered(error, message)
        if error is None:
            self._console.info(
                f"✓ Sent: {_describe(generated)} (partition {message.partition()}, offset {message.offset()})"
            )

    def run(
        self, factory: OrderFactory, encoding: Encoding, options: ProducerOptions, stop: threading.Event
    ) -> ProducerSummary:
        """Publishes until `count` is reached or `stop` is set, then flushes.

        Records are made in slices: the clock is read, delivery reports are served and
        the console is updated once per slice, not once per record.
        """
        summary, console, producer, view = self.summary, self._console, self._producer, self._view
        if self._metrics is not None:
            self._metrics.health.start()
        started = time.monotonic()
        last_count, last_time = 0, started
        while not stop.is_set() and (options.count is None or summary.sent < options.count):
            now = time.monotonic()
            console.tick(now)
            if view is not None and view.due(now):
                view.show(self._reading(now))
            wanted = SLICE if options.rate == 0 else min(SLICE, int((now - started) * options.rate) + 1 - summary.sent)
            if options.count is not None:
                wanted = min(wanted, options.count - summary.sent)
            if wanted <= 0:
                # Ahead of the rate: wait for the next record's time, serving delivery reports.
                # At least a millisecond (librdkafka's unit), so that high rates are paced in
                # small slices instead of a busy loop.
                producer.poll(min(max(started + summary.sent / options.rate - now, PACING_S), 0.2))
                continue
            self._produce_slice(factory, encoding, wanted)
            producer.poll(0)
            self._watch_replicas(now)
            if view is None and console.summary_due(now):
                rate = (summary.sent - last_count) / max(now - last_time, 1e-9)
                last_count, last_time = summary.sent, now
                self._settle()
                console.info(
                    f"[producer] {rate:,.0f} orders/s | sent {summary.sent} | "
                    f"delivered {summary.delivered} | failed {summary.failed}"
                )
        flush_started = time.monotonic()
        undelivered = self._flush(stop)
        self._settle()  # before what never got through is counted as failed
        if undelivered:
            summary.failed += undelivered
            if self._metrics is not None:
                self._metrics.undelivered(undelivered)
            waited = time.monotonic() - flush_started
            console.error(f"✗ {undelivered} orders were still not acknowledged after {waited:.0f}s")
        summary.busy_s = time.monotonic() - started
        if view is not None:
            view.show(self._reading(time.monotonic()))
            view.close()
        console.info(summary.describe())
        console.info(summary.describe_throughput())
        return summary

    def _reading(self, now: float) -> ProducerReading:
        self._settle()
        summary = self.summary
        last = self._last_key.decode("utf-8", errors="replace") or None
        return ProducerReading(now, summary.sent, summary.delivered, summary.failed, last)

    def close(self) -> None:
        """Closes the producer, on every way out of `run` (what the final flush left is dropped)."""
        close_producer(self._producer)

    def _flush(self, stop: threading.Event) -> int:
        """Waits for the last acknowledgements: FLUSH_TIMEOUT_S, or on while the cluster is below min ISR.

        Once Ctrl-C or SIGTERM has come (`stop`, before or during the flush) it waits
        FLUSH_TIMEOUT_S at most: a person or a service manager asked the program to end.
        """
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while True:
            undelivered = self._producer.flush(FLUSH_STEP_S)
            now = time.monotonic()
            if not undelivered:
                return 0
            if self._view is not None and self._view.due(now):
                self._view.show(self._reading(now))
            self._watch_replicas(now)
            if self._replicas.below and not stop.is_set():
                deadline = max(deadline, now + FLUSH_TIMEOUT_S)
            if now >= deadline:
                return int(undelivered)

    def _produce_slice(self, factory: OrderFactory, encoding: Encoding, count: int) -> None:
        """The hot loop: make, encode and produce `count` records.

        The records whose lines are printed come first, one at a time with a delivery
        callback of their own; the rest are made in bulk and reported to `_delivered`.
        """
        producer, topic, summary = self._producer, self._topic, self.summary
        shown = self._console.claim_events(count)
        for _ in range(shown):
            generated = factory.make(encoding.encode)
            self._last_key = generated.key.encode("utf-8")
            callback = functools.partial(self._delivered_shown, generated)
            produce(producer, topic, self._last_key, generated.value, on_delivery=callback)
            summary.by_kind[generated.kind] += 1
            if generated.price_cents is not None:
                summary.valid += RunningAverage(1, generated.price_cents)
        filled = factory.fill(count - shown, encoding.encode, encoding.prefix)
        produce_all(producer, topic, filled.records)
        if filled.records:
            self._last_key = filled.records[-1][0]
        summary.sent += count
        summary.by_kind[Kind.VALID] += filled.valid
        summary.by_kind[Kind.INVALID] += filled.invalid
        summary.by_kind[Kind.POISON] += filled.poison
        summary.valid += RunningAverage(filled.valid, filled.valid_sum_cents)
