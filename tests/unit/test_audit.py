"""The independent audit (tests/audit.py): bare Avro bodies under AVRO_WIRE_FORMAT=raw, orders written twice."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from orderpipe.config.settings import build_settings
from orderpipe.core.stats import encode_stats, stats_key
from orderpipe.model.money import RunningAverage, to_cents
from tests.audit import audit_records, raw_writer_schema

REFERENCE: dict[str, Any] = json.loads((Path(__file__).parents[1] / "data" / "reference-order.avsc").read_text())


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def header(self, _name: str) -> str | None:
        return None


def bare(record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(REFERENCE), record)
    return buffer.getvalue()


def test_bare_bodies_are_read_with_the_writer_schema_and_malformed_ones_are_poison(tmp_path: Path) -> None:
    path = tmp_path / "reference.avsc"
    path.write_text(json.dumps(REFERENCE))
    settings = build_settings({"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": str(path)})
    good = bare({"orderId": "O-1", "product": "Lamp", "price": 19.99})
    orders = [
        Rec("orders", 0, 0, b"O-1", good),
        Rec("orders", 0, 1, b"O-2", bare({"orderId": "O-2", "product": "Desk", "price": -1.0})),  # invalid
        Rec("orders", 0, 2, b"O-3", good + b"\x00"),  # bytes left over
        Rec("orders", 0, 3, b"O-4", good[:-2]),  # cut short
        Rec("orders", 0, 4, b"O-5", b"\xc3\x01" + bytes(8) + good),  # framed: not a bare body
    ]
    state = encode_stats(RunningAverage(1, to_cents(19.99)), 5)
    stats = [Rec("stats", 0, 0, stats_key("g", "orders", 0).encode(), state)]

    result = audit_records(orders, [], [], stats, 10_000_000, group="g", raw=raw_writer_schema(settings))

    assert (result.valid, result.invalid, result.poison) == (1, 1, 3)
    assert result.expected == RunningAverage(1, 1999)
    assert result.counted_exactly


def test_a_relative_writer_schema_is_read_from_the_repository() -> None:
    settings = build_settings({"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": "schemas/order-v2.avsc"})
    assert raw_writer_schema(settings)["name"] == "Order"
    assert raw_writer_schema(build_settings({})) is None


def test_an_order_written_twice_is_a_duplicate_even_when_the_consumer_counted_both_records(tmp_path: Path) -> None:
    path = tmp_path / "reference.avsc"
    path.write_text(json.dumps(REFERENCE))
    settings = build_settings({"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": str(path)})
    good = bare({"orderId": "O-1", "product": "Lamp", "price": 19.99})
    keyless = [Rec("orders", 0, 2, None, b"junk"), Rec("orders", 0, 3, None, b"junk")]  # poison, not copies
    orders = [Rec("orders", 0, 0, b"O-1", good), Rec("orders", 0, 1, b"O-1", good), *keyless]
    state = encode_stats(RunningAverage(2, 2 * 1999), 4)
    stats = [Rec("stats", 0, 0, stats_key("g", "orders", 0).encode(), state)]

    result = audit_records(orders, [], [], stats, 10_000_000, group="g", raw=raw_writer_schema(settings))

    assert result.order_duplicates == 1
    assert not result.exact
    assert "duplicates: orders 1," in result.describe()


def test_an_invalid_order_not_dead_lettered_is_missing_and_its_place_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "reference.avsc"
    path.write_text(json.dumps(REFERENCE))
    settings = build_settings({"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": str(path)})
    good = bare({"orderId": "O-1", "product": "Lamp", "price": 19.99})
    free = bare({"orderId": "O-2", "product": "Lamp", "price": 0.0})  # invalid: it belongs in the DLQ
    orders = [Rec("orders", 0, 0, b"O-1", good), Rec("orders", 1, 5, b"O-2", free)]
    retries = [Rec("orders-retry", 0, 0, b"O-2", free)]
    stats = [Rec("stats", 0, 0, stats_key("g", "orders", 0).encode(), encode_stats(RunningAverage(1, 1999), 1))]

    result = audit_records(orders, [], retries, stats, 10_000_000, group="g", raw=raw_writer_schema(settings))

    assert result.counted_exactly
    assert result.missing == 1
    assert result.missing_at == ((1, 5, 1),)
    assert not result.exact
