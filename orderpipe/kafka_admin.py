"""Broker reachability and topic creation, done once when a program starts."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from config import Settings
from orderpipe.errors import BrokerUnavailableError, ConfigError

__all__ = ["START_BROKER_HINT", "connect_admin", "ensure_topics", "librdkafka_logger"]

START_BROKER_HINT = "start one with 'scripts/broker.sh up' (or 'docker compose up -d') and try again"
CONNECT_TIMEOUT_S = 10.0


def librdkafka_logger() -> logging.Logger:
    """The logger librdkafka's own messages go to; shown only with --verbose."""
    return logging.getLogger("orderpipe.librdkafka")


def unreachable(settings: Settings, detail: str = "") -> BrokerUnavailableError:
    suffix = f" ({detail})" if detail else ""
    return BrokerUnavailableError(
        f"Cannot reach the Kafka broker at {settings.bootstrap_servers}{suffix}: {START_BROKER_HINT}."
    )


def connect_admin(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> AdminClient:
    """An admin client that has proven the broker answers, within `timeout_s`.

    Raises:
        BrokerUnavailableError: naming the address and how to start a broker.
    """
    conf: dict[str, Any] = {**settings.kafka_client_config(), "logger": librdkafka_logger()}
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise unreachable(settings, exc.args[0].str() if exc.args else "") from exc
    return admin


def ensure_topics(admin: AdminClient, settings: Settings, timeout_s: float = 30.0) -> None:
    """Creates the pipeline's topics that are missing, with the configured partitions.

    `orders`, `orders-retry` and `orders-dlq` get ORDERS_PARTITIONS partitions, so
    an order's records land in the partition of the same number everywhere.
    """
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [settings.orders_topic, settings.retry_topic, settings.dlq_topic]
    missing = [
        NewTopic(name, num_partitions=settings.orders_partitions, replication_factor=settings.replication_factor)
        for name in dict.fromkeys(wanted)
        if name not in existing
    ]
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
