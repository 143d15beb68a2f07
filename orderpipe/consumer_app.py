"""The consumer at the edge: reads batches, asks the pure core what to do, and does it.

Per batch: decide every record (`routing.plan_batch`), produce the retry and DLQ
records, wait until the broker acknowledged all of them, then commit the input
offsets. A crash anywhere before the commit replays the batch: at-least-once.

Retries never block `orders`: a retry partition whose head record is not yet due is
paused and rewound to that record, and resumed once it is due. The poll loop never
sleeps; `consume` with a short timeout is its only wait.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from config import Settings
from orderpipe.codec import OrderDecoder, load_order_schema
from orderpipe.console import Console
from orderpipe.errors import BrokerUnavailableError, DeliveryError
from orderpipe.kafka_clients import connect_admin, create_client, ensure_topics, produce, producer_config
from orderpipe.money import RunningAverage, format_cents
from orderpipe.order import ValidOrder, validate
from orderpipe.registry import RegistryLookup, connect_registry
from orderpipe.routing import (
    REASON_DESERIALIZATION,
    REASON_RETRIES_EXHAUSTED,
    REASON_VALIDATION,
    BatchPlan,
    DeadLetter,
    Decision,
    Incoming,
    Processed,
    Retry,
    RetryPolicy,
    plan_batch,
)

__all__ = ["ConsumerOptions", "ConsumerSummary", "Downstream", "OrderConsumer", "incoming", "simulated_outage"]

# The work done for a valid order after validation (a simulated downstream call in
# this project); raising any exception makes the order a transient failure.
Downstream = Callable[[ValidOrder], None]
DELIVERY_TIMEOUT_S = 30.0
# Before the first partition assignment, --idle-exit waits this much longer: joining
# the group (and, on a new broker, creating __consumer_offsets) is not idleness.
JOIN_GRACE_S = 30.0
# Commit failures that only mean a rebalance took the partitions away; the new owner
# reads from the last committed offsets, which at-least-once allows.
_REBALANCE_ERRORS = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS}
)


@dataclass(frozen=True)
class ConsumerOptions:
    idle_exit_s: float | None = None
    batch_size: int = 500
    batch_timeout_s: float = 0.1


@dataclass
class ConsumerSummary:
    processed: int = 0
    retried: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    average: RunningAverage = field(default_factory=RunningAverage)

    def describe(self) -> str:
        reasons = ", ".join(
            f"{reason} {self.dead_lettered[reason]}"
            for reason in (REASON_DESERIALIZATION, REASON_VALIDATION, REASON_RETRIES_EXHAUSTED)
        )
        return (
            f"Consumer summary: processed {self.processed}, retried {self.retried}, "
            f"dead-lettered {sum(self.dead_lettered.values())} ({reasons}); "
            f"running average {self.average.describe()} over {self.average.count} orders"
        )


def incoming(message: Message, retry_topic: str | None = None) -> Incoming:
    """A consumed message as plain data for the core (header values as bytes)."""
    _, timestamp = message.timestamp()
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return Incoming(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        timestamp=timestamp,
        key=message.key(),
        value=message.value(),
        headers=tuple((k, v.encode() if isinstance(v, str) else v or b"") for k, v in pairs),
        from_retry_topic=message.topic() == retry_topic,
    )


class OrderConsumer:
    """The consumer loop; construct, then `run` until stopped or idle.

    Args:
        downstream: called for every valid order; an exception is a transient failure.
        clock: epoch seconds (time.time); injectable so tests can steer due times.
        on_decision: called with each decision after its batch was applied.
    """

    def __init__(
        self,
        settings: Settings,
        options: ConsumerOptions,
        console: Console,
        downstream: Downstream,
        *,
        clock: Callable[[], float] = time.time,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        self._settings = settings
        self._options = options
        self._console = console
        self._downstream = downstream
        self._clock = clock
        self._on_decision = on_decision
        self._policy = RetryPolicy(settings.max_retries, settings.retry_backoff_ms, settings.retry_backoff_max_ms)
        self._max_price_cents = settings.max_order_price_cents
        self._paused: dict[tuple[str, int], int] = {}  # retry partition -> due time (epoch ms)
        self._delivery_errors: list[str] = []
        self._fatal: KafkaError | None = None
        self._last_activity = clock()
        self._assigned_once = False
        self.summary = ConsumerSummary()

    def _process(self, record: Incoming) -> ValidOrder:
        order = validate(self._decoder.decode(record.value), self._max_price_cents)
        self._downstream(order)
        return order

    def run(self, stop: threading.Event) -> ConsumerSummary:
        """Consumes until `stop` is set or the idle limit passes, then closes.

        Raises:
            ConfigError: the Kafka client settings were rejected.
            BrokerUnavailableError, RegistryUnavailableError: at start-up.
            DeliveryError: a retry or DLQ record was not acknowledged (its batch was not committed).
        """
        settings = self._settings
        admin = connect_admin(settings)
        ensure_topics(admin, settings)
        lookup = (
            RegistryLookup(connect_registry(settings.schema_registry_url)) if settings.schema_registry_url else None
        )
        self._decoder = OrderDecoder(load_order_schema(), lookup)
        self._producer = create_client(Producer, producer_config(settings))
        self._consumer = create_client(
            Consumer,
            {
                **settings.kafka_client_config(),
                "group.id": settings.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "error_cb": self._on_error,
            },
        )
        topics = [settings.orders_topic, settings.retry_topic]
        self._consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        wire = f"schema registry at {settings.schema_registry_url}" if lookup else "no schema registry"
        self._console.info(
            f"Consuming {', '.join(topics)} as group {settings.consumer_group} from {settings.bootstrap_servers} "
            f"({wire}). Ctrl-C to stop."
        )
        try:
            self._loop(stop)
        finally:
            # Every batch was flushed before its commit, so nothing is pending here
            # unless a batch failed, and then its offsets were not committed anyway.
            try:
                self._consumer.close()
            except KafkaException as exc:
                self._console.error(f"⚠ Closing the consumer failed: {exc}")
        self._console.info(self.summary.describe())
        return self.summary

    def _loop(self, stop: threading.Event) -> None:
        last_processed, last_time = 0, self._clock()
        while not stop.is_set():
            if self._fatal is not None:
                raise BrokerUnavailableError(f"Kafka reported a fatal error: {self._fatal.str()}")
            now = self._clock()
            self._console.tick(now)
            self._resume_due(now)
            messages = self._consumer.consume(self._options.batch_size, self._options.batch_timeout_s)
            records = self._records(messages)
            if records:
                self._last_activity = now
                self._apply(plan_batch(records, int(self._clock() * 1000), self._process, self._policy))
            elif self._idle_for(now):
                self._console.info(f"Nothing arrived and nothing was due for {self._options.idle_exit_s:g}s: exiting.")
                return
            if self._console.summary_due(now):
                rate = (self.summary.processed - last_processed) / max(now - last_time, 1e-9)
                last_processed, last_time = self.summary.processed, now
                self._console.info(self._periodic_line(rate))

    def _records(self, messages: Sequence[Message]) -> list[Incoming]:
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise BrokerUnavailableError(f"Kafka reported a fatal error: {error.str()}")
                self._console.debug(f"consumer error: {error.str()}")
                continue
            if (message.topic(), message.partition()) in self._paused:
                continue  # fetched before the pause; it is read again after the resume
            records.append(incoming(message, self._settings.retry_topic))
        return records

    def _idle_for(self, now: float) -> bool:
        limit = self._options.idle_exit_s
        if limit is None or self._paused:
            return False
        return now - self._last_activity >= (limit if self._assigned_once else limit + JOIN_GRACE_S)

    def _apply(self, plan: BatchPlan) -> None:
        for deferred in plan.deferred:
            tp = TopicPartition(deferred.topic, deferred.partition, deferred.offset)
            self._consumer.pause([tp])
            self._consumer.seek(tp)
            self._paused[(deferred.topic, deferred.partition)] = deferred.due_ms
        produced = 0
        for decision in plan.decisions:
            if isinstance(decision, Retry | DeadLetter):
                topic = self._settings.retry_topic if isinstance(decision, Retry) else self._settings.dlq_topic
                record = decision.record
                produce(
                    self._producer,
                    topic,
                    record.key,
                    record.value,
                    on_delivery=self._on_delivery,
                    headers=decision.headers,
                )
                produced += 1
        if produced:
            remaining = self._producer.flush(DELIVERY_TIMEOUT_S)
            if remaining or self._delivery_errors:
                problems = "; ".join(self._delivery_errors[:3]) or f"{remaining} records unacknowledged"
                raise DeliveryError(
                    f"retry/DLQ records were not acknowledged, so this batch was not committed: {problems}"
                )
        if plan.commits:
            self._commit([TopicPartition(t, p, offset) for (t, p), offset in plan.commits.items()])
        for decision in plan.decisions:
            self._report(decision)

    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Commits synchronously; a failure means the batch is read again (at-least-once), so it warns."""
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False) or []
            errors = [tp.error for tp in results if tp.error is not None]
        except KafkaException as exc:
            errors = [exc.args[0]] if exc.args else []
        for error in errors:
            if error.code() in _REBALANCE_ERRORS:
                self._console.debug(f"commit not accepted after a rebalance: {error.str()}")
            else:
                self._console.error(f"⚠ Commit failed, the batch will be read again: {error.str()}")

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(error.str())

    def _report(self, decision: Decision) -> None:
        summary, console = self.summary, self._console
        if isinstance(decision, Processed):
            order = decision.order
            summary.processed += 1
            summary.average = summary.average.add(order.price_cents)
            console.event(
                f"✓ Processed: Order {order.order_id} → {order.product} → {format_cents(order.price_cents)}\n"
                f"Running Average: {summary.average.describe()}"
            )
        elif isinstance(decision, Retry):
            summary.retried += 1
            error = decision.error
            console.event(
                f"⚠ Retrying ({decision.attempt}/{self._policy.max_retries}): Order {decision.record.label} "
                f"({type(error).__name__}: {error})"
            )
        else:
            summary.dead_lettered[decision.reason] += 1
            console.event(f"✗ Sent to DLQ ({decision.reason}): Order {decision.record.label}: {decision.error}")
        if self._on_decision is not None:
            self._on_decision(decision)

    def _resume_due(self, now: float) -> None:
        now_ms = int(now * 1000)
        due = [tp for tp, due_ms in self._paused.items() if due_ms <= now_ms]
        if due:
            self._consumer.resume([TopicPartition(t, p) for t, p in due])
            for tp in due:
                del self._paused[tp]

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._last_activity = self._clock()
        self._assigned_once = True
        self._console.debug(f"assigned: {', '.join(f'{tp.topic}-{tp.partition}' for tp in partitions)}")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition paused by the application even across an
        # unassign, so one that came back later would never fetch again. Resume it
        # now; its committed offset is the deferred record, which is read again.
        revoked = [tp for tp in partitions if (tp.topic, tp.partition) in self._paused]
        for tp in revoked:
            del self._paused[(tp.topic, tp.partition)]
        if revoked:
            try:
                consumer.resume(revoked)
            except KafkaException as exc:
                self._console.debug(f"resume on revoke: {exc}")

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._console.error(f"⚠ Lost the connection to Kafka at {self._settings.bootstrap_servers}; retrying ...")
        else:
            self._console.debug(f"kafka: {error.str()}")

    def _periodic_line(self, rate: float) -> str:
        summary = self.summary
        return (
            f"[consumer] {rate:,.0f} orders/s | processed {summary.processed} | retried {summary.retried} | "
            f"dead-lettered {sum(summary.dead_lettered.values())} | average {summary.average.describe()} | "
            f"lag {self._lag()}"
        )

    def _lag(self) -> int:
        lag = 0
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag += max(high - tp.offset, 0)
        except KafkaException:
            return -1
        return lag


def simulated_outage(rng: Any, rate: float) -> Downstream:
    """A downstream call that times out with probability `rate` (for `--failure-rate`)."""

    def call(_order: ValidOrder) -> None:
        if rate > 0 and rng.random() < rate:
            raise TimeoutError("inventory service timed out")

    return call
