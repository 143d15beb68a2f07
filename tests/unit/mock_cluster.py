"""librdkafka's built-in mock cluster, for unit tests of the confluent-kafka edge itself.

A client configured with `test.mock.num.brokers` starts a mock Kafka cluster inside
the process, listening on loopback; other clients reach it through its address.
It serves produce and fetch, consumer groups, offsets and transactions, and creates
topics (4 partitions) when a producer asks for their metadata. It does not create
topics through the admin API, nor answer DescribeConfigs, nor keep offsets sent with
a transaction, so tests of those paths run against the real broker (tests/integration);
conftest.py switches the consumer's topic checks off on it.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from orderpipe.config.settings import Settings, build_settings
from tests.audit import pipeline_env

__all__ = ["MockCluster"]


class MockCluster:
    def __init__(self) -> None:
        # The holder keeps the mock cluster alive; its log goes where librdkafka's does.
        self._holder = Producer({"test.mock.num.brokers": 1, "logger": logging.getLogger("orderpipe.librdkafka")})
        brokers = self._holder.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{broker.host}:{broker.port}" for broker in brokers)

    def create_topic(self, name: str) -> int:
        """Creates a topic (by asking for its metadata); returns its partition count."""
        return len(self._holder.list_topics(topic=name, timeout=10).topics[name].partitions)

    def env(self, **values: str) -> dict[str, str]:
        """Settings, as environment variables, for this cluster with fresh topic and group names."""
        env = {**pipeline_env(self.bootstrap, f"mock-{uuid.uuid4().hex[:8]}"), **values}
        for name in ("ORDERS_TOPIC", "RETRY_TOPIC", "DLQ_TOPIC", "STATS_TOPIC"):
            self.create_topic(env[name])
        return env

    def settings(self, **values: str) -> Settings:
        """Settings for this cluster with fresh topic and group names, their topics created."""
        return build_settings(self.env(**values))

    def produce(self, topic: str, partition: int, values: list[bytes], keys: list[bytes] | None = None) -> None:
        """Writes records to one partition, outside any transaction."""
        producer = Producer({"bootstrap.servers": self.bootstrap})
        for index, value in enumerate(values):
            producer.produce(topic, value, keys[index] if keys else None, partition=partition)
        assert producer.flush(10) == 0

    def end(self, topic: str, partition: int) -> int:
        """A partition's high watermark."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "mock-watermarks"})
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        finally:
            consumer.close()
