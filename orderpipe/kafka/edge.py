"""The consumer's Kafka edge on confluent-kafka (see orderpipe.core.ports for the protocol).

One `ConfluentEdge` holds a consumer process's clients. It starts with an admin
client alone, for the start-up checks and topic creation; `finish_setup` drops it and
opens the clients of the running path: the group consumer (read_committed, offsets
never committed automatically), a producer (transactional for exactly-once) and a
`KafkaStatsTail` that reads the stats topic. No admin request runs while the consumer
does: coordinator-targeted ones (ListConsumerGroupOffsets, DescribeConsumerGroups)
crash librdkafka 2.16 during a coordinator failover (its issues 4605 and 3663), so the
committed offsets are asked of the group consumer and the in-sync replicas of its
metadata. The clients are closed in an ExitStack, whatever way the block ends.

Assignments are taken over by the consumer, not by librdkafka: the rebalance callback
records the event and assigns nothing; the consumer restores the partitions' state
and then calls `assign` with the offset each starts at. Every `KafkaException` is
translated here into a `KafkaCallError` (or a FatalKafkaError for a fatal consumer
error), so nothing above this module sees confluent-kafka's types.

Its producer half, with the transactional calls, is `EdgeProducer`
(orderpipe/kafka/edge_producer.py). Every blocking call runs under the watchdog
(orderpipe.kafka.watchdog), with WATCHDOG_GRACE_S more than its own timeout:
librdkafka does not always keep to it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, denied_sentence
from orderpipe.core.ports import TP, Assigned, EdgeOptions, Event, InSync, Marks, Polled, Revoked, TopicSpec
from orderpipe.errors import ConfigError, FatalKafkaError
from orderpipe.kafka.admin import (
    Answered,
    create_topics,
    in_sync_replicas,
    partition_counts,
    permissions,
    replication_factors,
    topic_configs,
)
from orderpipe.kafka.clients import (
    CONSUMER_FETCH_SETTINGS,
    FLUSH_TIMEOUT_S,
    call_error,
    close_producer,
    connect_admin,
    create_client,
    guarded_call,
    partition_offsets,
    producer_config,
    statistics_config,
    topic_partitions,
)
from orderpipe.kafka.edge_producer import EdgeProducer
from orderpipe.kafka.messages import incoming_runs
from orderpipe.kafka.stats_tail import KafkaStatsTail
from orderpipe.kafka.watchdog import UNTIMED_CALL_LIMIT_S, WATCHDOG, WATCHDOG_GRACE_S

__all__ = ["ConfluentEdge", "open_kafka_edge"]

log = logging.getLogger(__name__)

# Asking a partition's leader for its end (before --idle-exit ends the run).
UNREAD_TIMEOUT_S = 2.0
# Reading the committed offsets: a longer wait (a coordinator away) is asked again by the restorer.
COMMITTED_TIMEOUT_S = 5.0
# Right after a commit the coordinator answers the next transaction's first request
# with CONCURRENT_TRANSACTIONS until the commit markers are written (a millisecond or
# two). librdkafka retries after retry.backoff.ms, 100 ms by default, which made every
# transaction wait about that long.
TRANSACTION_RETRY_BACKOFF_MS = 10
# librdkafka's default: the five requests in flight an idempotent producer may have.
TRANSACTIONAL_IN_FLIGHT = 5


class _ErrorLog:
    """The consumer's errors: a fatal one is kept for the next poll, others are logged once each."""

    def __init__(self, bootstrap_servers: str, group: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._group = group
        self.fatal: KafkaError | None = None
        self.denied: str | None = None  # a permission Kafka refused, as a sentence
        self._last = ""

    def __call__(self, error: KafkaError) -> None:
        """The `error_cb`: errors of the client as a whole."""
        if error.fatal():
            self.fatal = error
        elif error.name() == "GROUP_AUTHORIZATION_FAILED":
            self.denied = denied_sentence(f"join group {self._group}", f"READ on group {self._group}")
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("⚠ Lost the connection to Kafka at %s; retrying ...", self._bootstrap_servers)
        else:
            log.debug("kafka: %s", error.str())

    def consumed(self, error: KafkaError, topic: str | None) -> None:
        """An error delivered among the records (a topic not available, an authorization failure)."""
        if error.fatal():
            raise FatalKafkaError(f"Kafka reported a fatal error: {error.str()}")
        if error.name() in AUTHORIZATION_CODES:
            raise ConfigError(denied_sentence(f"read {topic or 'a topic'}", f"READ on topic {topic or 'it'}"))
        text = error.str()
        if text != self._last:  # the same error comes with every fetch; say it once
            log.warning("⚠ Kafka: %s", text)
            self._last = text


class ConfluentEdge(EdgeProducer):
    """A `KafkaEdge` on confluent-kafka; build one with `open_kafka_edge`."""

    def __init__(self, settings: Settings, options: EdgeOptions, admin: AdminClient, closing: ExitStack) -> None:
        super().__init__()
        self._settings, self._options, self._closing = settings, options, closing
        self._admin: AdminClient | None = admin
        self._transactional_id = options.transactional_id or ""
        self._group = settings.consumer_group
        self._retry_topic = settings.retry_topic
        # Without transactions, each produced record reports its delivery.
        self._on_delivery = None if options.transactional_id else self._delivered
        self._events: list[Event] = []
        # Where each assigned partition's reading started (assign) or was moved to (seek).
        self._starts: dict[TP, int] = {}
        self._errors = _ErrorLog(settings.bootstrap_servers, settings.consumer_group)
        self._stats: KafkaStatsTail | None = None

    @property
    def stats(self) -> KafkaStatsTail:
        assert self._stats is not None, "the stats topic is read once the set-up is finished"
        return self._stats

    @property
    def admin(self) -> AdminClient:
        assert self._admin is not None, "the admin client is for the start-up checks only"
        return self._admin

    def partition_counts(self) -> dict[str, int]:
        return partition_counts(self.admin)

    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        create_topics(self.admin, specs)

    def replication_factors(self) -> dict[str, int]:
        return replication_factors(self.admin)

    def topic_configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        return topic_configs(self.admin, names)

    def permissions(self, topics: Sequence[str], group: str) -> dict[tuple[str, str], frozenset[str] | None]:
        return permissions(self.admin, topics, group)

    def finish_setup(self) -> None:
        """Drops the admin client (every answer of it was awaited) and opens the running path's clients."""
        self._admin = None
        settings, options, closing = self._settings, self._options, self._closing
        self._stats = KafkaStatsTail(settings)
        closing.callback(self._stats.close)
        self._producer = create_client(Producer, self._producer_conf())
        closing.callback(lambda: _flush_and_close(self._producer))
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
                "error_cb": self._errors,
                **statistics_config(options.stats_cb),
            },
        )
        closing.callback(_close_consumer, self._consumer)

    def _producer_conf(self) -> dict[str, Any]:
        conf = producer_config(self._settings)
        options = self._options
        if options.transactional_id is not None:
            conf |= {
                "transactional.id": options.transactional_id,
                "transaction.timeout.ms": options.transaction_timeout_ms,
                # A transaction aborts what an epoch bump would duplicate (see producer_config).
                "max.in.flight.requests.per.connection": TRANSACTIONAL_IN_FLIGHT,
                "retry.backoff.ms": TRANSACTION_RETRY_BACKOFF_MS,
            }
        return conf

    def renew_producer(self) -> None:
        """Replaces a producer that failed for good with a new one (same transactional id); call init_transactions next.

        Nothing of the old one is kept: its open transaction is fenced by the new one's
        registration, and a read_committed reader never sees its records.
        """
        if self._stuck is not None and self._stuck.is_alive():
            # A thread is still inside it: destroying it now would pull it from under that call.
            # The thread holds it, and drops it (librdkafka destroys it there) once the call returns.
            log.debug("leaving the failed producer to the thread stuck in it")
            del self._producer
        else:
            with WATCHDOG.guard("close the failed producer", UNTIMED_CALL_LIMIT_S):
                close_producer(self._producer)
            del self._producer
        self._stuck = None
        self._producer = create_client(Producer, self._producer_conf())
        self._in_transaction = False
        self._delivery_errors.clear()

    def in_sync_replicas(self, topics: Sequence[str]) -> Answered[InSync]:
        return in_sync_replicas(self._consumer, topics)

    def subscribe(self, topics: Sequence[str]) -> None:
        guarded_call(
            f"subscribe to {', '.join(topics)}",
            lambda: self._consumer.subscribe(
                list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            ),
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Assign nothing yet (an empty assign keeps librdkafka from assigning at the
        # committed offsets itself): the consumer assigns once it restored the state.
        self._events.append(Assigned(tuple((tp.topic, tp.partition) for tp in partitions)))
        consumer.assign([])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._events.append(Revoked(tuple((tp.topic, tp.partition) for tp in partitions)))

    def poll(self, max_records: int, timeout_s: float) -> Polled:
        try:
            with WATCHDOG.guard("poll", timeout_s + WATCHDOG_GRACE_S):
                messages = self._consumer.consume(max_records, timeout_s)
        except KafkaException as exc:
            raise call_error(exc, "poll") from exc
        errors = self._errors
        if errors.fatal is not None:
            raise FatalKafkaError(f"Kafka reported a fatal error: {errors.fatal.str()}")
        if errors.denied is not None:
            raise ConfigError(errors.denied)
        runs = incoming_runs(messages, self._retry_topic, errors.consumed)
        events, self._events = tuple(self._events), []
        return Polled(events, runs)

    def assign(self, starts: Mapping[TP, int]) -> None:
        guarded_call("assign partitions", lambda: self._consumer.assign(partition_offsets(starts)))
        self._starts = dict(starts)

    def pause(self, partitions: Collection[TP]) -> None:
        guarded_call("pause partitions", lambda: self._consumer.pause(topic_partitions(partitions)))

    def resume(self, partitions: Collection[TP]) -> None:
        guarded_call("resume partitions", lambda: self._consumer.resume(topic_partitions(partitions)))

    def seek(self, offsets: Mapping[TP, int]) -> None:
        self._starts.update(offsets)
        for tp in partition_offsets(offsets):
            try:
                with WATCHDOG.guard("seek", UNTIMED_CALL_LIMIT_S):
                    self._consumer.seek(tp)
            except KafkaException as exc:
                raise call_error(exc, f"seek {tp.topic}-{tp.partition} to offset {tp.offset}") from exc

    def committed(self, partitions: Collection[TP]) -> Answered[dict[TP, int | None]]:
        """Asked of the group consumer: read_committed, it asks for stable offsets (KIP-447)."""
        what = "read the committed offsets"
        try:
            with WATCHDOG.guard(what, COMMITTED_TIMEOUT_S + WATCHDOG_GRACE_S):
                answer = self._consumer.committed(topic_partitions(partitions), timeout=COMMITTED_TIMEOUT_S)
        except KafkaException as exc:
            return Answered(error=call_error(exc, what))
        offsets: dict[TP, int | None] = {}
        for tp in answer:
            if tp.error is not None:
                return Answered(error=call_error(tp.error, f"read the committed offset of {tp.topic}-{tp.partition}"))
            offsets[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return Answered(offsets)

    def unread(self, partitions: Collection[TP]) -> dict[TP, int] | None:
        return _unread(self._consumer, partitions, self._starts)

    def watermarks(self) -> dict[TP, Marks] | None:
        marks = {}
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                first, end = self._consumer.get_watermark_offsets(tp, cached=True)
                if end >= 0:
                    marks[(tp.topic, tp.partition)] = Marks(max(first, 0), end, tp.offset)
        except KafkaException:
            return None
        return marks


def _unread(consumer: Consumer, partitions: Collection[TP], starts: Mapping[TP, int]) -> dict[TP, int] | None:
    """ConfluentEdge.unread: each partition's end asked of its leader, past the consumer's position.

    librdkafka reports no position (OFFSET_INVALID) for a partition nothing was read
    from since it was assigned or sought: there, the offset it was given (`starts`)
    is where reading stands, else it would count the whole partition as unread and
    --idle-exit would never end the run.
    """
    unread = {}
    try:
        for tp in consumer.position(topic_partitions(partitions)):
            with WATCHDOG.guard("ask for the end of a partition", UNREAD_TIMEOUT_S + WATCHDOG_GRACE_S):
                first, end = consumer.get_watermark_offsets(tp, timeout=UNREAD_TIMEOUT_S, cached=False)
            key = (tp.topic, tp.partition)
            position = tp.offset if tp.offset >= 0 else starts.get(key, first)
            unread[key] = max(end - max(position, first), 0)
    except KafkaException as exc:
        log.debug("could not tell what is left to read: %s", call_error(exc, "ask for the ends"))
        return None
    return unread


def _flush_and_close(producer: Producer) -> None:
    """The last flush as the edge closes, then the close; a failure adds nothing to the error that ended the run."""
    try:
        with WATCHDOG.guard("flush the producer", FLUSH_TIMEOUT_S + WATCHDOG_GRACE_S):
            producer.flush(FLUSH_TIMEOUT_S)
    except KafkaException as exc:
        log.debug("flushing the producer at close failed: %s", call_error(exc, "flush"))
    with WATCHDOG.guard("close the producer", UNTIMED_CALL_LIMIT_S):
        close_producer(producer)


def _close_consumer(consumer: Consumer) -> None:
    try:
        with WATCHDOG.guard("close the consumer", UNTIMED_CALL_LIMIT_S):
            consumer.close()
    except KafkaException as exc:
        log.warning("⚠ Closing the consumer failed: %s", call_error(exc, "close the consumer"))


@contextmanager
def open_kafka_edge(settings: Settings, options: EdgeOptions) -> Iterator[ConfluentEdge]:
    """Connects the admin client for the set-up; the edge's clients are closed when the block ends.

    Raises:
        BrokerUnavailableError: the broker does not answer (named, with how to start one).
        ConfigError: librdkafka rejected the client settings.
    """
    with ExitStack() as closing:
        yield ConfluentEdge(settings, options, connect_admin(settings), closing)
