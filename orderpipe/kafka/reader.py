"""Reading a whole topic once, from its beginning to its end as of now (the DLQ tool's reader).

Outside any group (the group id is only what the client requires: nothing is ever
committed, and no permission on the group is needed), read_committed, every partition
from its first offset up to its last stable offset at the start. The end is judged by
the reader's position, which moves past transaction markers and aborted records, not
by the offsets of the records it returns. Reading that stops moving on for READ_TIMEOUT_S is an error, named.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, denied_sentence
from orderpipe.errors import BrokerUnavailableError, ConfigError
from orderpipe.kafka.clients import call_error, create_client
from orderpipe.kafka.messages import incoming
from orderpipe.kafka.watchdog import WATCHDOG, WATCHDOG_GRACE_S
from orderpipe.model.records import Incoming

__all__ = ["read_to_end"]

READ_TIMEOUT_S = 60.0
POLL_S = 0.5
BATCH = 1000


def read_to_end(settings: Settings, topic: str, reader: str) -> Iterator[Incoming]:
    """Every committed record of `topic` up to its end as of the call, partition by partition as they come.

    Args:
        reader: names the client's group id, `<consumer group>.<reader>` (never joined).

    Raises:
        ConfigError: the principal may not read the topic.
        BrokerUnavailableError: reading stopped moving on before the end.
    """
    consumer = create_client(
        Consumer,
        {
            **settings.kafka_client_config(),
            "group.id": f"{settings.consumer_group}.{reader}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        },
    )
    try:
        yield from _read(consumer, topic)
    finally:
        consumer.close()


def _read(consumer: Consumer, topic: str) -> Iterator[Incoming]:
    try:
        metadata = consumer.list_topics(topic, timeout=READ_TIMEOUT_S).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        # A read_committed client's watermark query answers the last stable offset.
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=READ_TIMEOUT_S)[1]
            for p in metadata.partitions
        }
    except KafkaException as exc:
        failure = call_error(exc, f"read {topic}")
        if failure.code in AUTHORIZATION_CODES:
            raise ConfigError(denied_sentence(f"read {topic}", f"READ on topic {topic}")) from exc
        raise BrokerUnavailableError(str(failure)) from exc
    pending = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
    deadline = time.monotonic() + READ_TIMEOUT_S
    while pending:
        with WATCHDOG.guard(f"read {topic}", POLL_S + WATCHDOG_GRACE_S):
            messages = consumer.consume(BATCH, POLL_S)
        for message in messages:
            error = message.error()
            if error is not None:
                failure = call_error(error, f"read {topic}")
                if failure.code == "GROUP_AUTHORIZATION_FAILED":
                    continue  # librdkafka looks up the group's coordinator anyway; the reader needs no group
                if failure.code in AUTHORIZATION_CODES:
                    raise ConfigError(denied_sentence(f"read {topic}", f"READ on topic {topic}"))
                raise BrokerUnavailableError(str(failure))
            partition, offset = message.partition(), message.offset()
            if partition in pending and offset is not None and offset < ends[partition]:
                yield incoming(message)
        positions = consumer.position([TopicPartition(topic, p) for p in pending])
        done = {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
        if messages or done:
            deadline = time.monotonic() + READ_TIMEOUT_S
        pending -= done
        if pending and time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"reading {topic} stopped before its end for {READ_TIMEOUT_S:g}s (partitions {sorted(pending)})"
            )
