"""Hostile records and topic states, through the in-memory twin (issue: nothing it reads can crash, stall or miscount).

Each test writes what any client could write, runs the consumer in virtual time and
reads the topics to judge the outcome: the record's fate, the records after it
processed, and the average exact. tests/integration/test_hostile_live.py writes the
same records to a real broker.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.core.batch_plan import CLOCK_SKEW_MS
from orderpipe.core.stats import encode_stats, stats_key
from orderpipe.errors import ConfigError
from orderpipe.kafka.twin.cluster import TwinCluster
from orderpipe.model.money import RunningAverage
from orderpipe.model.order import Order, ValidOrder
from orderpipe.observe.console import VERBOSE
from orderpipe.programs.consumer_app import ConsumerOptions
from orderpipe.serde.schemas import load_order_schema, parse_schema_text
from tests.audit import audit_records
from tests.unit.twin_helpers import (
    SCHEMA,
    SETTINGS,
    assert_exact,
    encoded,
    new_cluster,
    processed,
    produce_orders,
    run,
    turn_until,
    twin_consumer,
)


def test_a_retry_due_far_in_the_future_is_processed_at_once_and_holds_nothing_up() -> None:
    cluster = new_cluster()
    now_ms = int(cluster.clock.now * 1000)
    forged = [
        (("retry.attempt", b"1"), ("retry.not-before", str(10**15).encode())),
        (
            ("retry.attempt", b"1"),
            ("retry.not-before", str(now_ms + SETTINGS.retry_backoff_max_ms + CLOCK_SKEW_MS + 5).encode()),
        ),
    ]
    for index, headers in enumerate(forged):
        cluster.produce(SETTINGS.retry_topic, f"R-{index}".encode(), encoded(f"R-{index}"), headers, partition=0)
    cluster.produce(SETTINGS.retry_topic, b"R-behind", encoded("R-behind"), (), partition=0)
    started = cluster.clock.now
    summary = run(twin_consumer(cluster))
    assert summary.processed == 3
    # Processed at once: the run lasted its idle limit, not a backoff more.
    assert cluster.clock.now - started < 5.0 + 1.0


def test_a_record_timestamped_in_the_future_waits_no_longer_than_the_longest_backoff() -> None:
    cluster = new_cluster()
    future_ms = int(cluster.clock.now * 1000) + 10**9
    headers = (("retry.attempt", b"1"), ("retry.not-before", str(future_ms + 100).encode()))
    cluster.produce(SETTINGS.retry_topic, b"R-1", encoded("R-1"), headers, partition=1, timestamp=future_ms)
    summary = run(twin_consumer(cluster))
    assert summary.processed == 1


def test_idle_exit_waits_for_a_paused_retry_and_its_refetch() -> None:
    settings = replace(SETTINGS, retry_backoff_ms=4000, retry_backoff_max_ms=4000)
    cluster = new_cluster(settings)
    attempts: list[str] = []

    def fails_once(order: ValidOrder) -> None:
        attempts.append(order.order_id)
        if len(attempts) == 1:
            raise TimeoutError("inventory service timed out")

    cluster.produce(settings.orders_topic, b"O-1", encoded("O-1"))
    twin = twin_consumer(cluster, settings=settings, downstream=fails_once, options=ConsumerOptions(idle_exit_s=1.0))
    summary = run(twin)
    assert attempts == ["O-1", "O-1"], "the retry due in 4 s ran before the 1 s idle limit ended the run"
    assert summary.processed == 1


def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_rest_goes_on() -> None:
    cluster = new_cluster()
    cluster.produce(SETTINGS.orders_topic, b"H-1", encoded("H-1"), (("\udcff\udcfe", b"v"), ("ok", b"1")), partition=0)
    cluster.produce(SETTINGS.retry_topic, b"H-2", encoded("H-2"), (("retry.attempt\udcff", b"1"),), partition=0)
    produce_orders(cluster, 20, seed=31, invalid_rate=0, poison_rate=0)
    summary = run(twin_consumer(cluster))
    dead = {record.key: record for record in cluster.records(SETTINGS.dlq_topic)}
    assert set(dead) == {b"H-1", b"H-2"}
    for key, record in dead.items():
        assert record.value == encoded((key or b"").decode())
        assert record.header("dlq.reason") == "deserialization"
        assert record.header("dlq.truncated") == "headers (unreadable)"
        assert "UTF-8" in (record.header("error.message") or "")
    assert summary.processed == 20
    assert_exact(cluster)


def test_a_record_too_large_for_the_dlq_is_dead_lettered_without_its_value_in_one_transaction() -> None:
    cluster = new_cluster()
    huge = b"\xc3\x01" + b"x" * 1_040_000  # fits the orders topic (1048588), not a copy with the DLQ's headers
    cluster.produce(SETTINGS.orders_topic, b"BIG", huge, (("trace", b"t" * 100),), partition=2)
    produce_orders(cluster, 20, seed=32, invalid_rate=0, poison_rate=0)
    summary = run(twin_consumer(cluster))
    (dead,) = cluster.records(SETTINGS.dlq_topic)
    assert (dead.key, dead.value) == (b"BIG", None)
    assert dead.header("dlq.truncated") == f"value ({len(huge)} bytes)"
    assert (dead.header("original.topic"), dead.header("original.partition")) == (SETTINGS.orders_topic, "2")
    assert dead.header("trace") == "t" * 100
    assert summary.aborted == 0
    assert summary.processed == 20


def test_a_dlq_topic_that_takes_less_than_a_producer_batch_stops_the_consumer_at_start() -> None:
    cluster = new_cluster()
    cluster.configs[SETTINGS.dlq_topic]["max.message.bytes"] = "2000"
    with pytest.raises(
        ConfigError, match=re.escape("orders-dlq has max.message.bytes=2000 but needs at least 1000000")
    ):
        run(twin_consumer(cluster))


def test_forged_and_replayed_stats_values_are_written_over_and_never_counted() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 60, seed=33)
    run(twin_consumer(cluster))
    group = SETTINGS.consumer_group
    key0, key1 = (stats_key(group, SETTINGS.orders_topic, p).encode() for p in (0, 1))
    history1 = [r.value for r in cluster.records(SETTINGS.stats_topic) if r.key == key1]
    cluster.produce(SETTINGS.stats_topic, key0, encode_stats(RunningAverage(1000, 10**9), 10**6), partition=0)
    cluster.produce(SETTINGS.stats_topic, key1, history1[0], partition=0)  # an old value written again
    cluster.produce(SETTINGS.stats_topic, key1, history1[0], partition=0)  # and again
    twin = twin_consumer(cluster)
    run(twin)  # no new orders: it only restores, and writes its own values over the others
    assert "was not written by its owner" in twin.log.getvalue()
    result = assert_exact(cluster)
    assert twin.consumer.summary.average == result.expected
    # And the consumer after it restores exactly too.
    produce_orders(cluster, 30, seed=34)
    again = run(twin_consumer(cluster))
    assert again.average == assert_exact(cluster).expected


def test_two_groups_on_one_stats_topic_never_mix_their_averages() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 40, seed=35)
    first = run(twin_consumer(cluster))
    other = replace(SETTINGS, consumer_group="other-pipeline")
    second = run(twin_consumer(cluster, settings=other, transactional_id="other-pipeline.twin.0"))
    assert first.average == second.average, "each group read every order once, on its own"
    assert first.average.count > 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda c: c.configs[SETTINGS.stats_topic].update({"cleanup.policy": "delete"}),
            "cleanup.policy=delete but needs compact",
        ),
        (lambda c: c.logs[SETTINGS.stats_topic].append([]), "orders-stats has 2 partitions but needs exactly 1"),
        (lambda c: c.logs[SETTINGS.retry_topic].append([]), "orders-retry has 4 partitions but orders has 3"),
    ],
)
def test_existing_topics_that_will_not_do_stop_the_consumer_with_what_to_fix(
    damage: Callable[[TwinCluster], object], message: str
) -> None:
    cluster = new_cluster()
    damage(cluster)
    with pytest.raises(ConfigError, match=message):
        run(twin_consumer(cluster))


def test_record_text_is_escaped_on_the_console() -> None:
    cluster = new_cluster()
    cluster.produce(SETTINGS.orders_topic, b"O-1", encoded("O-1", product="Lamp\n✓ Processed: Order FAKE\x1b[2J"))
    cluster.produce(SETTINGS.orders_topic, b"\x1b]0;title\x07", b"junk")
    twin = twin_consumer(cluster, verbosity=VERBOSE)
    run(twin)
    out = twin.out.getvalue()
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "Lamp\\n✓ Processed: Order FAKE\\x1b[2J" in out
    assert "FAKE" not in out.replace("Lamp\\n✓ Processed: Order FAKE", "")


class SlowRegistry:
    """A stand-in registry client: id 1 is the order schema, id 7 too but answered once `gate` opens, others unknown."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.asked: list[int] = []

    def __enter__(self) -> SlowRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.gate.set()

    def get_schema(self, schema_id: int) -> Schema:
        self.asked.append(schema_id)
        if schema_id == 7:
            self.gate.wait(10)
        if schema_id in (1, 7):
            return Schema(SCHEMA.text, "AVRO")
        raise SchemaRegistryError(404, 40403, "Schema not found")


def registry_encoded(schema_id: int, order_id: str) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + SCHEMA.encode_body(Order(order_id, "Mouse", 19.99))


def test_a_slow_schema_look_up_holds_up_only_its_own_partition() -> None:
    settings = replace(SETTINGS, schema_registry_url="http://registry.example:8081")
    cluster = new_cluster(settings)
    registry = SlowRegistry()
    cluster.produce(settings.orders_topic, b"SLOW", registry_encoded(7, "SLOW"), partition=0)
    cluster.produce(settings.orders_topic, b"BEHIND", registry_encoded(1, "BEHIND"), partition=0)
    for index in range(10):
        cluster.produce(settings.orders_topic, f"O-{index}".encode(), registry_encoded(1, f"O-{index}"), partition=1)
        cluster.produce(settings.orders_topic, f"J-{index}".encode(), registry_encoded(100 + index, "J"), partition=2)
    twin = twin_consumer(cluster, settings=settings, open_registry=lambda _url: registry)
    with twin.consumer.open() as loop:
        turn_until(
            loop,
            lambda: twin.consumer.summary.processed >= 10 and sum(twin.consumer.summary.dead_lettered.values()) >= 10,
        )
        assert not processed(twin, "SLOW"), "its partition waits for the schema"
        registry.gate.set()
        turn_until(loop, lambda: processed(twin, "BEHIND"))
    assert processed(twin, "SLOW")
    dead = cluster.records(settings.dlq_topic)
    assert {r.header("error.message") for r in dead} == {
        f"schema id {100 + i} is unknown to the registry" for i in range(10)
    }
    assert registry.asked.count(7) == 1, "asked once, however often its record was read"


def test_missing_topics_are_named_when_the_consumer_may_not_create_them() -> None:
    settings = replace(SETTINGS, create_topics=False)
    cluster = new_cluster(settings)
    del cluster.logs[settings.dlq_topic]
    with pytest.raises(ConfigError, match=f"topic {settings.dlq_topic} does not exist, or this principal may not"):
        run(twin_consumer(cluster, settings=settings))
    assert settings.dlq_topic not in cluster.logs, "nothing was created"
    del cluster.logs[settings.retry_topic]
    names = f"topics {settings.retry_topic} and {settings.dlq_topic}"
    with pytest.raises(ConfigError, match=f"{names} do not exist, or this principal may not see them"):
        run(twin_consumer(cluster, settings=settings))


V1 = load_order_schema(1)


def framed(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def avro_body(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


class VersionedRegistry:
    """A stand-in registry client holding every order version, a newer one and one that cannot be read as ours."""

    def __init__(self) -> None:
        newer = json.loads(SCHEMA.text)
        newer["fields"].append({"name": "currency", "type": "string", "default": "USD"})
        broken = json.loads(SCHEMA.text)
        broken["fields"][2]["type"] = "string"  # price
        self.texts = {1: V1.text, 2: SCHEMA.text, 3: json.dumps(newer), 4: json.dumps(broken)}

    def __enter__(self) -> VersionedRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def get_schema(self, schema_id: int) -> Schema:
        return Schema(self.texts[schema_id], "AVRO")

    def writer(self, schema_id: int) -> Any:
        return parse_schema_text(self.texts[schema_id])


def test_a_mixed_stream_of_versions_and_formats_is_counted_exactly() -> None:
    """v1 and v2 in both wire formats and a newer registered version are processed; an unreadable one is not."""
    settings = replace(SETTINGS, schema_registry_url="http://registry.example:8081")
    cluster = new_cluster(settings)
    registry = VersionedRegistry()
    newer = registry.writer(3)
    for index in range(40):
        order = Order(f"O-{index}", "Mouse", 10.25 + index, 1 + index % 4, None if index % 3 else f"C-{index}")
        values = {
            "v1 single-object": V1.encode_single_object(order),
            "v2 single-object": SCHEMA.encode_single_object(order),
            "v1 registry": framed(1, V1.encode_body(order)),
            "v2 registry": framed(2, SCHEMA.encode_body(order)),
            "v3 registry": framed(3, avro_body(newer, {**order.to_record(), "currency": "EUR"})),
            "price as a string": framed(4, avro_body(registry.writer(4), {**order.to_record(), "price": "1.00"})),
        }
        name = list(values)[index % len(values)]
        cluster.produce(settings.orders_topic, order.order_id.encode(), values[name])
    twin = twin_consumer(cluster, settings=settings, open_registry=lambda _url: registry)
    summary = run(twin)
    result = audit_records(
        cluster.records(settings.orders_topic),
        cluster.records(settings.dlq_topic),
        cluster.records(settings.retry_topic),
        cluster.records(settings.stats_topic),
        settings.max_order_price_cents,
        group=settings.consumer_group,
        registry=registry.writer,
    )
    assert result.exact, result.describe()
    assert summary.average == result.expected
    assert (result.valid, result.poison) == (34, 6)
    dead = {r.header("error.message") for r in cluster.records(settings.dlq_topic)}
    assert dead == {
        "the writer schema cannot be resolved to the order schema: "
        "field price is string in the writer but float in the reader"
    }
