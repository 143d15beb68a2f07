"""confluent-kafka clients: construction, reachability, topics, producing, and error translation.

Errors from confluent-kafka are translated here, once, into the project's own, so
that a user sees one clear sentence (naming the setting or the address) and not a
traceback, and so that the rest of the package never sees a `KafkaException`.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicCollection
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, require
from orderpipe.core.health import STATS_INTERVAL_MS
from orderpipe.core.ports import InSync, TopicSpec
from orderpipe.core.replicas import parse_min_isr
from orderpipe.core.routing import UNREADABLE_HEADERS, Incoming
from orderpipe.core.topics import PRODUCER_MESSAGE_MAX_BYTES, missing_sentence, missing_topics, partition_warning
from orderpipe.errors import BrokerUnavailableError, ConfigError, DeliveryError, KafkaCallError, OrderPipeError
from orderpipe.kafka.login import Credentials, LoginWatch
from orderpipe.kafka.watchdog import WATCHDOG, WATCHDOG_GRACE_S

__all__ = [
    "CONNECT_TIMEOUT_S",
    "CONSUMER_FETCH_SETTINGS",
    "FLUSH_TIMEOUT_S",
    "START_BROKER_HINT",
    "Answered",
    "call_error",
    "close_producer",
    "connect_admin",
    "create_client",
    "create_topics",
    "ensure_topics",
    "in_sync_replicas",
    "incoming",
    "incoming_records",
    "librdkafka_logger",
    "partition_counts",
    "permissions",
    "produce",
    "producer_config",
    "replication_factors",
    "require_grants",
    "statistics_config",
    "topic_configs",
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
TOPIC_TIMEOUT_S = 30.0
# A producer's final flush waits this long for the last acknowledgements: the consumer's
# at-least-once producer at close, the producer program (longer while the cluster is
# below min.insync.replicas) and the shutdown limit programs/cli.py allows for them.
FLUSH_TIMEOUT_S = 30.0
# A metadata request on the running path (ReplicaWatch): any broker answers it.
METADATA_TIMEOUT_S = 5.0
# connect_admin asks for metadata in steps from this long, doubling up to the second,
# to look at LoginWatch's verdict in between.
CONNECT_STEP_S, CONNECT_STEP_MAX_S = 0.5, 4.0
Client = TypeVar("Client")
T = TypeVar("T")


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


def incoming(message: Message, retry_topic: str | None = None) -> Incoming:
    """A consumed message as plain data for the core (header values as bytes); see `incoming_records`.

    A record whose header names are not all UTF-8 comes without headers, marked
    unreadable (see `_read_headers`).

    Raises:
        KafkaCallError: the message carries an error instead of a record.
    """
    records = incoming_records([message], retry_topic, _message_error)
    return records[0]


def _message_error(error: KafkaError, topic: str | None) -> None:
    raise call_error(KafkaException(error), f"read {topic or 'a topic'}")


def incoming_records(
    messages: list[Message], retry_topic: str | None, on_error: Callable[[KafkaError, str | None], None]
) -> list[Incoming]:
    """`incoming` of each consumed message, in one loop (the consumer's every record comes through here).

    A message that carries an error instead of a record goes to `on_error` with its topic.
    """
    records: list[Incoming] = []
    append = records.append
    for message in messages:
        error = message.error()
        if error is not None:
            on_error(error, message.topic())
            continue
        # Headers are rare on `orders`: a record without them takes no call of its own.
        headers: tuple[tuple[str, bytes], ...]
        try:
            raw = message.headers()
        except Exception:  # SystemError: a header name that is not UTF-8 (see _read_headers)
            headers, unreadable = (), UNREADABLE_HEADERS
        else:
            headers, unreadable = _checked_headers(raw) if raw else ((), "")
        topic = message.topic() or ""
        append(
            _new_tuple(
                Incoming,
                (
                    topic,
                    message.partition() or 0,
                    message.offset() or 0,
                    message.timestamp()[1],
                    message.key(),
                    message.value(),
                    headers,
                    topic == retry_topic,
                    unreadable,
                ),
            )
        )
    return records


_new_tuple = tuple.__new__


def _read_headers(message: Message) -> tuple[tuple[tuple[str, bytes], ...], str]:
    """A message's headers, or none and why they could not be read.

    confluent-kafka (2.16, `c_headers_to_py`) builds each header's (name, value)
    tuple even when the name is not UTF-8, leaving an empty slot where the name
    should be and the decoding error pending. `headers()` then raises SystemError,
    or returns and leaves the error to surface at some later call; reading the
    empty slot would crash the interpreter. So the pending error is brought out at
    once (ctypes' `pythonapi` raises any error pending after a call) and every
    tuple is checked for an empty slot before it is read.
    """
    try:
        raw: Any = message.headers()
    except Exception:  # SystemError
        return (), UNREADABLE_HEADERS
    return _checked_headers(raw)


def _checked_headers(raw: Any) -> tuple[tuple[tuple[str, bytes], ...], str]:
    """What `headers()` returned, once the error it may have left pending and every slot are checked."""
    try:
        if not raw:  # the common case, with nothing to check
            return (), ""
        ctypes.pythonapi.PyErr_Occurred()
        if not all(_filled(pair) for pair in raw):
            return (), UNREADABLE_HEADERS
    except Exception:  # the UnicodeDecodeError left pending
        return (), UNREADABLE_HEADERS
    return tuple((name, value or b"") for name, value in raw), ""


_SLOTS_AT, _SLOT_SIZE = tuple.__basicsize__, tuple.__itemsize__


def _filled(pair: Any) -> bool:
    """Whether every slot of a tuple holds an object (read as addresses, without touching them)."""
    start = id(pair) + _SLOTS_AT
    return all(ctypes.c_void_p.from_address(start + i * _SLOT_SIZE).value for i in range(len(pair)))


class Answered(Generic[T]):
    """A `Pending` whose answer is already in: for a call made blocking, with a short timeout."""

    def __init__(self, value: T | None = None, error: KafkaCallError | None = None) -> None:
        self._value, self._error = value, error

    def done(self) -> bool:
        return True

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def in_sync_replicas(
    client: Any, topics: Sequence[str], timeout_s: float = METADATA_TIMEOUT_S, *, admin: AdminClient | None = None
) -> Answered[InSync]:
    """Each partition of `topics` with its in-sync and all replicas, from a client's metadata.

    `client` is a running producer or consumer: while the cluster fails over, this is
    asked every ReplicaWatch.ASK_EVERY_S, and a metadata request (answered by any
    broker) needs no coordinator. With `admin` (the producer's), each topic's
    min.insync.replicas is read afresh too (DescribeConfigs, answered by any broker;
    left out where denied); without it `InSync.minimums` is empty and the minimums
    read at start stand (the consumer keeps no admin client while it runs).
    """
    counts, replicas = {}, {}
    for topic in topics:
        try:
            with WATCHDOG.guard(f"read the metadata of {topic}", timeout_s + WATCHDOG_GRACE_S):
                metadata = client.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            return Answered(error=call_error(exc, f"read the metadata of {topic}"))
        if metadata is None or metadata.error is not None:
            problem = metadata.error if metadata is not None else "not in the answer"
            return Answered(error=KafkaCallError(f"no metadata for {topic}: {problem}", "_NO_TOPIC"))
        for partition in metadata.partitions.values():
            counts[(topic, int(partition.id))] = len(partition.isrs)
            replicas[(topic, int(partition.id))] = len(partition.replicas)
    minimums: dict[str, int] = {}
    if admin is not None:
        try:
            configs = topic_configs(admin, topics, timeout_s, warn_denied=False)
        except OrderPipeError as exc:  # no answer while the cluster fails over: the known minimums stand
            log.debug("could not read min.insync.replicas: %s", exc)
            configs = {}
        for topic, config in configs.items():
            if (value := parse_min_isr(config.get("min.insync.replicas"))) is not None:
                minimums[topic] = value
    return Answered(InSync(counts, replicas, minimums))


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
    one. The consumer's transactional producer (kafka/edge.py) keeps librdkafka's
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


def partition_counts(admin: AdminClient, timeout_s: float = TOPIC_TIMEOUT_S) -> dict[str, int]:
    """Every topic's partition count."""
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerUnavailableError(str(call_error(exc, "list topics"))) from exc
    return {name: len(metadata.partitions) for name, metadata in topics.items()}


def replication_factors(admin: AdminClient, timeout_s: float = TOPIC_TIMEOUT_S) -> dict[str, int]:
    """Every topic's replication factor: the fewest replicas any of its partitions has."""
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerUnavailableError(str(call_error(exc, "list topics"))) from exc
    return {
        name: min((len(p.replicas) for p in metadata.partitions.values()), default=0)
        for name, metadata in topics.items()
    }


def topic_configs(
    admin: AdminClient, names: Sequence[str], timeout_s: float = TOPIC_TIMEOUT_S, *, warn_denied: bool = True
) -> dict[str, dict[str, str]]:
    """Each named topic's configuration, defaults included (the ones that do not exist are left out).

    One this principal may not read is left out too, with a warning unless `warn_denied` is false.
    """
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    configs: dict[str, dict[str, str]] = {}
    if not resources:
        return configs
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        try:
            entries = future.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"could not read the configuration of topic {resource.name} within {timeout_s:g}s"
            ) from exc
        except KafkaException as exc:
            error = call_error(exc, f"read the configuration of topic {resource.name}")
            if error.code == "UNKNOWN_TOPIC_OR_PART":
                continue
            if error.code in AUTHORIZATION_CODES:
                if warn_denied:
                    log.warning("⚠ %s (DescribeConfigs is not allowed); its configuration is not checked", error)
                continue
            raise BrokerUnavailableError(str(error)) from exc
        configs[resource.name] = {name: entry.value or "" for name, entry in entries.items()}
    return configs


def create_topics(admin: AdminClient, specs: Sequence[TopicSpec], timeout_s: float = TOPIC_TIMEOUT_S) -> None:
    """Creates topics; one that another process created first is fine."""
    if not specs:
        return
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in specs
    ]
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise BrokerUnavailableError(f"could not create topic {name} within {timeout_s:g}s") from exc
        except KafkaException as exc:
            error = call_error(exc, f"create topic {name}")
            if error.code == "TOPIC_ALREADY_EXISTS":
                continue
            if error.code in ("INVALID_REPLICATION_FACTOR", "INVALID_PARTITIONS"):
                raise ConfigError(f"{error} (check ORDERS_PARTITIONS and REPLICATION_FACTOR)") from exc
            if error.code in AUTHORIZATION_CODES:
                spec = next(s for s in specs if s.name == name)
                raise ConfigError(missing_sentence([spec])) from exc
            raise BrokerUnavailableError(str(error)) from exc


def permissions(
    admin: AdminClient, topics: Sequence[str], group: str = "", timeout_s: float = TOPIC_TIMEOUT_S
) -> dict[tuple[str, str], frozenset[str] | None]:
    """The operations this principal may perform on each topic (and the group), as Kafka reports them.

    A topic or group it may not even describe has no operations (Kafka answers so
    for a topic that does not exist, too, so as not to tell); one Kafka says nothing
    about (missing, not answered, or a broker too old to report them) has None.
    """
    answers: dict[tuple[str, str], frozenset[str] | None] = {}
    pending: list[tuple[tuple[str, str], Future[Any]]] = []
    if topics:
        futures = admin.describe_topics(
            TopicCollection(list(topics)), include_authorized_operations=True, request_timeout=timeout_s
        )
        pending += [(("TOPIC", name), future) for name, future in futures.items()]
    if group:
        futures = admin.describe_consumer_groups([group], include_authorized_operations=True, request_timeout=timeout_s)
        pending += [(("GROUP", group), futures[group])]
    for key, future in pending:
        what = f"describe {key[0].lower()} {key[1]}"
        try:
            operations = future.result(timeout=timeout_s).authorized_operations
        except TimeoutError:
            log.debug("could not %s within %gs; its permissions are not checked", what, timeout_s)
            answers[key] = None
            continue
        except KafkaException as exc:
            error = call_error(exc, what)
            # Anything but a refusal (a topic or group that does not exist yet, a group
            # coordinator still loading on a broker just started) leaves it unjudged: the
            # calls that follow say what they need if it is really missing.
            answers[key] = frozenset() if error.code in AUTHORIZATION_CODES else None
            if answers[key] is None:
                log.debug("%s; its permissions are not checked", error)
            continue
        answers[key] = None if operations is None else frozenset(op.name for op in operations)
    return answers


def require_grants(admin: AdminClient, settings: Settings, program: str) -> None:
    """Stops a program at its start when the principal lacks a permission it needs (orderpipe.core.acls).

    Raises:
        ConfigError: naming each missing permission, its resource and its purpose.
    """
    require(settings, program, lambda topics, group: permissions(admin, topics, group))


def ensure_topics(admin: AdminClient, settings: Settings) -> None:
    """The producer's topic set-up: creates the pipeline's missing topics where it may.

    Only the orders topic must exist for the producer; the others are created as a
    convenience (so that one producer run sets up a new cluster) and skipped when
    this principal may not create them.

    Raises:
        ConfigError: the orders topic is missing and may not be created.
    """
    counts = partition_counts(admin)
    if (warning := partition_warning(settings, counts)) is not None:
        log.warning("⚠ %s", warning)
    missing = missing_topics(settings, counts)
    needed = [spec for spec in missing if spec.name == settings.orders_topic]
    if not settings.create_topics:
        if needed:
            raise ConfigError(missing_sentence(needed))
        return
    create_topics(admin, needed)
    try:
        create_topics(admin, [spec for spec in missing if spec.name != settings.orders_topic])
    except ConfigError as exc:  # refused: the consumer's own set-up names what it needs
        log.debug("not creating the consumer's topics: %s", exc)


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
