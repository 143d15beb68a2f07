"""The programs on a broker as it comes: `auto.create.topics.enable=true` and `num.partitions=1` (DESIGN section 3).

The single-node broker of scripts/broker.sh keeps Kafka's defaults, so a metadata
request or a first send that names a missing topic would create it with one
partition. Run as a user runs them (producer.py first, then consumer.py), in each
wire format, the programs must create their four topics themselves, as configured;
every client of these tests has auto-creation off (tests/clients.py), so only the
programs' own requests could create anything. And an `orders` topic that someone
else's client did auto-create, with the broker's one partition, must not be taken as
it is: the consumer stops (exit 2) with a sentence that names the topic and what it
has (orderpipe/topics.py). The producer, which needs only `orders` to exist, sends to
it as it finds it.

The three-node cluster, where auto-creation is off, runs the same producer-then-
consumer check: tests/cluster/test_end_to_end.py.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from tests.clients import client_config
from tests.integration.helpers import (
    PRODUCER_SUMMARY,
    WIRE_FORMATS,
    Pipeline,
    partition_counts,
    produce_then_consume,
    summary,
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


def stray_orders_topic(pipeline: Pipeline) -> str:
    """`orders` made by the broker for someone else's client: one record sent with librdkafka's producer defaults."""
    orders = pipeline.settings.orders_topic
    stray = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers})  # auto-creates on purpose
    stray.produce(orders, key=b"stray-1", value=b"not an order")
    assert stray.flush(30) == 0
    assert partition_counts(pipeline.settings.bootstrap_servers, topics_of(pipeline)) == {orders: 1}
    return orders


def assert_refused(run_stderr: str, returncode: int, orders: str) -> None:
    """Exit 2 and one sentence that names the orders topic and its one partition (orderpipe/topics.py)."""
    assert returncode == 2, run_stderr
    assert "Traceback" not in run_stderr, run_stderr
    last = run_stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), run_stderr
    assert f"{orders} has 1" in last, run_stderr


def test_an_orders_topic_auto_created_with_one_partition_stops_the_consumer_with_what_to_fix(
    pipeline: Pipeline,
) -> None:
    orders = stray_orders_topic(pipeline)

    run = pipeline.run("consumer.py", "--idle-exit", "3")

    assert_refused(run.stderr, run.returncode, orders)
    made = partition_counts(pipeline.settings.bootstrap_servers, topics_of(pipeline))
    retry, dlq = pipeline.settings.retry_topic, pipeline.settings.dlq_topic
    assert made.get(retry) != 1, f"{retry} was made from the stray topic's count: {made}"
    assert made.get(dlq) != 1, f"{dlq} was made from the stray topic's count: {made}"


def test_the_producer_sends_to_an_auto_created_orders_topic_as_it_is_and_the_consumer_then_refuses_it(
    pipeline: Pipeline,
) -> None:
    orders = stray_orders_topic(pipeline)

    sent = pipeline.run("producer.py", "--count", "20", "--rate", "0", "--quiet")

    # What the producer does today: it needs only the orders topic to exist, and sends to it as it is.
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert summary(PRODUCER_SUMMARY, sent.stdout)["delivered"] == "20"
    assert {record.partition for record in pipeline.read(orders, at_least=21)} == {0}
    consumed = pipeline.run("consumer.py", "--idle-exit", "3")
    assert_refused(consumed.stderr, consumed.returncode, orders)
