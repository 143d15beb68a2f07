"""The programs on a broker as it comes: `auto.create.topics.enable=true` and `num.partitions=1`.

The single-node broker of scripts/broker.sh keeps Kafka's defaults, so a metadata
request or a first send that names a missing topic would create it with one
partition. Run as a user runs them (producer.py first, then consumer.py), in each
wire format, the programs must create their four topics themselves, as configured;
every client of these tests has auto-creation off (tests/clients.py), so only the
programs' own requests could create anything. An `orders` topic that someone else's
client did auto-create, with the broker's one partition, is followed as it is (a topic
made by hand may have its count on purpose, and partitions cannot be taken away): both
programs warn, naming the topic, its count and ORDERS_PARTITIONS, the consumer creates
its retry and DLQ topics with the same count, and everything is counted exactly. A
retry topic that then does not match `orders` stops the consumer (exit 2) with the
sentence that names both (orderpipe/core/topics.py).

The three-node cluster, where auto-creation is off, runs the same producer-then-
consumer check: tests/cluster/test_end_to_end.py.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType  # type: ignore[attr-defined]

from tests.clients import client_config
from tests.integration.helpers import (
    WIRE_FORMATS,
    Pipeline,
    audit,
    partition_counts,
    produce_then_consume,
    wire_format_env,
    written_in,
)

ORDERS = 1000


@pytest.fixture(scope="module", autouse=True)
def stock_broker(broker: str) -> str:
    """The premise: the broker creates topics that requests name (Kafka's default, kept by scripts/broker.sh)."""
    client = AdminClient(client_config(broker))
    node = next(iter(client.list_topics(timeout=10).brokers))
    [future] = client.describe_configs([ConfigResource(ResourceType.BROKER, str(node))]).values()
    setting = future.result(timeout=30)["auto.create.topics.enable"].value
    assert setting == "true", (
        f"the broker on {broker} has auto.create.topics.enable={setting}; these tests need Kafka's default"
    )
    return broker


def topics_of(pipeline: Pipeline) -> list[str]:
    settings = pipeline.settings
    return [settings.orders_topic, settings.retry_topic, settings.dlq_topic, settings.stats_topic]


@pytest.mark.parametrize("wire", WIRE_FORMATS)
def test_producer_then_consumer_create_every_topic_as_configured_and_count_exactly(
    pipeline: Pipeline, registry_url: str, wire: str
) -> None:
    pipeline = pipeline.with_env(**wire_format_env(wire, registry_url))
    settings = pipeline.settings
    assert partition_counts(settings.bootstrap_servers, topics_of(pipeline)) == {}, "fresh names, nothing there yet"

    run = produce_then_consume(pipeline, ORDERS, idle_exit_s=3)

    orders, retry, dlq, stats = topics_of(pipeline)
    assert partition_counts(settings.bootstrap_servers, topics_of(pipeline)) == {
        orders: settings.orders_partitions,
        retry: settings.orders_partitions,
        dlq: settings.orders_partitions,
        stats: 1,
    }
    assert settings.orders_partitions > 1, "the broker's own default would not tell them apart"
    records = pipeline.read(orders, at_least=ORDERS)
    assert all(written_in(wire, record.value) for record in records), f"not all in the {wire} format"
    audit = run.audit
    print(f"{wire}: {audit.describe()}")
    assert audit.exact, audit.describe()
    assert (audit.orders, audit.valid, audit.poison) == (ORDERS, ORDERS, 0), audit.describe()
    assert int(run.consumed["processed"]) == audit.stats.count == ORDERS
    assert run.consumed["average"] == audit.expected.describe()


def stray_orders_topic(pipeline: Pipeline, also: list[str] | None = None) -> str:
    """`orders` made by the broker for someone else's client: one record sent with librdkafka's producer defaults."""
    orders = pipeline.settings.orders_topic
    stray = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers})  # auto-creates on purpose
    stray.produce(orders, key=b"stray-1", value=b"not an order")
    assert stray.flush(30) == 0
    existing = partition_counts(pipeline.settings.bootstrap_servers, topics_of(pipeline))
    assert existing.get(orders) == 1, existing
    assert set(existing) == {orders, *(also or [])}, existing
    return orders


def assert_refused(run_stderr: str, returncode: int, orders: str) -> None:
    """Exit 2 and one sentence that names the orders topic and its one partition (orderpipe/core/topics.py)."""
    assert returncode == 2, run_stderr
    assert "Traceback" not in run_stderr, run_stderr
    last = run_stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), run_stderr
    assert f"{orders} has 1" in last, run_stderr


def test_an_orders_topic_auto_created_with_one_partition_is_followed_with_a_warning_and_counted_exactly(
    pipeline: Pipeline,
) -> None:
    orders = stray_orders_topic(pipeline)
    warning = f"topic {orders} has 1 partition, not ORDERS_PARTITIONS={pipeline.settings.orders_partitions}"

    sent = pipeline.run("producer.py", "--count", "50", "--rate", "0", "--quiet")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert warning in sent.stderr
    consumed = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet")
    assert consumed.returncode == 0, consumed.stdout + consumed.stderr
    assert warning in consumed.stderr

    made = partition_counts(pipeline.settings.bootstrap_servers, topics_of(pipeline))
    retry, dlq = pipeline.settings.retry_topic, pipeline.settings.dlq_topic
    assert (made[orders], made[retry], made[dlq]) == (1, 1, 1), made
    account = audit(pipeline)
    assert account.exact, account.describe()
    assert (account.orders, account.poison) == (51, 1), account.describe()  # the stray record, dead-lettered


def test_a_retry_topic_that_does_not_match_an_auto_created_orders_topic_stops_the_consumer(
    pipeline: Pipeline,
) -> None:
    settings = pipeline.settings
    admin = AdminClient(client_config(settings.bootstrap_servers))
    [created] = admin.create_topics([NewTopic(settings.retry_topic, settings.orders_partitions, 1)]).values()
    created.result(timeout=30)
    orders = stray_orders_topic(pipeline, also=[settings.retry_topic])

    run = pipeline.run("consumer.py", "--idle-exit", "3")

    assert_refused(run.stderr, run.returncode, orders)
