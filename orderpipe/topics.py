"""Which of the pipeline's topics to create, and how (DESIGN section 3), free of Kafka.

`orders` gets ORDERS_PARTITIONS partitions; `orders-retry` and `orders-dlq` get as
many as `orders` really has, so an order's records keep the same partition number on
every topic. `orders-stats` is compacted, with one partition, so one reader sees
every key's latest value in order.
"""

from __future__ import annotations

from collections.abc import Mapping

from orderpipe.edge import TopicSpec
from orderpipe.settings import Settings

__all__ = ["missing_topics"]


def missing_topics(settings: Settings, existing: Mapping[str, int]) -> list[TopicSpec]:
    """The pipeline's topics that are not in `existing` (topic name -> partition count)."""
    partitions = existing.get(settings.orders_topic, settings.orders_partitions)
    wanted = [
        TopicSpec(name, partitions, settings.replication_factor)
        for name in (settings.orders_topic, settings.retry_topic, settings.dlq_topic)
    ]
    wanted.append(TopicSpec(settings.stats_topic, 1, settings.replication_factor, {"cleanup.policy": "compact"}))
    return [spec for spec in wanted if spec.name not in existing]
