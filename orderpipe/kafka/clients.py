"""confluent-kafka clients: construction, reachability, producing, and error translation.

Errors from confluent-kafka are translated here, once, into the project's own, so
that a user sees one clear sentence (naming the setting or the address) and not a
traceback, and so that the rest of the package never sees a `KafkaException`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, denied_sentence
from orderpipe.core.health import STATS_INTERVAL_MS
from orderpipe.core.ports import TP
from orderpipe.core.topics import PRODUCER_MESSAGE_MAX_BYTES
from orderpipe.errors import BrokerUnavailableError, ConfigError, DeliveryError, KafkaCallError
from orderpipe.kafka.login import Credentials, LoginWatch
from orderpipe.kafka.watchdog import UNTIMED_CALL_LIMIT_S, WATCHDOG

__all__ = [
    "CONNECT_TIMEOUT_S",
    "CONSUMER_FETCH_SETTINGS",
    "FLUSH_TIMEOUT_S",
    "START_BROKER_HINT",
    "call_error",
    "close_producer",
    "connect_admin",
    "create_client",
    "guarded_call",
    "librdkafka_logger",
    "partition_offsets",
    "produce",
    "produce_all",
    "producer_config",
    "statistics_config",
    "topic_partitions",
]

log = logging.getLogger(__name__)

# Consumer fetching. librdkafka (2.4+) stops fetching a partition for
# fetch.queue.backoff.ms, 1000 ms by default, whenever its local queue holds
# queued.min.messages; a consumer that empties the queue quickly then waits most of
# each second for data (240000 instead of 1.8 million records/s in bench/, bare
# binding). 10 ms keeps the queue fed; 20000 records per partition bounds its memory.
CONSUMER_FETCH_SETTINGS = {"fetch.queue.backoff.ms": 10, "queued.min.messages": 20_000}
START_BROKER_HINT = "start one with 'scripts/broker.sh up' (or 'docker compose up -d') and try again"
CONNECT_TIMEOUT_S = 10.0
# A producer's final flush waits this long for the last acknowledgements: the consumer's
# at-least-once producer at close, the producer program (longer while the cluster is
# below min.insync.replicas) and the shutdown limit programs/cli.py allows for them.
FLUSH_TIMEOUT_S = 30.0
# connect_admin asks for metadata in steps from this long, doubling up to the second,
# to look at LoginWatch's verdict in between.
CONNECT_STEP_S, CONNECT_STEP_MAX_S = 0.5, 4.0
Client = TypeVar("Client")


def librdkafka_logger() -> logging.Logger:
    """The logger librdkafka's own messages go to (the clients' `logger` setting)."""
    return logging.getLogger("orderpipe.librdkafka")


# The process's watch on failed logins: every client made by `create_client` reports to it.
_LOGIN_WATCH = LoginWatch()


class _LogRelay:
    """The clients' `logger`: each librdkafka log line goes to the login watch, then to logging."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        _LOGIN_WATCH.report_log(fmt % args)
        librdkafka_logger().log(level, fmt, *args)


def _relay_errors(error_cb: Callable[[KafkaError], None] | None) -> Callable[[KafkaError], None]:
    def report(error: KafkaError) -> None:
        _LOGIN_WATCH.report(error.str())
        if error_cb is not None:
            error_cb(error)

    return report


def _credentials(conf: dict[str, Any]) -> Credentials:
    return Credentials(
        str(conf.get("security.protocol", "PLAINTEXT")).upper(),
        str(conf.get("sasl.mechanism", conf.get("sasl.mechanisms", ""))).upper(),
        str(conf.get("ssl.ca.location", "")),
        str(conf.get("ssl.certificate.location", "")),
        str(conf.get("sasl.oauthbearer.token.endpoint.url", "")),
    )


def call_error(failure: KafkaException | KafkaError, what: str) -> KafkaCallError:
    """A failed confluent-kafka call as the project's error, with Kafka's verdict on it."""
    error = failure.args[0] if isinstance(failure, KafkaException) and failure.args else failure
    if not isinstance(error, KafkaError):
        return KafkaCallError(f"could not {what}: {failure}", "_UNKNOWN")
    return KafkaCallError(
        f"could not {what}: {error.str()}",
        error.name(),
        retriable=bool(error.retriable()),
        abortable=bool(error.txn_requires_abort()),
        fatal=bool(error.fatal()),
    )


def topic_partitions(partitions: Collection[TP]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def partition_offsets(offsets: Mapping[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]


def guarded_call(
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


def create_client(factory: Callable[[dict[str, Any]], Client], conf: dict[str, Any]) -> Client:
    """Builds a Kafka client; settings librdkafka rejects become a ConfigError.

    librdkafka checks some settings only here (an SSL CA file that does not exist,
    a SASL mechanism without credentials), so this is where they are named. The
    client reports its errors and log lines to the login watch.
    """
    try:
        return factory({**conf, "logger": _LogRelay(), "error_cb": _relay_errors(conf.get("error_cb"))})
    except KafkaException as exc:
        raise ConfigError(
            f"the Kafka client settings were rejected ({call_error(exc, 'create a client')}); check "
            "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD "
            "and KAFKA_SSL_CA_LOCATION"
        ) from exc


def statistics_config(stats_cb: Callable[[str], None] | None) -> dict[str, Any]:
    """librdkafka's statistics every STATS_INTERVAL_MS to `stats_cb` (metrics on); without one, nothing."""
    return {} if stats_cb is None else {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": stats_cb}


def producer_config(settings: Settings) -> dict[str, Any]:
    """Durable producer settings: every record acknowledged by all in-sync replicas, no duplicates.

    One request in flight per broker connection. With more, librdkafka 2.16's
    idempotent producer answers a request refused because a failed request before it
    left a gap in the sequence numbers (a leader change does that) by bumping its
    epoch, and then resends batches that may have been written already as new
    records under the new epoch: its issue 4953, whose fix (PR 4972) is in no
    release. It is the path in its source that writes an acknowledged record twice
    with no error reported, and the cluster tests' rolling restart once wrote 11
    orders twice with five requests in flight. With one, no request follows a failed
    one. The consumer's transactional producer (orderpipe/kafka/edge.py) keeps librdkafka's
    default: an epoch bump there aborts the transaction, and read_committed readers
    never see what it wrote.
    """
    return {
        **settings.kafka_client_config(),
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": 5,
        "message.max.bytes": PRODUCER_MESSAGE_MAX_BYTES,
    }


def connect_admin(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> AdminClient:
    """An admin client that has proven the broker answers, within `timeout_s`.

    Raises:
        ConfigError: the broker answers but will not let this client in, or speaks
            another protocol (a wrong password, token or certificate, TLS against
            plaintext): one sentence from `login.diagnose`, naming the setting to check.
        BrokerUnavailableError: naming the address and how to start a broker.
    """
    conf = settings.kafka_client_config()
    _LOGIN_WATCH.expect(_credentials(conf))
    admin = create_client(AdminClient, conf)
    deadline = time.monotonic() + timeout_s
    step = CONNECT_STEP_S
    while True:
        try:
            # One topic's metadata: an answer as small as a cluster of any size can give.
            admin.list_topics(topic=settings.orders_topic, timeout=min(step, max(deadline - time.monotonic(), 0.01)))
            return admin
        except KafkaException as exc:
            admin.poll(0)  # serves the error callback
            if (verdict := _LOGIN_WATCH.verdict) is not None:
                raise ConfigError(f"Cannot connect to Kafka: {verdict}.") from None
            if time.monotonic() >= deadline:
                if (verdict := _LOGIN_WATCH.closed_verdict()) is not None:
                    raise ConfigError(f"Cannot connect to Kafka: {verdict}.") from None
                raise BrokerUnavailableError(
                    f"Cannot reach the Kafka broker at {settings.bootstrap_servers} "
                    f"({call_error(exc, 'list topics')}): {START_BROKER_HINT}."
                ) from exc
            step = min(step * 2, CONNECT_STEP_MAX_S)


def close_producer(producer: Producer) -> None:
    """Closes a producer whose last flush is done: what it still holds is dropped, not waited for again.

    (`Producer.close` would flush once more, for up to 30 s, records the flush already gave up on.)
    """
    try:
        producer.purge()
        producer.close()
    except (KafkaException, RuntimeError) as exc:  # RuntimeError: closed already
        log.debug("closing the producer: %s", exc)


def produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    headers: Sequence[tuple[str, bytes]] = (),
    partition: int | None = None,
    on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
) -> None:
    """Produces one record, serving delivery reports while the local queue is full.

    This is the one place that waits for room in the queue. Without `on_delivery`
    only the client's default callback (if it has one) runs; a transaction's commit
    reports any record that failed.

    Raises:
        DeliveryError: librdkafka refused the record outright (for example larger
            than message.max.bytes); it never reached the broker.
    """
    extra: dict[str, Any] = {} if partition is None else {"partition": partition}
    if on_delivery is not None:
        extra["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=list(headers), **extra)
            return
        except BufferError:
            producer.poll(0.1)
        except KafkaException as exc:
            raise DeliveryError(str(call_error(exc, f"produce to {topic}"))) from exc


def poll_for(client: Producer | AdminClient, seconds: float) -> None:
    """Serves the client's callbacks for `seconds`: a backoff that is not a sleep.

    `poll` returns as soon as it served a callback (a log line, say), so it is called
    again with what is left until the time is up; it answers 0 when it waited it out.
    """
    end = time.monotonic() + seconds
    left = seconds
    while client.poll(left) and (left := end - time.monotonic()) > 0:
        pass


def produce_all(producer: Producer, topic: str, records: Sequence[tuple[bytes, bytes | None]]) -> None:
    """Produces (key, value) records by key, with no callback of their own: the producer program's hot loop.

    Each record costs one plain call to librdkafka; only one it does not take at once
    (a full local queue, or a record refused) goes through `produce`, which waits out
    the queue and names a refused record.

    Raises:
        DeliveryError: librdkafka refused a record outright (see `produce`).
    """
    send = producer.produce
    for key, value in records:
        try:
            send(topic, value, key)
        except (BufferError, KafkaException):
            produce(producer, topic, key, value)
