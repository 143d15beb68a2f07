"""Hostile records and topic states on the real broker: nothing the consumer reads can crash, stall or miscount it.

Each test writes what any client could write, with a plain producer (or, for header
names that are not UTF-8, by hand: raw_kafka.py), runs consumer.py as a user would
and reads the topics to judge: the record's fate, the orders after it processed,
and the counts exact. tests/unit/consumer/test_hostile_twin.py has the same cases in memory.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from orderpipe.core.stats import encode_stats, stats_key
from orderpipe.model.money import RunningAverage
from orderpipe.model.order import Order
from orderpipe.serde.codec import CONFLUENT_MAGIC
from orderpipe.serde.schemas import load_order_schema
from tests.clients import client_config
from tests.integration.helpers import CONSUMER_SUMMARY, PRODUCER_SUMMARY, Pipeline, audit, summary
from tests.integration.raw_kafka import produce_raw

SCHEMA = load_order_schema()


def produce_valid_orders(pipeline: Pipeline, count: int, seed: int, *env: str) -> dict[str, str]:
    """Runs producer.py for `count` valid orders (it creates the topics); returns its summary."""
    sent = pipeline.run("producer.py", "--count", str(count), "--rate", "0", "--seed", str(seed), "--quiet")
    assert sent.returncode == 0, sent.stderr
    return summary(PRODUCER_SUMMARY, sent.stdout)


def consume(pipeline: Pipeline, *args: str) -> tuple[dict[str, str], str]:
    """Runs consumer.py until idle; returns its summary and everything it printed."""
    run = pipeline.run("consumer.py", "--idle-exit", "3", *args)
    assert run.returncode == 0, run.stdout + run.stderr
    return summary(CONSUMER_SUMMARY, run.stdout), run.stdout + run.stderr


def assert_exact(pipeline: Pipeline) -> None:
    result = audit(pipeline)
    assert result.exact, result.describe()


def producer_of(pipeline: Pipeline, **conf: object) -> Producer:
    return Producer(client_config(pipeline.settings.bootstrap_servers, conf))


def test_a_retry_due_far_in_the_future_is_processed_at_once_and_holds_nothing_up(pipeline: Pipeline) -> None:
    produced = produce_valid_orders(pipeline, 30, seed=41)
    producer = producer_of(pipeline)
    retry = pipeline.settings.retry_topic
    value = SCHEMA.encode_single_object(Order("R-1", "Lamp", 10.0))
    producer.produce(
        retry, key=b"R-1", value=value, partition=0, headers=[("retry.attempt", "1"), ("retry.not-before", str(10**15))]
    )
    producer.produce(retry, key=b"R-2", value=value, partition=0)  # waits behind it
    # Timestamped 50 minutes ahead (the broker refuses more than an hour), due just after that.
    ahead_ms = int(time.time() * 1000) + 50 * 60_000
    forged: list[tuple[str, str | bytes | None]] = [("retry.attempt", "1"), ("retry.not-before", str(ahead_ms + 100))]
    producer.produce(retry, key=b"R-3", value=value, partition=1, timestamp=ahead_ms, headers=forged)
    for index, attempt in enumerate(("9" * 5000, "-3", "\xff")):
        headers: list[tuple[str, str | bytes | None]] = [("retry.attempt", attempt), ("original.offset", attempt)]
        producer.produce(retry, key=f"R-{4 + index}".encode(), value=value, partition=2, headers=headers)
    assert producer.flush(30) == 0
    started = time.monotonic()
    final, _ = consume(pipeline)
    assert int(final["processed"]) == int(produced["sent"]) + 6
    assert time.monotonic() - started < 30, "nothing waited for a backoff"


def test_idle_exit_waits_for_retries_not_yet_due(pipeline: Pipeline) -> None:
    produce_valid_orders(pipeline, 40, seed=42)
    slow = pipeline.with_env(RETRY_BACKOFF_MS="2500", RETRY_BACKOFF_MAX_MS="2500")
    run = slow.run("consumer.py", "--idle-exit", "1", "--failure-rate", "0.3", "--seed", "4")
    assert run.returncode == 0, run.stderr
    final = summary(CONSUMER_SUMMARY, run.stdout)
    assert int(final["retried"]) > 0
    assert_exact(slow)  # every retry ran before the 1 s idle limit ended the run


def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_rest_goes_on(pipeline: Pipeline) -> None:
    produce_valid_orders(pipeline, 20, seed=43)
    settings = pipeline.settings
    bad_headers = [(b"\xff\xfe", b"v"), (b"trace", b"1")]
    value = SCHEMA.encode_single_object(Order("H-1", "Lamp", 10.0))
    produce_raw(settings.bootstrap_servers, settings.orders_topic, 0, (b"H-1", value, bad_headers))
    produce_raw(settings.bootstrap_servers, settings.retry_topic, 1, (b"H-2", value, [(b"retry.attempt\xff", b"1")]))
    final, _ = consume(pipeline)
    dead = {record.key: record for record in pipeline.read(settings.dlq_topic)}
    assert set(dead) == {b"H-1", b"H-2"}
    for record in dead.values():
        assert record.value == value
        assert record.header("dlq.reason") == "deserialization"
        assert record.header("dlq.truncated") == "headers (unreadable)"
    assert final["processed"] == "20"
    assert_exact(pipeline)


def test_records_with_and_without_headers_taking_turns_are_each_decided_as_they_are(pipeline: Pipeline) -> None:
    # Readable headers leave a record among its partition's plain ones (one run); an
    # unreadable header name ends the run; each record is decided as it would be alone.
    produce_valid_orders(pipeline, 10, seed=45)
    settings = pipeline.settings
    producer = producer_of(pipeline)

    def order(key: str) -> bytes:
        return SCHEMA.encode_single_object(Order(key, "Lamp", 10.0))

    trace: list[tuple[str, str | bytes | None]] = [("trace", b"t")]
    no_value: list[tuple[str, str | bytes | None]] = [("no-value", None)]  # Kafka allows a header without a value
    for key, value, headers in (
        ("P-1", order("P-1"), None),
        ("P-2", order("P-2"), trace),
        ("P-3", b"\x00not an order", [*trace, *no_value]),
        ("P-4", order("P-4"), trace),
    ):
        producer.produce(settings.orders_topic, key=key.encode(), value=value, partition=0, headers=headers)
    assert producer.flush(30) == 0
    produce_raw(settings.bootstrap_servers, settings.orders_topic, 0, (b"H-5", order("H-5"), [(b"\xff", b"v")]))
    for key, headers in (("P-6", no_value), ("P-7", None)):
        producer.produce(settings.orders_topic, key=key.encode(), value=order(key), partition=0, headers=headers)
    assert producer.flush(30) == 0
    final, _ = consume(pipeline)
    dead = {record.key: record for record in pipeline.read(settings.dlq_topic)}
    assert set(dead) == {b"P-3", b"H-5"}
    assert dead[b"P-3"].header("trace") == "t"
    assert dead[b"P-3"].header("no-value") == ""  # a header without a value is carried as empty
    assert dead[b"H-5"].header("dlq.truncated") == "headers (unreadable)"
    assert final["processed"] == "15"
    assert_exact(pipeline)


def test_a_record_of_a_megabyte_is_dead_lettered_without_its_value_and_nothing_aborts(pipeline: Pipeline) -> None:
    produce_valid_orders(pipeline, 20, seed=44)
    big = b"\xc3\x01" + random.Random(1).randbytes(1_040_000)
    producer = producer_of(pipeline, **{"message.max.bytes": 1_048_576})
    producer.produce(pipeline.settings.orders_topic, key=b"BIG", value=big, headers=[("trace", b"t" * 100)])
    assert producer.flush(30) == 0
    final, output = consume(pipeline)
    (dead,) = pipeline.read(pipeline.settings.dlq_topic)
    assert (dead.key, dead.value) == (b"BIG", None)
    assert dead.header("dlq.truncated") == f"value ({len(big)} bytes)"
    assert dead.header("original.topic") == pipeline.settings.orders_topic
    assert dead.header("trace") == "t" * 100
    assert "aborted" not in output
    assert final["processed"] == "20"
    assert_exact(pipeline)


def test_forged_replayed_and_poison_stats_values_change_no_count(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    produce_valid_orders(pipeline, 200, seed=45)
    first, _ = consume(pipeline)
    group, topic = settings.consumer_group, settings.stats_topic
    written = [r for r in pipeline.read(topic) if r.key == stats_key(group, settings.orders_topic, 1).encode()]
    producer = producer_of(pipeline)
    hostile = [
        (stats_key(group, settings.orders_topic, 0), encode_stats(RunningAverage(1000, 10**9), 10**6)),  # forged
        (stats_key(group, settings.orders_topic, 1), written[0].value),  # an old value written again
        (stats_key(group, settings.orders_topic, 2), b'{"count": ' + b"9" * 5000 + b', "sum_cents": 0}'),
        (stats_key(group, settings.orders_topic, 2), b"[" * 100_000 + b"]" * 100_000),
        (stats_key(group, settings.orders_topic, 99), encode_stats(RunningAverage(5, 500), 1)),  # no such partition
        (f"{settings.orders_topic}-0", encode_stats(RunningAverage(5, 500), 1)),  # the key of no group
        (stats_key("another-pipeline", settings.orders_topic, 0), encode_stats(RunningAverage(7, 700), 1)),
    ]
    for key, value in hostile:
        producer.produce(topic, key=key.encode(), value=value, partition=0)
    assert producer.flush(30) == 0

    shown = pipeline.run("consumer.py", "--stats")
    assert shown.returncode == 0, shown.stderr
    again, output = consume(pipeline)
    assert (again["average"], again["count"]) == (first["average"], first["count"])
    # The two poison values and the key of no partition; the key of no group is read as one of
    # before keys named the group, used only where the group has no value (here it has).
    assert "ignored 3 unusable stats records" in output
    assert "was not written by its owner" in output
    assert_exact(pipeline)  # the latest values are the owner's again


def test_a_stream_of_unknown_schema_ids_costs_neither_a_stall_nor_the_credentials(
    pipeline: Pipeline, registry_url: str
) -> None:
    with_credentials = registry_url.replace("://", "://reader:s3cret-pw@")
    pipeline = pipeline.with_env(SCHEMA_REGISTRY_URL=with_credentials)
    produced = produce_valid_orders(pipeline, 20, seed=46)
    rng = random.Random(46)
    producer = producer_of(pipeline)
    junk = 2000
    for index in range(junk):
        schema_id = rng.randrange(10**6, 2**31)
        value = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + b"\x02x\x02y\x00\x00\x80?"
        producer.produce(pipeline.settings.orders_topic, key=f"J-{index}".encode(), value=value)
    assert producer.flush(30) == 0
    started = time.monotonic()
    final, output = consume(pipeline)
    assert time.monotonic() - started < 90
    assert final["processed"] == produced["sent"]
    assert final["deserialization"] == str(junk)
    assert "s3cret-pw" not in output
    assert "***@" in output
    dead = pipeline.read(pipeline.settings.dlq_topic)
    assert all("unknown to the registry" in (r.header("error.message") or "") for r in dead)


@pytest.mark.parametrize(
    ("topic", "partitions", "config", "message"),
    [
        ("STATS_TOPIC", 1, {"cleanup.policy": "delete"}, "has cleanup.policy=delete but needs compact"),
        ("STATS_TOPIC", 2, {"cleanup.policy": "compact"}, "has 2 partitions but needs exactly 1"),
        ("RETRY_TOPIC", 5, {}, "has 5 partitions but"),
        ("DLQ_TOPIC", 3, {"max.message.bytes": "2000"}, "has max.message.bytes=2000 but needs at least 1000000"),
    ],
)
def test_existing_topics_that_will_not_do_stop_the_consumer_with_what_to_fix(
    pipeline: Pipeline, topic: str, partitions: int, config: dict[str, str], message: str
) -> None:
    name = pipeline.env[topic]
    admin = AdminClient(client_config(pipeline.settings.bootstrap_servers))
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values():
        future.result(30)
    run = pipeline.run("consumer.py", "--idle-exit", "3")
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{name} {message}" in run.stderr
    assert "Traceback" not in run.stderr


def test_record_text_is_escaped_before_it_is_printed(pipeline: Pipeline) -> None:
    produce_valid_orders(pipeline, 1, seed=47)
    producer = producer_of(pipeline)
    product = "Lamp\n✓ Processed: Order FAKE\x1b[2J\x07"
    producer.produce(
        pipeline.settings.orders_topic, key=b"E-1", value=SCHEMA.encode_single_object(Order("E-1", product, 10.0))
    )
    producer.produce(pipeline.settings.orders_topic, key=b"\x1b]0;owned\x07", value=b"junk")
    assert producer.flush(30) == 0
    _, output = consume(pipeline)
    assert "\x1b" not in output
    assert "\x07" not in output
    assert "Lamp\\n✓ Processed: Order FAKE\\x1b[2J\\x07" in output


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("producer.py", ["--rate", "inf"], "--rate: expected a number from 0 to 1e+06, got 'inf'"),
        ("consumer.py", ["--batch-size", "5000000"], "--batch-size: expected a whole number from 1 to 100000"),
    ],
)
def test_absurd_settings_are_refused_at_start(pipeline: Pipeline, script: str, args: list[str], message: str) -> None:
    run = pipeline.run(script, *args)
    assert run.returncode == 2
    assert message in run.stderr


def test_without_create_topics_a_missing_topic_is_named_and_nothing_is_created(pipeline: Pipeline) -> None:
    locked = pipeline.with_env(CREATE_TOPICS="false")
    settings = pipeline.settings
    every = f"{settings.orders_topic}, {settings.retry_topic}, {settings.dlq_topic} and {settings.stats_topic}"
    expected = {  # the producer needs only the orders topic; the consumer all four
        "producer.py": f"topic {settings.orders_topic} does not exist, or this principal may not see it",
        "consumer.py": f"topics {every} do not exist, or this principal may not see them",
    }
    for script in ("producer.py", "consumer.py"):
        run = locked.run(script, "--count", "1") if script == "producer.py" else locked.run(script)
        assert run.returncode == 2, run.stdout + run.stderr
        assert expected[script] in run.stderr
    admin = AdminClient(client_config(pipeline.settings.bootstrap_servers))
    assert pipeline.settings.orders_topic not in admin.list_topics(timeout=10).topics


def test_without_auto_register_an_unregistered_schema_is_named(pipeline: Pipeline, registry_url: str) -> None:
    locked = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url, SCHEMA_REGISTRY_AUTO_REGISTER="false")
    run = locked.run("producer.py", "--count", "1")
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"not registered under subject {locked.settings.orders_topic}-value" in run.stderr
    registered = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    assert registered.run("producer.py", "--count", "1").returncode == 0  # registers it
    assert locked.run("producer.py", "--count", "1").returncode == 0, "now only looked up"


def test_a_registry_answer_that_is_no_avro_schema_is_dead_lettered(pipeline: Pipeline, registry_url: str) -> None:
    pipeline = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    produced = produce_valid_orders(pipeline, 10, seed=48)
    # Any client may register a JSON Schema; its id in an orders record is an answer that is no Avro schema.
    client = SchemaRegistryClient({"url": registry_url})
    json_id = client.register_schema(
        f"{pipeline.settings.orders_topic}-json",
        Schema('{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}', "JSON"),
    )
    producer = producer_of(pipeline)
    producer.produce(pipeline.settings.orders_topic, key=b"JSON-1", value=registry_value(json_id))
    assert producer.flush(30) == 0
    final, _ = consume(pipeline)
    (dead,) = pipeline.read(pipeline.settings.dlq_topic)
    assert dead.key == b"JSON-1"
    assert f"schema id {json_id} is not a usable Avro schema" in (dead.header("error.message") or "")
    assert final["processed"] == produced["sent"]


def registry_value(schema_id: int) -> bytes:
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + SCHEMA.encode_body(Order("JSON-1", "Lamp", 10.0))


def test_a_properties_file_librdkafka_refuses_is_named_in_one_sentence(pipeline: Pipeline, tmp_path: Path) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text("no.such.property=1\nsasl.password=props-s3cret\n")
    run = pipeline.with_env(KAFKA_CLIENT_CONFIG=str(properties)).run("consumer.py", "--idle-exit", "3")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no.such.property" in run.stderr
    assert "Traceback" not in run.stderr
    assert "props-s3cret" not in run.stdout + run.stderr
