"""Unit tests of the DLQ's reading: entries from records (honest and forged), filters, --since, lines, JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.core.dead_letters import DlqEntry, DlqFilter, dead_letter, parse_since, summary_line
from orderpipe.errors import ConfigError
from orderpipe.model.order import Order
from orderpipe.model.records import Incoming
from orderpipe.programs import dlq_app
from orderpipe.programs.dlq_app import list_dead_letters
from orderpipe.serde.codec import OrderDecoder
from orderpipe.serde.schemas import load_order_schema
from tests.unit.mock_cluster import MockCluster

SCHEMA = load_order_schema()
DECODE = OrderDecoder(SCHEMA).decode
NOW_MS = 1_796_000_000_000


def record(headers: dict[str, bytes], value: bytes | None = None, offset: int = 7) -> Incoming:
    return Incoming(
        "orders-dlq",
        2,
        offset,
        NOW_MS - 5000,
        b"O-1",
        SCHEMA.encode_single_object(Order("O-1", "Lamp", -3.0)) if value is None else value,
        tuple(headers.items()),
    )


HONEST = {
    "dlq.reason": b"validation",
    "error.class": b"ValidationError",
    "error.message": b"price must be > 0",
    "dlq.failed-at": str(NOW_MS).encode(),
    "original.topic": b"orders",
    "original.partition": b"1",
    "original.offset": b"42",
    "retry.attempt": b"0",
}


def test_a_dead_letter_is_read_from_its_headers_and_value() -> None:
    letter = dead_letter(record(HONEST), DECODE)
    assert (letter.reason, letter.order_id, letter.original_partition, letter.original_offset) == (
        "validation",
        "O-1",
        1,
        42,
    )
    line = letter.line("orders-dlq")
    assert line.startswith("orders-dlq-2@7 validation order O-1: ValidationError: price must be > 0 (failed 2026-")
    assert line.endswith("; from orders-1@42)")
    assert json.loads(json.dumps(letter.as_json()))["error_message"] == "price must be > 0"


def test_forged_headers_and_an_undecodable_value_are_shown_safely() -> None:
    forged = {
        "dlq.reason": b"\x1b[2Jvalidation\xff",
        "error.message": b"x" * 100_000,
        "dlq.failed-at": b"9" * 5000,
        "original.partition": b"-3",
        "original.offset": "４２".encode(),  # full-width digits are not Kafka's
    }
    letter = dead_letter(record(forged, value=b"\x00garbage"), DECODE)
    assert letter.reason == "\\x1b[2Jvalidation\ufffd"
    assert letter.order_id is None
    assert letter.error_message is not None
    assert len(letter.error_message) <= 1024 + 3
    assert letter.failed_at_ms is None
    assert letter.original_partition == -3
    assert letter.original_offset is None
    assert "\x1b" not in letter.line("orders-dlq")
    assert "order ?" in letter.line("orders-dlq")


def test_a_record_without_the_pipelines_headers_is_still_listed() -> None:
    letter = dead_letter(record({}), DECODE)
    assert letter.reason == "unknown"
    assert "no error recorded (failed time unknown; from origin unknown)" in letter.line("orders-dlq")


def test_a_forged_time_out_of_the_calendars_range_is_shown_as_a_number() -> None:
    letter = dead_letter(record({**HONEST, "dlq.failed-at": b"9" * 19}), DECODE)
    assert "failed 9999999999999999999 ms" in letter.line("orders-dlq")


def test_filters_match_on_reason_order_id_and_time() -> None:
    letter = dead_letter(record(HONEST), DECODE)
    assert DlqFilter().matches(letter, 0)
    assert DlqFilter(reason="validation", order_id="O-1", since_ms=NOW_MS).matches(letter, 0)
    assert not DlqFilter(reason="deserialization").matches(letter, 0)
    assert not DlqFilter(order_id="O-2").matches(letter, 0)
    assert not DlqFilter(since_ms=NOW_MS + 1).matches(letter, 0)
    undated = dead_letter(record({}), DECODE)
    assert DlqFilter(since_ms=NOW_MS - 5000).matches(undated, NOW_MS - 5000)  # the record's own time


def test_since_takes_durations_and_iso_times() -> None:
    assert parse_since("90s", NOW_MS) == NOW_MS - 90_000
    assert parse_since("2h", NOW_MS) == NOW_MS - 7_200_000
    assert parse_since("7d", NOW_MS) == NOW_MS - 7 * 86_400_000
    assert parse_since("2026-11-30", NOW_MS) == 1_795_996_800_000  # midnight UTC
    assert parse_since("2026-11-30T12:00:00Z", NOW_MS) == parse_since("2026-11-30T13:00:00+01:00", NOW_MS)
    with pytest.raises(ConfigError, match=r"--since expects a duration .* got 'yesterday'"):
        parse_since("yesterday", NOW_MS)


def test_the_summary_counts_by_reason() -> None:
    letters = [dead_letter(record(HONEST, offset=n), DECODE) for n in range(3)]
    letters.append(dead_letter(record({"dlq.reason": b"deserialization"}), DECODE))
    assert summary_line(letters) == "4 dead letters (deserialization 1, validation 3)"
    assert summary_line([]) == "0 dead letters"


def test_the_dlq_is_listed_from_the_mock_cluster(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    values = [SCHEMA.encode_single_object(Order(f"O-{n}", "Lamp", -1.0)) if n % 2 else b"\x00poison" for n in range(6)]
    headers = [("dlq.reason", b"validation" if n % 2 else b"deserialization") for n in range(6)]
    producer = Producer({"bootstrap.servers": mock_cluster.bootstrap})
    for n, value in enumerate(values):
        producer.produce(settings.dlq_topic, value, f"O-{n}".encode(), partition=n % 2, headers=[headers[n]])
    assert producer.flush(10) == 0
    shown: list[DlqEntry] = []
    summary = list_dead_letters(settings, DlqFilter(reason="validation"), limit=2, show=shown.append)
    assert summary == "3 dead letters (validation 3)"
    assert [letter.order_id for letter in shown] in (["O-1", "O-3"], ["O-1", "O-5"], ["O-3", "O-5"])
    assert list_dead_letters(settings, DlqFilter(), limit=None, show=lambda _letter: None) == (
        "6 dead letters (deserialization 3, validation 3)"
    )


class RegistryWithout:
    """A schema registry that knows no id (as a stand-in for confluent-kafka's client)."""

    def get_schema(self, schema_id: int) -> object:
        raise SchemaRegistryError(404, 40403, f"schema {schema_id} not found")


def test_with_a_registry_framed_values_are_looked_up_and_unknown_ids_leave_the_order_unknown(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = mock_cluster.settings(SCHEMA_REGISTRY_URL="http://127.0.0.1:1/apis/ccompat/v7")

    @contextmanager
    def registry(_settings: object) -> Iterator[RegistryWithout]:
        yield RegistryWithout()

    monkeypatch.setattr(dlq_app, "connect_registry", registry)
    producer = Producer({"bootstrap.servers": mock_cluster.bootstrap})
    framed = b"\x00\x00\x00\x00\x07" + b"\x02"
    producer.produce(settings.dlq_topic, framed, b"O-9", headers=[("dlq.reason", b"deserialization")])
    producer.produce(settings.dlq_topic, SCHEMA.encode_single_object(Order("O-8", "Lamp", -1.0)), b"O-8")
    assert producer.flush(10) == 0
    shown: list[DlqEntry] = []
    assert list_dead_letters(settings, DlqFilter(), limit=None, show=shown.append).startswith("2 dead letters")
    assert sorted(str(letter.order_id) for letter in shown) == ["None", "O-8"]
