"""The consumer's Kafka edge on confluent-kafka (see orderpipe.edge for the protocol).

One `ConfluentEdge` holds a consumer process's clients: the group consumer
(read_committed, offsets never committed automatically), a producer (transactional
for exactly-once) and an admin client, plus a `KafkaStatsTail` that reads the stats
topic. `open_kafka_edge` builds them in an ExitStack, so a failure at any step closes
what was already opened.

Assignments are taken over by the consumer, not by librdkafka: the rebalance callback
records the event and assigns nothing; the consumer restores the partitions' state
and then calls `assign` with the offset each starts at. Every `KafkaException` is
translated here into a `KafkaCallError` (or a FatalKafkaError for a fatal consumer
error), so nothing above this module sees confluent-kafka's types.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from typing import Any, Generic, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from orderpipe.edge import TP, Assigned, EdgeOptions, Event, Outgoing, Polled, Revoked, TopicSpec
from orderpipe.errors import BrokerUnavailableError, DeliveryError, FatalKafkaError
from orderpipe.kafka_clients import (
    CONSUMER_FETCH_SETTINGS,
    call_error,
    connect_admin,
    create_client,
    create_topics,
    partition_counts,
    produce,
    producer_config,
)
from orderpipe.money import RunningAverage
from orderpipe.routing import Incoming
from orderpipe.settings import Settings
from orderpipe.stats import topic_of_key
from orderpipe.stats_view import StatsView

__all__ = ["ConfluentEdge", "KafkaStatsTail", "incoming", "open_kafka_edge", "read_group_stats"]

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 60.0
T = TypeVar("T")
Answer = TypeVar("Answer")
# Right after a commit the coordinator answers the next transaction's first request
# with CONCURRENT_TRANSACTIONS until the commit markers are written (a millisecond or
# two). librdkafka retries after retry.backoff.ms, 100 ms by default, which made every
# transaction wait about that long.
TRANSACTION_RETRY_BACKOFF_MS = 10


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


class _Answer(Generic[T, Answer]):
    """An admin future, its answer mapped and its error translated (a `Pending`)."""

    def __init__(self, future: Future[T], what: str, mapping: Callable[[T], Answer]) -> None:
        self._future, self._what, self._mapping = future, what, mapping

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Answer:
        try:
            return self._mapping(self._future.result())
        except KafkaException as exc:
            raise call_error(exc, self._what) from exc


class KafkaStatsTail:
    """Reads the stats topic's one partition from the beginning, outside any group, read_committed."""

    def __init__(self, settings: Settings, admin: AdminClient) -> None:
        self._admin = admin
        self._tp = TopicPartition(settings.stats_topic, 0)
        self._consumer = create_client(
            Consumer,
            {
                **settings.kafka_client_config(),
                # Required by the client, never joined: the reader is assigned, not subscribed.
                "group.id": f"{settings.consumer_group}.stats-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
        self._consumer.assign([TopicPartition(settings.stats_topic, 0, OFFSET_BEGINNING)])

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Incoming]:
        records = []
        for message in self._consumer.consume(max_records, timeout_s):
            error = message.error()
            if error is None:
                records.append(incoming(message))
            elif error.fatal():
                raise FatalKafkaError(str(call_error(error, f"read {self._tp.topic}")))
        return records

    def end_offset(self) -> _Answer[Any, int]:
        futures = self._admin.list_offsets(
            {self._tp: OffsetSpec.latest()},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_UNCOMMITTED,
            request_timeout=CALL_TIMEOUT_S,
        )
        return _Answer(futures[self._tp], f"find the end of {self._tp.topic}", lambda info: int(info.offset))

    def position(self) -> int:
        return int(self._consumer.position([self._tp])[0].offset)

    def close(self) -> None:
        self._consumer.close()


def _tps(partitions: Collection[TP]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def _offsets(offsets: Mapping[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


class _ErrorLog:
    """The consumer's `error_cb`: keeps a fatal error for the next poll, logs the rest."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self.fatal: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("⚠ Lost the connection to Kafka at %s; retrying ...", self._bootstrap_servers)
        else:
            log.debug("kafka: %s", error.str())


class ConfluentEdge:
    """A `KafkaEdge` on confluent-kafka; build one with `open_kafka_edge`."""

    def __init__(
        self,
        settings: Settings,
        *,
        admin: AdminClient,
        consumer: Consumer,
        producer: Producer,
        stats: KafkaStatsTail,
        errors: _ErrorLog,
        transactional: bool,
    ) -> None:
        self._admin, self._consumer, self._producer = admin, consumer, producer
        self._stats, self._errors = stats, errors
        self._group = settings.consumer_group
        self._retry_topic = settings.retry_topic
        # Without transactions, each produced record reports its delivery here.
        self._on_delivery = None if transactional else self._delivered
        self._delivery_errors: list[str] = []
        self._events: list[Event] = []

    @property
    def stats(self) -> KafkaStatsTail:
        return self._stats

    def partition_counts(self) -> dict[str, int]:
        return partition_counts(self._admin)

    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        create_topics(self._admin, specs)

    def subscribe(self, topics: Sequence[str]) -> None:
        self._consumer.subscribe(
            list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Assign nothing yet (an empty assign keeps librdkafka from assigning at the
        # committed offsets itself): the consumer assigns once it restored the state.
        self._events.append(Assigned(tuple((tp.topic, tp.partition) for tp in partitions)))
        consumer.assign([])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._events.append(Revoked(tuple((tp.topic, tp.partition) for tp in partitions)))

    def poll(self, max_records: int, timeout_s: float) -> Polled:
        messages = self._consumer.consume(max_records, timeout_s)
        if self._errors.fatal is not None:
            raise FatalKafkaError(f"Kafka reported a fatal error: {self._errors.fatal.str()}")
        records = []
        retry_topic = self._retry_topic
        for message in messages:
            error = message.error()
            if error is None:
                records.append(incoming(message, retry_topic))
            elif error.fatal():
                raise FatalKafkaError(f"Kafka reported a fatal error: {error.str()}")
            else:
                log.debug("consumer error: %s", error.str())
        events, self._events = tuple(self._events), []
        return Polled(events, records)

    def assign(self, starts: Mapping[TP, int]) -> None:
        self._consumer.assign(_offsets(starts))

    def pause(self, partitions: Collection[TP]) -> None:
        self._consumer.pause(_tps(partitions))

    def resume(self, partitions: Collection[TP]) -> None:
        self._consumer.resume(_tps(partitions))

    def seek(self, offsets: Mapping[TP, int]) -> None:
        for tp in _offsets(offsets):
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:
                raise call_error(exc, f"seek {tp.topic}-{tp.partition} to offset {tp.offset}") from exc

    def committed(self, partitions: Collection[TP]) -> _Answer[Any, dict[TP, int | None]]:
        request = ConsumerGroupTopicPartitions(self._group, _tps(partitions))
        futures = self._admin.list_consumer_group_offsets(
            [request], require_stable=True, request_timeout=CALL_TIMEOUT_S
        )
        return _Answer(futures[self._group], "read the committed offsets", _committed_offsets)

    def lag(self) -> int | None:
        lag = 0
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag += max(high - tp.offset, 0)
        except KafkaException:
            return None
        return lag

    def init_transactions(self) -> None:
        # librdkafka retries within the call (a coordinator still loading, say).
        _call("start transactions", lambda: self._producer.init_transactions(2 * CALL_TIMEOUT_S))

    def begin_transaction(self) -> None:
        _call("begin the transaction", self._producer.begin_transaction)

    def produce(self, records: Sequence[Outgoing]) -> None:
        for record in records:
            produce(
                self._producer,
                record.topic,
                record.key,
                record.value,
                headers=record.headers,
                partition=record.partition,
                on_delivery=self._on_delivery,
            )

    def send_offsets(self, offsets: Mapping[TP, int]) -> None:
        _call(
            "send the offsets",
            lambda: self._producer.send_offsets_to_transaction(
                _offsets(offsets), self._consumer.consumer_group_metadata(), CALL_TIMEOUT_S
            ),
        )

    def commit_transaction(self) -> None:
        _call("commit the transaction", lambda: self._producer.commit_transaction(CALL_TIMEOUT_S))

    def abort_transaction(self) -> None:
        try:
            self._producer.abort_transaction(CALL_TIMEOUT_S)
        except KafkaException as exc:
            error = call_error(exc, "abort the transaction")
            if error.code != "_STATE":  # _STATE: no transaction was open
                raise error from exc

    def flush(self) -> None:
        remaining = self._producer.flush(CALL_TIMEOUT_S)
        if remaining or self._delivery_errors:
            problems = "; ".join(self._delivery_errors[:3]) or f"{remaining} records unacknowledged"
            self._delivery_errors.clear()
            raise DeliveryError(f"records were not acknowledged, so this batch was not committed: {problems}")

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(error.str())

    def commit_offsets(self, offsets: Mapping[TP, int]) -> None:
        try:
            results = self._consumer.commit(offsets=_offsets(offsets), asynchronous=False) or []
        except KafkaException as exc:
            raise call_error(exc, "commit the offsets") from exc
        for tp in results:
            if tp.error is not None:
                raise call_error(tp.error, f"commit the offset of {tp.topic}-{tp.partition}")


def _call(what: str, action: Callable[[], object]) -> None:
    try:
        action()
    except KafkaException as exc:
        raise call_error(exc, what) from exc


def _committed_offsets(answer: ConsumerGroupTopicPartitions) -> dict[TP, int | None]:
    offsets: dict[TP, int | None] = {}
    for tp in answer.topic_partitions or ():
        if tp.error is not None:
            raise KafkaException(tp.error)
        offsets[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    return offsets


def _close_consumer(consumer: Consumer) -> None:
    try:
        consumer.close()
    except KafkaException as exc:
        log.warning("⚠ Closing the consumer failed: %s", call_error(exc, "close the consumer"))


@contextmanager
def open_kafka_edge(settings: Settings, options: EdgeOptions) -> Iterator[ConfluentEdge]:
    """Connects a consumer process's clients; closes them when the block ends.

    Raises:
        BrokerUnavailableError: the broker does not answer (named, with how to start one).
        ConfigError: librdkafka rejected the client settings.
    """
    with ExitStack() as stack:
        admin = connect_admin(settings)
        stats = KafkaStatsTail(settings, admin)
        stack.callback(stats.close)
        conf = producer_config(settings)
        if options.transactional_id is not None:
            conf |= {
                "transactional.id": options.transactional_id,
                "transaction.timeout.ms": options.transaction_timeout_ms,
                "retry.backoff.ms": TRANSACTION_RETRY_BACKOFF_MS,
            }
        producer = create_client(Producer, conf)
        stack.callback(producer.flush, CALL_TIMEOUT_S)
        errors = _ErrorLog(settings.bootstrap_servers)
        consumer = create_client(
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
                "error_cb": errors,
            },
        )
        stack.callback(_close_consumer, consumer)
        yield ConfluentEdge(
            settings,
            admin=admin,
            consumer=consumer,
            producer=producer,
            stats=stats,
            errors=errors,
            transactional=options.transactional_id is not None,
        )


def read_group_stats(settings: Settings) -> dict[str, RunningAverage]:
    """Every input partition's committed state, read from the stats topic up to its end (the --stats view).

    Raises:
        BrokerUnavailableError: the broker is unreachable or the end was not reached.
    """
    admin = connect_admin(settings)
    if settings.stats_topic not in partition_counts(admin):
        return {}
    tail = KafkaStatsTail(settings, admin)
    try:
        view = StatsView(tail, settings.stats_topic)
        catch_up = view.catch_up()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not catch_up.advance(timeout_s=0.1):
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"could not read {settings.stats_topic} to its end within {CATCH_UP_TIMEOUT_S:g}s; a consumer's "
                    "transaction on it may still be open"
                )
    finally:
        tail.close()
    wanted = (settings.orders_topic, settings.retry_topic)
    return {key: state for key, state in sorted(view.table.states.items()) if topic_of_key(key) in wanted}
