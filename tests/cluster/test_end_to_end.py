"""The programs on the three-node cluster, where topic auto-creation is off (scripts/cluster_broker.sh).

As a user runs them, producer.py first and then consumer.py, in each wire format:
the programs create the four topics themselves, replicated 3 with
min.insync.replicas=2, and every order is counted exactly. The stock single-node
broker (auto-creation on) runs the same check: tests/integration/test_stock_broker.py.
"""

from __future__ import annotations

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

from tests.cluster.failover import cluster_pipeline
from tests.cluster.helpers import BOOTSTRAP, admin
from tests.integration.helpers import (
    WIRE_FORMATS,
    Pipeline,
    partition_counts,
    produce_then_consume,
    wire_format_env,
    written_in,
)

pytestmark = pytest.mark.timeout(300)

ORDERS = 1000


def topics_of(pipeline: Pipeline) -> list[str]:
    settings = pipeline.settings
    return [settings.orders_topic, settings.retry_topic, settings.dlq_topic, settings.stats_topic]


def assert_replicated_3_with_min_isr_2(topics: list[str]) -> None:
    client = admin()  # kept: a client dropped before its answers arrive cancels them
    metadata = client.list_topics(timeout=10).topics
    for topic in topics:
        assert all(len(p.replicas) == 3 for p in metadata[topic].partitions.values()), topic
    configs = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic) for topic in topics])
    for resource, future in configs.items():
        assert future.result(timeout=30)["min.insync.replicas"].value == "2", resource.name


@pytest.mark.parametrize("wire", WIRE_FORMATS)
def test_producer_then_consumer_create_replicated_topics_and_count_exactly(
    cluster: str, registry_url: str, wire: str
) -> None:
    pipeline = cluster_pipeline().with_env(**wire_format_env(wire, registry_url))
    settings = pipeline.settings
    assert partition_counts(BOOTSTRAP, topics_of(pipeline)) == {}, "fresh names, nothing there yet"

    run = produce_then_consume(pipeline, ORDERS, idle_exit_s=5)

    orders, retry, dlq, stats = topics_of(pipeline)
    assert partition_counts(BOOTSTRAP, topics_of(pipeline)) == {
        orders: settings.orders_partitions,
        retry: settings.orders_partitions,
        dlq: settings.orders_partitions,
        stats: 1,
    }
    assert_replicated_3_with_min_isr_2(topics_of(pipeline))
    assert all(written_in(wire, record.value) for record in pipeline.read(orders, at_least=ORDERS))
    audit = run.audit
    print(f"{wire}: {audit.describe()}")
    assert audit.exact, audit.describe()
    assert (audit.orders, audit.valid, audit.poison) == (ORDERS, ORDERS, 0), audit.describe()
    assert int(run.consumed["processed"]) == audit.stats.count == ORDERS


def test_topics_are_created_with_replication_3_and_min_isr_2(cluster: str) -> None:
    pipeline = cluster_pipeline()
    run = pipeline.run("consumer.py", "--idle-exit", "1")
    assert run.returncode == 0, run.stderr
    assert_replicated_3_with_min_isr_2(topics_of(pipeline))
