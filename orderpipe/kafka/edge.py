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

Transactional calls get a short timeout: one that runs out is a retriable error, and
the committer tries again after a backoff while the loop keeps polling, instead of
the poll thread blocking for long inside librdkafka. Every blocking call also runs
under the watchdog (orderpipe.kafka.watchdog), with WATCHDOG_GRACE_S more than its own
timeout: librdkafka does not always keep to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, denied_sentence
from orderpipe.core.ports import TP, Assigned, EdgeOptions, Event, InSync, Marks, Outgoing, Polled, Revoked, TopicSpec
from orderpipe.errors import ConfigError, DeliveryError, FatalKafkaError, KafkaCallError
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
    produce,
    producer_config,
    statistics_config,
)
from orderpipe.kafka.messages import incoming_records
from orderpipe.kafka.stats_tail import KafkaStatsTail
from orderpipe.kafka.watchdog import UNTIMED_CALL_LIMIT_S, WATCHDOG, WATCHDOG_GRACE_S

__all__ = ["ConfluentEdge", "open_kafka_edge"]

log = logging.getLogger(__name__)

# One transactional call (commit, abort); a longer wait is tried again.
TRANSACTION_CALL_TIMEOUT_S = 5.0
# Sending offsets takes two coordinators: a timeout in its second step makes librdkafka
# abort the transaction, so it gets as long as a transaction may stay open.
SEND_OFFSETS_TIMEOUT_S = 10.0
SEND_OFFSETS_LIMIT_S = SEND_OFFSETS_TIMEOUT_S + WATCHDOG_GRACE_S
# Registering the transactional id: at start-up, before the consumer joins its group.
INIT_TIMEOUT_S = 60.0
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


def _tps(partitions: Collection[TP]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def _offsets(offsets: Mapping[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


def _call(
    what: str,
    action: Callable[[], object],
    needs: str = "a permission",
    *,
    limit_s: float = UNTIMED_CALL_LIMIT_S,
) -> None:
    """Runs a confluent-kafka call under the watchdog; its failure as the project's error.

    A refused permission becomes a ConfigError naming what is `needs`.
    """
    try:
        with WATCHDOG.guard(what, limit_s):
            action()
    except KafkaException as exc:
        error = call_error(exc, what)
        if error.code in AUTHORIZATION_CODES:
            raise ConfigError(denied_sentence(what, needs)) from exc
        raise error from exc


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


class _ConfluentProducer:
    """The producer half of a `ConfluentEdge`: transactions with the consumer's offsets, or produce then flush."""

    _producer: Producer
    _consumer: Consumer
    _on_delivery: Callable[[KafkaError | None, Any], None] | None

    def __init__(self) -> None:
        self._in_transaction = False
        # The group generation the batch was read in; its offsets are sent with it.
        self._group_metadata: Any = None
        self._delivery_errors: list[str] = []
        self._transactional_id = ""
        # A thread still inside a call of the current producer that librdkafka never returned from.
        self._stuck: threading.Thread | None = None

    def init_transactions(self) -> None:
        # librdkafka retries within the call (a coordinator still loading, say).
        _call(
            "start transactions",
            lambda: self._producer.init_transactions(INIT_TIMEOUT_S),
            f"WRITE on transactional id {self._transactional_id}",
            limit_s=INIT_TIMEOUT_S + WATCHDOG_GRACE_S,
        )

    def begin_transaction(self) -> None:
        _call("begin the transaction", self._producer.begin_transaction)
        self._in_transaction = True
        try:
            # A copy, not a handle: the generation as it is now, when the batch was read.
            self._group_metadata = self._consumer.consumer_group_metadata()
        except KafkaException as exc:
            raise call_error(exc, "read the consumer group metadata") from exc

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
        """Sends the batch's offsets with the generation it was read in: after a rebalance they are refused.

        librdkafka 2.16 does not keep to this call's timeout while the group
        coordinator's broker is gone (its issues 5456 and 5511): it may block for
        minutes. So the call runs on a thread of its own, and one still running
        SEND_OFFSETS_LIMIT_S later loses the transaction: the producer is left to that
        thread (never closed under it) and the consumer goes on with a new one
        (`renew_producer`), instead of the watchdog ending the process.
        """
        producer, metadata, what = self._producer, self._group_metadata, "send the offsets"
        failure: list[KafkaException] = []

        def send() -> None:
            try:
                producer.send_offsets_to_transaction(_offsets(offsets), metadata, SEND_OFFSETS_TIMEOUT_S)
            except KafkaException as exc:
                failure.append(exc)

        sending = threading.Thread(target=send, name="send-offsets", daemon=True)
        sending.start()
        sending.join(SEND_OFFSETS_LIMIT_S)
        if sending.is_alive():
            self._stuck = sending
            raise KafkaCallError(
                f"could not {what}: librdkafka did not return within {SEND_OFFSETS_LIMIT_S:g}s", "_STUCK", fatal=True
            )
        if failure:
            error = call_error(failure[0], what)
            if error.code in AUTHORIZATION_CODES:
                raise ConfigError(denied_sentence(what, "a permission")) from failure[0]
            raise error from failure[0]

    def commit_transaction(self) -> None:
        _call(
            "commit the transaction",
            lambda: self._producer.commit_transaction(TRANSACTION_CALL_TIMEOUT_S),
            limit_s=TRANSACTION_CALL_TIMEOUT_S + WATCHDOG_GRACE_S,
        )
        self._in_transaction = False

    def abort_transaction(self) -> None:
        if not self._in_transaction:
            return  # nothing was begun, or it was committed
        _call(
            "abort the transaction",
            lambda: self._producer.abort_transaction(TRANSACTION_CALL_TIMEOUT_S),
            limit_s=TRANSACTION_CALL_TIMEOUT_S + WATCHDOG_GRACE_S,
        )
        self._in_transaction = False

    def flush(self) -> None:
        with WATCHDOG.guard("flush the producer", FLUSH_TIMEOUT_S + WATCHDOG_GRACE_S):
            remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or self._delivery_errors:
            problems = "; ".join(self._delivery_errors[:3]) or f"{remaining} records unacknowledged"
            self._delivery_errors.clear()
            raise DeliveryError(f"records were not acknowledged, so this batch was not committed: {problems}")

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._delivery_errors.append(error.str())

    def commit_offsets(self, offsets: Mapping[TP, int]) -> None:
        try:
            with WATCHDOG.guard("commit the offsets", UNTIMED_CALL_LIMIT_S):
                results = self._consumer.commit(offsets=_offsets(offsets), asynchronous=False) or []
        except KafkaException as exc:
            raise call_error(exc, "commit the offsets") from exc
        for tp in results:
            if tp.error is not None:
                raise call_error(tp.error, f"commit the offset of {tp.topic}-{tp.partition}")


class ConfluentEdge(_ConfluentProducer):
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
        _call(
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
        records = incoming_records(messages, self._retry_topic, errors.consumed)
        events, self._events = tuple(self._events), []
        return Polled(events, records)

    def assign(self, starts: Mapping[TP, int]) -> None:
        _call("assign partitions", lambda: self._consumer.assign(_offsets(starts)))
        self._starts = dict(starts)

    def pause(self, partitions: Collection[TP]) -> None:
        _call("pause partitions", lambda: self._consumer.pause(_tps(partitions)))

    def resume(self, partitions: Collection[TP]) -> None:
        _call("resume partitions", lambda: self._consumer.resume(_tps(partitions)))

    def seek(self, offsets: Mapping[TP, int]) -> None:
        self._starts.update(offsets)
        for tp in _offsets(offsets):
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
                answer = self._consumer.committed(_tps(partitions), timeout=COMMITTED_TIMEOUT_S)
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
        for tp in consumer.position(_tps(partitions)):
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
