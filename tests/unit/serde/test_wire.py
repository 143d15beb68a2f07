"""AVRO_WIRE_FORMAT: bare bodies read and written with AVRO_WRITER_SCHEMA (a double price included), writer
schemas refused with one sentence, and the framed formats held to the one asked for."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orderpipe.config.settings import build_settings
from orderpipe.errors import ConfigError, DeserializationError
from orderpipe.model.order import Order, validate
from orderpipe.serde.codec import OrderDecoder
from orderpipe.serde.schemas import load_order_schema
from orderpipe.serde.wire import load_raw_schema, order_decoder, raw_reader

# What the original assignment's reference producer writes: no header, price a double.
REFERENCE: dict[str, Any] = json.loads((Path(__file__).parents[2] / "data" / "reference-order.avsc").read_text())


def schema_file(tmp_path: Path, schema: object, name: str = "writer.avsc") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return str(path)


def bare(schema: Any, record: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def test_a_double_price_goes_to_cents_exactly_as_a_float_does(tmp_path: Path) -> None:
    raw = load_raw_schema(schema_file(tmp_path, REFERENCE), producing=False)
    for price in (19.99, 0.005, 0.015, 45.5, 99999.99, 1e-9):
        order = raw.decode(bare(REFERENCE, {"orderId": "O-1", "product": "Lamp", "price": price}))
        assert order == Order("O-1", "Lamp", price, 1, None)
        as_float = Order("O-1", "Lamp", fastavro_float(price))
        if price >= 0.01:
            assert validate(order, 10**9).price_cents == validate(as_float, 10**9).price_cents


def fastavro_float(value: float) -> float:
    """The value as the float32 a float field would have carried."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, {"type": "float"}, value)
    buffer.seek(0)
    result: float = fastavro.schemaless_reader(buffer, {"type": "float"}, None)  # type: ignore[assignment]
    return result


def test_bare_bodies_round_trip_and_optional_fields_are_read(tmp_path: Path) -> None:
    with_extras = {
        **REFERENCE,
        "fields": [
            *REFERENCE["fields"],
            {"name": "quantity", "type": "long", "default": 1},
            {"name": "customerId", "type": ["null", "string"], "default": None},
            {"name": "channel", "type": "string", "default": "web"},
        ],
    }
    raw = load_raw_schema(schema_file(tmp_path, with_extras), producing=True)
    order = Order("O-2", "Desk", 12.5, 3, "C-9")
    assert raw.decode(raw.encode(order)) == order
    assert raw.source == "writer.avsc"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "record has no value"),
        (None, "record has no value"),
        (bare(REFERENCE, {"orderId": "O-1", "product": "Lamp", "price": 1.0}) + b"\x00", "1 unexpected bytes"),
        (bare(REFERENCE, {"orderId": "O-1", "product": "Lamp", "price": 1.0})[:-3], "does not decode with writer.avsc"),
        (b"\x7f" + b"x" * 10, "does not decode"),
        (b"\x02\xff\x02a" + b"\x00" * 8, "does not decode"),
    ],
)
def test_a_body_that_does_not_decode_cleanly_is_a_deserialization_error(
    tmp_path: Path, value: bytes | None, words: str
) -> None:
    raw = load_raw_schema(schema_file(tmp_path, REFERENCE), producing=False)
    with pytest.raises(DeserializationError, match=words):
        raw.decode(value)


def _without(name: str) -> dict[str, object]:
    return {**REFERENCE, "fields": [f for f in REFERENCE["fields"] if f["name"] != name]}


def _with(name: str, kind: object) -> dict[str, object]:
    fields = [f for f in REFERENCE["fields"] if f["name"] != name]
    return {**REFERENCE, "fields": [*fields, {"name": name, "type": kind}]}


@pytest.mark.parametrize(
    ("schema", "producing", "words"),
    [
        (_without("price"), False, "cannot carry an order: it has no field price"),
        (_with("price", "string"), False, "its field price is string, not double or float"),
        (_with("orderId", ["null", "string"]), False, "its field orderId is null/string, not string"),
        (_with("quantity", "string"), False, "its field quantity is string, not int or long"),
        (_with("region", "string"), True, "its field region has no default, and the producer has no value for it"),
        ({"type": "string"}, False, "it is not a record"),
    ],
)
def test_a_writer_schema_that_cannot_carry_an_order_is_refused_in_one_sentence(
    tmp_path: Path, schema: object, producing: bool, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as refused:
        load_raw_schema(schema_file(tmp_path, schema), producing=producing)
    assert str(refused.value).startswith("AVRO_WRITER_SCHEMA (")


def test_a_region_without_default_is_fine_for_reading(tmp_path: Path) -> None:
    assert load_raw_schema(schema_file(tmp_path, _with("region", "string")), producing=False).source


@pytest.mark.parametrize(("text", "words"), [(None, "cannot be read"), ("{not json", "is not an Avro schema")])
def test_an_unreadable_writer_schema_is_named(tmp_path: Path, text: str | None, words: str) -> None:
    path = tmp_path / "bad.avsc"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_raw_schema(str(path), producing=False)
    with pytest.raises(ConfigError, match="needs AVRO_WRITER_SCHEMA"):
        load_raw_schema("", producing=False)


def test_the_settings_name_what_each_format_needs() -> None:
    with pytest.raises(ConfigError, match="AVRO_WIRE_FORMAT must be one of auto, confluent, single-object, raw"):
        build_settings({"AVRO_WIRE_FORMAT": "json"})
    with pytest.raises(ConfigError, match="AVRO_WIRE_FORMAT=raw needs AVRO_WRITER_SCHEMA"):
        build_settings({"AVRO_WIRE_FORMAT": "raw"})
    with pytest.raises(ConfigError, match="AVRO_WIRE_FORMAT=confluent needs SCHEMA_REGISTRY_URL"):
        build_settings({"AVRO_WIRE_FORMAT": "Confluent"})
    assert build_settings({"AVRO_WIRE_FORMAT": "Single-Object"}).avro_wire_format == "single-object"


@pytest.mark.parametrize(
    ("raw", "got"),
    [
        ({"AVRO_WRITER_SCHEMA": "reference-order.avsc"}, "auto"),
        ({"AVRO_WRITER_SCHEMA": "reference-order.avsc", "AVRO_WIRE_FORMAT": "single-object"}, "single-object"),
    ],
)
def test_a_writer_schema_without_raw_is_refused_naming_both_settings(raw: dict[str, str], got: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build_settings(raw)
    assert str(refused.value) == (
        f"AVRO_WRITER_SCHEMA needs AVRO_WIRE_FORMAT=raw, got AVRO_WIRE_FORMAT={got}: only bare bodies are read and "
        "written with it (set AVRO_WIRE_FORMAT=raw, or leave AVRO_WRITER_SCHEMA empty)"
    )
    assert refused.value.exit_code == 2


def test_an_empty_writer_schema_needs_no_raw_and_a_bad_format_is_named_once() -> None:
    assert build_settings({"AVRO_WRITER_SCHEMA": " "}).avro_writer_schema == ""
    assert build_settings({"AVRO_WRITER_SCHEMA": "w.avsc", "AVRO_WIRE_FORMAT": "RAW"}).avro_wire_format == "raw"
    with pytest.raises(ConfigError) as refused:
        build_settings({"AVRO_WRITER_SCHEMA": "w.avsc", "AVRO_WIRE_FORMAT": "bare"})
    assert str(refused.value) == "AVRO_WIRE_FORMAT must be one of auto, confluent, single-object, raw, got 'bare'"


def test_a_framed_format_asked_for_is_the_only_one_read(tmp_path: Path) -> None:
    schema = load_order_schema()
    single = schema.encode_single_object(Order("O-3", "Lamp", 2.0))
    framed = b"\x00\x00\x00\x00\x01" + schema.encode_body(Order("O-3", "Lamp", 2.0))
    only_single = OrderDecoder(schema, lambda _id: schema.parsed, wire_format="single-object")
    only_confluent = OrderDecoder(schema, lambda _id: schema.parsed, wire_format="confluent")
    assert only_single.decode(single).order_id == only_confluent.decode(framed).order_id == "O-3"
    with pytest.raises(
        DeserializationError, match="not single-object Avro, as AVRO_WIRE_FORMAT asks: first bytes 0000"
    ):
        only_single.decode(framed)
    with pytest.raises(DeserializationError, match="not the Confluent wire format"):
        only_confluent.decode(single)


def test_the_settings_decoder_reads_bare_bodies_with_raw(tmp_path: Path) -> None:
    settings = build_settings({"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": schema_file(tmp_path, REFERENCE)})
    decoder = order_decoder(settings, None, raw_reader(settings))
    assert decoder.decode(bare(REFERENCE, {"orderId": "O-4", "product": "Pen", "price": 1.25})).price == 1.25
    assert raw_reader(build_settings({})) is None


def _with_field(field_type: object) -> dict[str, Any]:
    return {**REFERENCE, "fields": [*REFERENCE["fields"], {"name": "extra", "type": field_type, "default": None}]}


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["null", {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}], "Node"),
        (["null", {"type": "array", "items": "null"}], "an array's items take no bytes"),
        (["null", {"type": "array", "items": {"type": "record", "name": "Empty", "fields": []}}], "take no bytes"),
        (["null", {"type": "array", "items": {"type": "fixed", "name": "Zero", "size": 0}}], "take no bytes"),
    ],
)
def test_a_writer_schema_whose_bodies_could_cost_without_bound_is_refused(
    tmp_path: Path, extra: object, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        load_raw_schema(schema_file(tmp_path, _with_field(extra)), producing=False)


def test_logical_types_are_read_as_their_plain_values(tmp_path: Path) -> None:
    annotated = {
        **REFERENCE,
        "fields": [
            {"name": "orderId", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "product", "type": "string"},
            {"name": "price", "type": "double"},
            {"name": "quantity", "type": {"type": "int", "logicalType": "date"}},
        ],
    }
    raw = load_raw_schema(schema_file(tmp_path, annotated), producing=False)
    body = bare(REFERENCE, {"orderId": "0b8e6a54-0000-4000-8000-000000000000", "product": "Pen", "price": 2.0})
    order = raw.decode(body + b"\x04")  # quantity 2, as the int a date is
    assert order == Order("0b8e6a54-0000-4000-8000-000000000000", "Pen", 2.0, 2, None)
