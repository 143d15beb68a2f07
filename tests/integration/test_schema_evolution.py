"""Schema evolution against the real broker and registry: one registered version per schema file, a mixed
stream of every version and wire format counted exactly, and an incompatible subject refused."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from orderpipe.model.order import Order
from orderpipe.serde.schemas import load_order_schema, parse_schema_text
from tests.clients import client_config
from tests.integration.helpers import CONSUMER_SUMMARY, Pipeline, audit, summary


def subject_of(pipeline: Pipeline) -> str:
    return f"{pipeline.settings.orders_topic}-value"


def test_ten_producer_runs_leave_one_version_per_schema_file(pipeline: Pipeline, registry_url: str) -> None:
    pipeline = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    for run in range(10):
        version = ("--schema-version", "1") if run % 2 else ()
        sent = pipeline.run("producer.py", "--count", "3", "--rate", "0", "--quiet", *version)
        assert sent.returncode == 0, sent.stderr
    client = SchemaRegistryClient({"url": registry_url})
    assert client.get_versions(subject_of(pipeline)) == [1, 2]
    orders = pipeline.read(pipeline.settings.orders_topic)
    assert len({r.value[1:5] for r in orders if r.value}) == 2, "two schema ids, each reused by five runs"

    only_lookup = pipeline.with_env(SCHEMA_REGISTRY_AUTO_REGISTER="false").run("producer.py", "--count", "2")
    assert only_lookup.returncode == 0, only_lookup.stderr
    assert client.get_versions(subject_of(pipeline)) == [1, 2]


def test_a_mixed_stream_of_versions_and_wire_formats_is_counted_exactly(pipeline: Pipeline, registry_url: str) -> None:
    plain = pipeline
    framed = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    for runner, version in ((plain, "1"), (plain, "2"), (framed, "1"), (framed, "2")):
        flags = ("--count", "50", "--rate", "0", "--invalid-rate", "0.1", "--schema-version", version)
        sent = runner.run("producer.py", *flags)
        assert sent.returncode == 0, sent.stderr
    # A newer producer's version 3, registered by it: one more field, with a default.
    v3 = json.loads(load_order_schema().text)
    v3["fields"].append({"name": "channel", "type": "string", "default": "web"})
    client = SchemaRegistryClient({"url": registry_url})
    v3_id = client.register_schema(subject_of(pipeline), Schema(json.dumps(v3), "AVRO"))
    v3_schema = parse_schema_text(json.dumps(v3))
    producer = Producer(client_config(pipeline.settings.bootstrap_servers))
    for n in range(20):
        order = Order(f"O-V3-{n}", "Desk", 10.0 + n, quantity=2, customer_id=f"C-{n}")
        body = _fastavro_body(v3_schema, {**order.to_record(), "channel": "app"})
        value = b"\x00" + struct.pack(">I", v3_id) + body
        producer.produce(plain.settings.orders_topic, key=order.order_id.encode(), value=value)
    assert producer.flush(30) == 0

    consumed = framed.run("consumer.py", "--idle-exit", "3", "--quiet")

    assert consumed.returncode == 0, consumed.stderr
    result = audit(framed)
    assert result.exact, result.describe()
    assert result.orders == 220
    got = summary(CONSUMER_SUMMARY, consumed.stdout)
    assert int(got["processed"]) == result.valid == result.expected.count
    assert int(got["deserialization"]) == 0, "every version in either wire format is read"


def test_an_incompatible_subject_is_refused_naming_the_field(pipeline: Pipeline, registry_url: str) -> None:
    pipeline = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    subject = subject_of(pipeline)
    client = SchemaRegistryClient({"url": registry_url})
    client.set_compatibility(subject, "BACKWARD")
    earlier = json.loads(load_order_schema(1).text)
    earlier["fields"][2] = {"name": "price", "type": "string"}
    client.register_schema(subject, Schema(json.dumps(earlier), "AVRO"))

    refused = pipeline.run("producer.py", "--count", "5", "--rate", "0")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0] == (
        f"error: the order schema (schemas/order-v2.avsc) is not compatible with version 1 of subject {subject} "
        "under BACKWARD compatibility: the new schema cannot read data written with the latest: field price is "
        "string in the writer but float in the reader; producing nothing"
    )
    assert pipeline.read(pipeline.settings.orders_topic) == []


def _fastavro_body(schema: Any, record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def test_registered_schemas_no_reader_should_trust_are_dead_lettered_and_logical_types_read(
    pipeline: Pipeline, registry_url: str
) -> None:
    framed = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    sent = framed.run("producer.py", "--count", "5", "--rate", "0")  # creates the topics, registers version 2
    assert sent.returncode == 0, sent.stderr
    client = SchemaRegistryClient({"url": registry_url})
    v1 = json.loads(load_order_schema(1).text)

    def register(extra_field: dict[str, Any] | None = None, order_id_type: Any = "string") -> int:
        fields = [{**v1["fields"][0], "type": order_id_type}, *v1["fields"][1:]]
        schema = {**v1, "fields": [*fields, *([extra_field] if extra_field else [])]}
        return client.register_schema(f"{subject_of(pipeline)}-hostile", Schema(json.dumps(schema), "AVRO"))

    node = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    recursive = register({"name": "link", "type": ["null", node], "default": None})
    nulls = register({"name": "pad", "type": {"type": "array", "items": "null"}, "default": []})
    uuid = register(order_id_type={"type": "string", "logicalType": "uuid"})
    schema = parse_schema_text(json.dumps(v1))

    def framed_value(schema_id: int, order_id: str, tail: bytes = b"") -> bytes:
        body = _fastavro_body(schema, {"orderId": order_id, "product": "Desk", "price": 5.0})
        return b"\x00" + struct.pack(">I", schema_id) + body + tail

    uuid_id = "0b8e6a54-0000-4000-8000-000000000001"
    framed.produce(
        [
            # 100,000 levels of nesting: fastavro's reader would exhaust the C stack.
            (b"K-deep", framed_value(recursive, "O-DEEP", b"\x02" * 100_000 + b"\x00"), []),
            # 2^62 items that take no bytes: fastavro would count them for ever.
            (b"K-nulls", framed_value(nulls, "O-NULLS", b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01\x00"), []),
            (uuid_id.encode(), framed_value(uuid, uuid_id), []),
        ]
    )

    consumed = framed.run("consumer.py", "--idle-exit", "3", "--quiet", timeout=120)

    assert consumed.returncode == 0, consumed.stderr
    got = summary(CONSUMER_SUMMARY, consumed.stdout)
    assert (int(got["processed"]), int(got["deserialization"])) == (6, 2), "a uuid orderId is read as its string"
    dead = {r.key: r for r in framed.read(framed.settings.dlq_topic)}
    assert (
        f"schema id {recursive} is not read: the type Node contains itself" in dead[b"K-deep"].headers["error.message"]
    )
    assert "an array's items take no bytes" in dead[b"K-nulls"].headers["error.message"]
    listed = framed.run("dlq.py", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().splitlines()[-1] == "2 dead letters (deserialization 2)"
