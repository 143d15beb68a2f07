"""The consumer at the edge: reads batches, asks the pure core what to do, and does it.

Per batch (one `consume` call: at most `batch_size` records, or what arrived within the
commit interval):
decide every record (`routing.plan_batch`), then hand the retry and DLQ records, the
new `orders-stats` values of the partitions that changed and the input offsets to a
committer, which makes them durable together: one Kafka transaction by default
(exactly-once), or produce-then-commit (`--delivery at-least-once`).

A transaction never outlives its batch: it is begun and committed between two
`consume` calls, and rebalance callbacks run only inside `consume`, so no
transaction is open when partitions are revoked. An aborted batch rewinds its
partitions to the last committed offsets; the in-memory state was never changed by
it, since a batch's state is applied only once its commit succeeded.

On assignment the consumer reads the committed offsets (which waits for any
transaction still holding offsets of those partitions), then reads `orders-stats` up
to its end, and starts each partition at exactly the offset its restored state
belongs to.

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

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from config import Settings
from orderpipe.codec import OrderDecoder, load_order_schema
from orderpipe.committers import AtLeastOnceCommitter, Committer, Outgoing, TransactionalCommitter
from orderpipe.console import Console, throughput_line
from orderpipe.errors import BatchAbortedError, BrokerUnavailableError, FatalKafkaError
from orderpipe.instance import InstanceSlot, claim_slot
from orderpipe.kafka_clients import CONSUMER_FETCH_SETTINGS, connect_admin, create_client, ensure_topics
from orderpipe.latency import LatencyHistogram
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
from orderpipe.stats import encode_stats, group_total, stats_key
from orderpipe.stats_reader import StatsReader

__all__ = [
    "AT_LEAST_ONCE",
    "EXACTLY_ONCE",
    "ConsumerOptions",
    "ConsumerSummary",
    "Downstream",
    "OrderConsumer",
    "incoming",
    "simulated_outage",
]

# The work done for a valid order after validation (a simulated downstream call in
# this project); raising any exception makes the order a transient failure.
Downstream = Callable[[ValidOrder], None]
EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
# Before the first partition assignment, --idle-exit waits this much longer: joining
# the group (and, on a new broker, creating __consumer_offsets) is not idleness.
JOIN_GRACE_S = 30.0
ASSIGN_TIMEOUT_S = 60.0
# Aborted batches in a row before the consumer gives up: the same failure each time
# (a record the broker refuses, say) would otherwise repeat forever.
MAX_ABORTS_IN_A_ROW = 5
DEFAULT_COMMIT_INTERVAL_MS = {EXACTLY_ONCE: 100, AT_LEAST_ONCE: 5}

TP = tuple[str, int]


@dataclass(frozen=True)
class ConsumerOptions:
    """How the consumer runs; the defaults are what consumer.py uses.

    Attributes:
        batch_size: the most records one batch (and so one transaction) holds.
        commit_interval_ms: the longest a batch waits to fill before it is committed:
            the transaction interval. None takes the delivery mode's default
            (DEFAULT_COMMIT_INTERVAL_MS): a transaction costs a few milliseconds of
            round trips, an offset commit much less.
        session_timeout_ms: how soon the group notices a consumer that died without
            leaving, and gives its partitions to the others.
        transaction_timeout_ms: how long the broker keeps a dead consumer's open
            transaction before aborting it (a restart on the same machine aborts it
            at once; see `orderpipe.instance`).
    """

    idle_exit_s: float | None = None
    batch_size: int = 10_000
    commit_interval_ms: int | None = None
    delivery: str = EXACTLY_ONCE
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    transaction_timeout_ms: int = 10_000
    report_latency: bool = False

    @property
    def commit_interval_s(self) -> float:
        interval = self.commit_interval_ms
        return (DEFAULT_COMMIT_INTERVAL_MS[self.delivery] if interval is None else interval) / 1000


@dataclass
class ConsumerSummary:
    processed: int = 0
    retried: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    aborted: int = 0
    # Group-wide: every partition's committed state, this consumer's own included.
    average: RunningAverage = field(default_factory=RunningAverage)
    # Records in committed batches, and the time from the first batch's start to the last one's commit.
    handled: int = 0
    busy_s: float = 0.0

    def describe_throughput(self) -> str:
        return throughput_line(self.handled, "records", self.busy_s, "from the first batch to the last commit")

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
    raw = message.headers()
    topic = message.topic() or ""
    return Incoming(
        topic,
        message.partition() or 0,
        message.offset() or 0,
        message.timestamp()[1],
        message.key(),
        message.value(),
        _headers(raw) if raw else (),
        topic == retry_topic,
    )


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, v.encode() if isinstance(v, str) else v or b"") for k, v in pairs)


class OrderConsumer:
    """The consumer loop; construct, then `run` until stopped or idle.

    Args:
        downstream: called for every valid order; an exception is a transient failure.
        clock: epoch seconds (time.time); injectable so tests can steer due times.
        on_decision: called with each decision after its batch was committed.
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
        self._input_topics = (settings.orders_topic, settings.retry_topic)
        self._paused: dict[TP, int] = {}  # retry partition -> due time (epoch ms)
        # Per owned input partition: the state and the next offset of the last commit.
        self._owned: dict[TP, RunningAverage] = {}
        self._committed_offsets: dict[TP, int] = {}
        self._fatal: KafkaError | None = None
        self._aborts_in_a_row = 0
        self._last_activity = clock()
        self._assigned_once = False
        self.summary = ConsumerSummary()
        self._latency = LatencyHistogram() if options.report_latency else None

    def _process(self, record: Incoming) -> ValidOrder:
        order = validate(self._decoder.decode(record.value), self._max_price_cents)
        self._downstream(order)
        return order

    def run(self, stop: threading.Event) -> ConsumerSummary:
        """Consumes until `stop` is set or the idle limit passes, then closes.

        Raises:
            ConfigError: the Kafka client settings were rejected.
            BrokerUnavailableError, RegistryUnavailableError: at start-up.
            FatalKafkaError: the transactional producer was fenced or failed for good.
            DeliveryError: at-least-once only, a retry or DLQ record was not
                acknowledged (its batch was not committed).
        """
        settings, options = self._settings, self._options
        admin = connect_admin(settings)
        ensure_topics(admin, settings)
        lookup = (
            RegistryLookup(connect_registry(settings.schema_registry_url)) if settings.schema_registry_url else None
        )
        self._decoder = OrderDecoder(load_order_schema(), lookup)
        self._stats = StatsReader(settings, admin, self._console)
        self._consumer = create_client(
            Consumer,
            {
                **settings.kafka_client_config(),
                **CONSUMER_FETCH_SETTINGS,
                "group.id": settings.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": options.session_timeout_ms,
                "max.poll.interval.ms": options.max_poll_interval_ms,
                "error_cb": self._on_error,
            },
        )
        slot: InstanceSlot | None = None
        committer: Committer
        if options.delivery == EXACTLY_ONCE:
            slot = claim_slot(settings.consumer_group)
            committer = TransactionalCommitter(
                settings, self._consumer, slot.transactional_id, options.transaction_timeout_ms
            )
            mode = f"exactly-once, transactional id {slot.transactional_id}"
        else:
            committer = AtLeastOnceCommitter(settings, self._consumer, self._console)
            mode = "at-least-once"
        self._committer = committer
        try:
            committer.start()
            self._consumer.subscribe(
                list(self._input_topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            wire = f"schema registry at {settings.schema_registry_url}" if lookup else "no schema registry"
            self._console.info(
                f"Consuming {', '.join(self._input_topics)} as group {settings.consumer_group} from "
                f"{settings.bootstrap_servers} ({wire}; {mode}). Ctrl-C to stop."
            )
            self._loop(stop)
            # Before closing: closing revokes the partitions and drops their state from memory.
            self.summary.average = self.group_total()
        finally:
            # No transaction is open here: each is committed or aborted within its batch.
            try:
                self._consumer.close()
            except KafkaException as exc:
                self._console.error(f"⚠ Closing the consumer failed: {exc}")
            committer.close()
            self._stats.close()
            if slot is not None:
                slot.release()
        self._console.info(self.summary.describe())
        self._console.info(self.summary.describe_throughput())
        if self._latency is not None:
            self._console.info(self._latency.describe())
        return self.summary

    def group_total(self) -> RunningAverage:
        """The group-wide running average: own partitions from memory, the others' from `orders-stats`."""
        own = {stats_key(topic, partition): state for (topic, partition), state in self._owned.items()}
        return group_total(self._stats.latest, own, self._input_topics)

    def _loop(self, stop: threading.Event) -> None:
        last_processed, last_time = 0, self._clock()
        first_batch: float | None = None
        # A batch is read every commit interval: the wait for records is what is left of
        # the interval once the previous batch was handled and committed.
        interval = self._options.commit_interval_s
        batch_started = time.monotonic() - interval
        while not stop.is_set():
            if self._fatal is not None:
                raise FatalKafkaError(f"Kafka reported a fatal error: {self._fatal.str()}")
            now = self._clock()
            self._console.tick(now)
            self._resume_due(now)
            self._stats.poll()
            wait = max(interval - (time.monotonic() - batch_started), 0.0)
            messages = self._consumer.consume(self._options.batch_size, wait)
            batch_started = time.monotonic()
            records = self._records(messages)
            if records:
                self._last_activity = now
                if self._apply(plan_batch(records, int(self._clock() * 1000), self._process, self._policy)):
                    first_batch = now if first_batch is None else first_batch
                    self.summary.handled += len(records)
                    self.summary.busy_s = self._clock() - first_batch
            elif self._idle_for(now):
                self._console.info(f"Nothing arrived and nothing was due for {self._options.idle_exit_s:g}s: exiting.")
                return
            if self._console.summary_due(now):
                rate = (self.summary.processed - last_processed) / max(now - last_time, 1e-9)
                last_processed, last_time = self.summary.processed, now
                self._console.info(self._periodic_line(rate))

    def _records(self, messages: Sequence[Message]) -> list[Incoming]:
        records = []
        paused, retry_topic = self._paused, self._settings.retry_topic
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise FatalKafkaError(f"Kafka reported a fatal error: {error.str()}")
                self._console.debug(f"consumer error: {error.str()}")
                continue
            record = incoming(message, retry_topic)
            if paused and (record.topic, record.partition) in paused:
                continue  # fetched before the pause; it is read again after the resume
            records.append(record)
        return records

    def _idle_for(self, now: float) -> bool:
        limit = self._options.idle_exit_s
        if limit is None or self._paused:
            return False
        return now - self._last_activity >= (limit if self._assigned_once else limit + JOIN_GRACE_S)

    def _apply(self, plan: BatchPlan) -> bool:
        """Commits a batch's effects and reports them; False when its transaction was aborted."""
        outgoing: list[Outgoing] = []
        added: dict[TP, list[int]] = {}  # per partition: [orders, cents] processed in this batch
        for decision in plan.decisions:
            record = decision.record
            if isinstance(decision, Processed):
                tp = (record.topic, record.partition)
                totals = added.get(tp)
                if totals is None:
                    totals = added[tp] = [0, 0]
                totals[0] += 1
                totals[1] += decision.order.price_cents
            else:
                topic = self._settings.retry_topic if isinstance(decision, Retry) else self._settings.dlq_topic
                outgoing.append(Outgoing(topic, record.key, record.value, decision.headers))
        changed = {
            tp: self._owned.get(tp, RunningAverage()) + RunningAverage(count, cents)
            for tp, (count, cents) in added.items()
        }
        # Every partition of the batch gets its stats value, so the offset in it always
        # equals the committed one.
        outgoing.extend(
            Outgoing(
                self._settings.stats_topic,
                stats_key(*tp).encode(),
                encode_stats(changed.get(tp, self._owned.get(tp, RunningAverage())), offset),
            )
            for tp, offset in plan.commits.items()
        )
        if plan.commits:
            offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in plan.commits.items()]
            try:
                self._committer.commit(outgoing, offsets)
            except BatchAbortedError as exc:
                self.summary.aborted += 1
                self._aborts_in_a_row += 1
                if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
                    raise FatalKafkaError(
                        f"{self._aborts_in_a_row} batches in a row were aborted; the last: {exc}"
                    ) from exc
                self._console.error(f"⚠ {exc}; reading the batch again from the last commit")
                self._rewind(list(plan.commits))
                return False
        self._aborts_in_a_row = 0
        before = self.group_total()
        self._owned.update(changed)
        self._committed_offsets.update(plan.commits)
        for deferred in plan.deferred:
            position = TopicPartition(deferred.topic, deferred.partition, deferred.offset)
            self._consumer.pause([position])
            self._consumer.seek(position)
            self._paused[(deferred.topic, deferred.partition)] = deferred.due_ms
        if self._latency is not None:
            self._latency.add(int(self._clock() * 1000), (decision.record.timestamp for decision in plan.decisions))
        self._report(plan.decisions, sum(count for count, _ in added.values()), before)
        return True

    def _rewind(self, partitions: list[TP]) -> None:
        """Seeks partitions back to their last committed offsets after an aborted batch."""
        for topic, partition in partitions:
            if (topic, partition) not in self._owned:
                continue  # taken away by a rebalance; its new owner starts from the commit
            offset = self._committed_offsets.get((topic, partition), OFFSET_BEGINNING)
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                self._console.debug(f"rewind of {topic}-{partition} skipped: {exc}")

    def _report(self, decisions: Sequence[Decision], processed: int, running: RunningAverage) -> None:
        """Counts a committed batch's decisions and prints the lines the console has room for.

        Args:
            processed: how many of the decisions are Processed.
            running: the group-wide state before the batch, for the running average in the lines.
        """
        summary = self.summary
        summary.processed += processed
        if processed < len(decisions):
            for decision in decisions:
                if isinstance(decision, Retry):
                    summary.retried += 1
                elif isinstance(decision, DeadLetter):
                    summary.dead_lettered[decision.reason] += 1
        for decision in decisions[: self._console.claim_events(len(decisions))]:
            running = self._print(decision, running)
        if self._on_decision is not None:
            for decision in decisions:
                self._on_decision(decision)

    def _print(self, decision: Decision, running: RunningAverage) -> RunningAverage:
        """Prints one decision's line; returns the group-wide state after it."""
        console = self._console
        if isinstance(decision, Processed):
            order = decision.order
            running = running.add(order.price_cents)
            console.info(
                f"✓ Processed: Order {order.order_id} → {order.product} → {format_cents(order.price_cents)}\n"
                f"Running Average: {running.describe()}"
            )
        elif isinstance(decision, Retry):
            error = decision.error
            console.info(
                f"⚠ Retrying ({decision.attempt}/{self._policy.max_retries}): Order {decision.record.label} "
                f"({type(error).__name__}: {error})"
            )
        else:
            console.info(f"✗ Sent to DLQ ({decision.reason}): Order {decision.record.label}: {decision.error}")
        return running

    def _resume_due(self, now: float) -> None:
        now_ms = int(now * 1000)
        due = [tp for tp, due_ms in self._paused.items() if due_ms <= now_ms]
        if due:
            self._consumer.resume([TopicPartition(t, p) for t, p in due])
            for tp in due:
                del self._paused[tp]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restores the assigned partitions' state and starts each at the offset that state belongs to."""
        self._last_activity = self._clock()
        self._assigned_once = True
        committed = self._committed(consumer, partitions)
        self._stats.catch_up()
        for tp in committed:
            key = (tp.topic, tp.partition)
            name = stats_key(*key)
            self._owned[key] = self._stats.latest.get(name, RunningAverage())
            if tp.offset < 0 and name in self._stats.next_offsets:
                # The group's offsets expired (or were deleted) but the state survived in
                # the compacted topic: resume where the state ends, not from the start.
                tp.offset = self._stats.next_offsets[name]
            if tp.offset >= 0:
                self._committed_offsets[key] = tp.offset
            else:
                self._committed_offsets.pop(key, None)
        consumer.assign(committed)
        self._console.debug(f"assigned: {', '.join(f'{tp.topic}-{tp.partition}@{tp.offset}' for tp in committed)}")

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The committed offsets, once no open transaction holds offsets of these partitions.

        A read_committed consumer asks for stable offsets, so the broker answers only
        after such a transaction has been committed or aborted.
        """
        deadline = time.monotonic() + ASSIGN_TIMEOUT_S
        while True:
            try:
                result = consumer.committed(partitions, timeout=ASSIGN_TIMEOUT_S)
                errors = [tp.error for tp in result if tp.error is not None]
                if not errors:
                    return list(result)
                detail = errors[0].str()
            except KafkaException as exc:
                detail = str(exc)
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"could not read the committed offsets of the new partitions: {detail}")
            self._console.debug(f"committed offsets not ready ({detail}); asking again")
            time.sleep(0.2)  # back off before asking again

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Forgets revoked (or lost) partitions; their state is re-read from the topic if they come back.

        The memory is dropped, never published into the stats reader: after a lost
        assignment another consumer may already have committed a newer state.
        """
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._owned.pop(key, None)
            self._committed_offsets.pop(key, None)
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
            f"dead-lettered {sum(summary.dead_lettered.values())} | average {self.group_total().describe()} | "
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
