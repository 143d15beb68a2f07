"""AVRO_WIRE_FORMAT on the real broker: bare bodies from a reference-style producer (price a double), our own
producer writing them, malformed ones dead-lettered, a writer schema that cannot carry an order refused, and a
framed format asked for that refuses the other."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro

from orderpipe.model.money import to_cents
from tests.integration.helpers import CONSUMER_SUMMARY, PRODUCER_SUMMARY, Pipeline, audit, summary

# What the original assignment's reference producer writes: no header, price a double.
REFERENCE: dict[str, Any] = json.loads((Path(__file__).parents[1] / "data" / "reference-order.avsc").read_text())


def bare(record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(REFERENCE), record)
    return buffer.getvalue()


def raw_pipeline(pipeline: Pipeline, tmp_path: Path, schema: object = REFERENCE) -> Pipeline:
    path = tmp_path / "reference-order.avsc"
    path.write_text(json.dumps(schema))
    return pipeline.with_env(AVRO_WIRE_FORMAT="raw", AVRO_WRITER_SCHEMA=str(path))


def test_bare_bodies_with_a_double_price_are_counted_to_the_cent(pipeline: Pipeline, tmp_path: Path) -> None:
    raw = raw_pipeline(pipeline, tmp_path)
    prices = [19.99, 0.015, 45.5, 1234.565, 0.1, 99999.99]
    records: list[tuple[bytes | None, bytes, list[tuple[str, str | bytes | None]]]] = [
        (f"O-REF-{n}".encode(), bare({"orderId": f"O-REF-{n}", "product": "Desk", "price": p}), [])
        for n, p in enumerate(prices)
    ]
    whole = bare({"orderId": "O-BAD-1", "product": "Desk", "price": 1.0})
    records += [(b"O-BAD-1", whole + b"\x00", []), (b"O-BAD-2", whole[:-2], []), (b"O-BAD-3", b"\x00" * 3, [])]
    records.append((b"O-BAD-4", b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01" + whole, []))  # a length of 2^62 bytes
    sent = raw.run("producer.py", "--count", "40", "--rate", "0", "--invalid-rate", "0.1", "--seed", "9")
    assert sent.returncode == 0, sent.stderr
    assert "bare Avro bodies, reference-order.avsc" in sent.stdout
    raw.produce(records)  # the producer created the topics

    consumed = raw.run("consumer.py", "--idle-exit", "3", "--quiet")

    assert consumed.returncode == 0, consumed.stderr
    got = summary(CONSUMER_SUMMARY, consumed.stdout)
    assert int(got["deserialization"]) == 4, "bodies with leftover bytes, cut short, not Avro, a length past the end"
    dlq = raw.read(raw.settings.dlq_topic)
    assert {r.key for r in dlq if r.header("dlq.reason") == "deserialization"} == {
        b"O-BAD-1",
        b"O-BAD-2",
        b"O-BAD-3",
        b"O-BAD-4",
    }
    stats = raw.run("consumer.py", "--stats").stdout
    count, sum_cents = counted_independently(raw)
    # Orders made invalid only by a bad quantity or customerId are valid once written without those fields.
    assert count >= len(prices) + int(summary(PRODUCER_SUMMARY, sent.stdout)["valid"])
    assert int(got["processed"]) == count
    assert f"count {count}, sum_cents {sum_cents}" in stats, stats
    assert "running average" in stats


def counted_independently(raw: Pipeline) -> tuple[int, int]:
    """(count, sum of cents) of the orders not dead-lettered, read back with the writer schema by fastavro."""
    schema = fastavro.parse_schema(REFERENCE)
    dead = {r.key for r in raw.read(raw.settings.dlq_topic)}
    count = total = 0
    for record in raw.read(raw.settings.orders_topic):
        if record.key not in dead:
            order: Any = fastavro.schemaless_reader(io.BytesIO(record.value or b""), schema, None)
            count += 1
            total += to_cents(order["price"])
    return count, total


def test_a_writer_schema_without_a_price_is_refused_before_connecting(pipeline: Pipeline, tmp_path: Path) -> None:
    no_price = {**REFERENCE, "fields": REFERENCE["fields"][:2]}
    raw = raw_pipeline(pipeline, tmp_path, no_price).with_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    for script in ("consumer.py", "producer.py"):
        refused = raw.run(script, "--idle-exit", "1") if script == "consumer.py" else raw.run(script, "--count", "1")
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [
            f"error: AVRO_WRITER_SCHEMA ({tmp_path}/reference-order.avsc) cannot carry an order: it has no field price"
        ]


def test_a_framed_format_asked_for_dead_letters_the_other(pipeline: Pipeline, registry_url: str) -> None:
    single = pipeline.run("producer.py", "--count", "10", "--rate", "0")
    framed = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    confluent = framed.run("producer.py", "--count", "5", "--rate", "0")
    assert single.returncode == confluent.returncode == 0, single.stderr + confluent.stderr

    only = framed.with_env(AVRO_WIRE_FORMAT="confluent").run("consumer.py", "--idle-exit", "3", "--quiet")

    assert only.returncode == 0, only.stderr
    got = summary(CONSUMER_SUMMARY, only.stdout)
    assert (int(got["processed"]), int(got["deserialization"])) == (5, 10)
    result = audit(framed)
    assert result.stats.count == 5
