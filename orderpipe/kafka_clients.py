"""Kafka clients at the edge: construction, reachability, topics and producing.

Errors from confluent-kafka are translated here into the project's own, so that a
user sees one clear sentence (naming the setting or the address) and not a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from config import Settings
from orderpipe.errors import BrokerUnavailableError, ConfigError, DeliveryError

__all__ = [
    "CONSUMER_FETCH_SETTINGS",
    "START_BROKER_HINT",
    "connect_admin",
    "create_client",
    "ensure_topics",
    "librdkafka_logger",
    "produce",
    "producer_config",
]

# Consumer fetching. librdkafka (2.4+) stops fetching a partition for
# fetch.queue.backoff.ms, 1000 ms by default, whenever its local queue holds
# queued.min.messages; a consumer that empties the queue quickly then waits most of
# each second for data (240000 instead of 1.8 million records/s in bench/, bare
# binding). 10 ms keeps the queue fed; 20000 records per partition bounds its memory.
CONSUMER_FETCH_SETTINGS = {"fetch.queue.backoff.ms": 10, "queued.min.messages": 20_000}
START_BROKER_HINT = "start one with 'scripts/broker.sh up' (or 'docker compose up -d') and try again"
CONNECT_TIMEOUT_S = 10.0
Client = TypeVar("Client")


def librdkafka_logger() -> logging.Logger:
    """The logger librdkafka's own messages go to; shown only with --verbose."""
    return logging.getLogger("orderpipe.librdkafka")


def create_client(factory: Callable[[dict[str, Any]], Client], conf: dict[str, Any]) -> Client:
    """Builds a Kafka client; settings librdkafka rejects become a ConfigError.

    librdkafka checks some settings only here (an SSL CA file that does not exist,
    a SASL mechanism without credentials), so this is where they are named.
    """
    try:
        return factory({**conf, "logger": librdkafka_logger()})
    except KafkaException as exc:
        raise ConfigError(
            f"the Kafka client settings were rejected ({exc.args[0].str() if exc.args else exc}); check "
            "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD "
            "and KAFKA_SSL_CA_LOCATION"
        ) from exc


def producer_config(settings: Settings) -> dict[str, Any]:
    """Durable producer settings: every record acknowledged by all in-sync replicas, no duplicates."""
    return {**settings.kafka_client_config(), "acks": "all", "enable.idempotence": True, "linger.ms": 5}


def connect_admin(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> AdminClient:
    """An admin client that has proven the broker answers, within `timeout_s`.

    Raises:
        BrokerUnavailableError: naming the address and how to start a broker.
    """
    admin = create_client(AdminClient, settings.kafka_client_config())
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        detail = exc.args[0].str() if exc.args else str(exc)
        raise BrokerUnavailableError(
            f"Cannot reach the Kafka broker at {settings.bootstrap_servers} ({detail}): {START_BROKER_HINT}."
        ) from exc
    return admin


def ensure_topics(admin: AdminClient, settings: Settings, timeout_s: float = 30.0) -> None:
    """Creates the pipeline's topics that are missing.

    `orders` gets ORDERS_PARTITIONS partitions; `orders-retry` and `orders-dlq` get as
    many as `orders` really has, so an order's records keep the same partition number
    on every topic. `orders-stats` is compacted, with one partition, so one reader
    sees every key's latest value in order.
    """
    existing = admin.list_topics(timeout=timeout_s).topics
    orders = existing.get(settings.orders_topic)
    partitions = len(orders.partitions) if orders is not None else settings.orders_partitions
    wanted = [
        NewTopic(name, num_partitions=partitions, replication_factor=settings.replication_factor)
        for name in (settings.orders_topic, settings.retry_topic, settings.dlq_topic)
    ]
    wanted.append(
        NewTopic(
            settings.stats_topic,
            num_partitions=1,
            replication_factor=settings.replication_factor,
            config={"cleanup.policy": "compact"},
        )
    )
    missing = [topic for topic in wanted if topic.topic not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another process created it first
            if error.code() in (KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.INVALID_PARTITIONS):
                raise ConfigError(
                    f"cannot create topic {name}: {error.str()} (check ORDERS_PARTITIONS and REPLICATION_FACTOR)"
                ) from exc
            raise BrokerUnavailableError(f"cannot create topic {name}: {error.str()}") from exc


def produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    headers: Sequence[tuple[str, bytes]] = (),
    on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
) -> None:
    """Produces one record, serving delivery reports while the local queue is full.

    Without `on_delivery` only the client's default callback (if it has one) runs; a
    transaction's commit reports any record that failed.

    Raises:
        DeliveryError: librdkafka refused the record outright (for example larger
            than message.max.bytes); it never reached the broker.
    """
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, key=key, value=value, headers=list(headers))
            else:
                producer.produce(topic, key=key, value=value, headers=list(headers), on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.1)
        except KafkaException as exc:
            raise DeliveryError(f"could not produce to {topic}: {exc.args[0].str() if exc.args else exc}") from exc
