"""Both wire formats: round trips, format detection and every way bytes can be bad."""

import io
import json
import random
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orderpipe.codec import OrderDecoder, OrderSchema, _read_order, load_order_schema, parse_schema_text
from orderpipe.errors import DeserializationError
from orderpipe.generator import OrderFactory
from orderpipe.order import Order

SCHEMA = load_order_schema()
ORDER = Order("O-7Q2M", "Keyboard", 45.5)
# Written out by hand from the Avro specification's Parsing Canonical Form rules.
CANONICAL = (
    '{"name":"Order","type":"record","fields":[{"name":"orderId","type":"string"},'
    '{"name":"product","type":"string"},{"name":"price","type":"float"}]}'
)


def crc64_avro(data: bytes) -> int:
    """The reference CRC-64-AVRO from the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def confluent(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def test_schema_file_keeps_the_original_fields_and_documents_them() -> None:
    schema = json.loads((Path(__file__).parents[2] / "order.avsc").read_text())
    assert [(f["name"], f["type"]) for f in schema["fields"]] == [
        ("orderId", "string"),
        ("product", "string"),
        ("price", "float"),
    ]
    assert all(f.get("doc") for f in schema["fields"])


def test_single_object_header_carries_the_little_endian_crc64_fingerprint() -> None:
    encoded = SCHEMA.encode_single_object(ORDER)
    assert encoded[:2] == b"\xc3\x01"
    assert encoded[2:10] == struct.pack("<Q", crc64_avro(CANONICAL.encode()))
    assert encoded[10:] == SCHEMA.encode_body(ORDER)


def test_single_object_round_trip() -> None:
    assert OrderDecoder(SCHEMA).decode(SCHEMA.encode_single_object(ORDER)) == ORDER


def test_confluent_format_round_trip_through_the_lookup() -> None:
    looked_up: list[int] = []

    def lookup(schema_id: int) -> Any:
        looked_up.append(schema_id)
        return SCHEMA.parsed

    decoded = OrderDecoder(SCHEMA, lookup).decode(confluent(42, SCHEMA.encode_body(ORDER)))
    assert decoded == ORDER
    assert looked_up == [42]


def test_a_newer_writer_schema_with_an_extra_field_is_resolved() -> None:
    newer = json.loads(SCHEMA.text)
    newer["fields"].append({"name": "currency", "type": "string", "default": "USD"})
    writer = parse_schema_text(json.dumps(newer))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, {**ORDER.to_record(), "currency": "EUR"})
    assert OrderDecoder(SCHEMA, lambda _id: writer).decode(confluent(7, buffer.getvalue())) == ORDER


def _unknown_id(schema_id: int) -> Any:
    raise DeserializationError(f"schema id {schema_id} is unknown")


BAD = {
    "empty": b"",
    "garbage": b"\xde\xad\xbe\xef not avro",
    "plain json": b'{"orderId": "O-1"}',
    "wrong magic second byte": b"\xc3\x02" + SCHEMA.encode_single_object(ORDER)[2:],
    "single-object header truncated": b"\xc3\x01\x8c\x9d",
    "single-object body truncated": SCHEMA.encode_single_object(ORDER)[:-2],
    "single-object body missing": SCHEMA.encode_single_object(ORDER)[:10],
    "unknown fingerprint": b"\xc3\x01" + b"\x01" * 8 + SCHEMA.encode_body(ORDER),
    "trailing bytes": SCHEMA.encode_single_object(ORDER) + b"\x00",
    "confluent header truncated": b"\x00\x00\x01",
    "confluent body truncated": confluent(1, SCHEMA.encode_body(ORDER)[:3]),
    "confluent unknown schema id": confluent(999, SCHEMA.encode_body(ORDER)),
    "negative string length": b"\xc3\x01" + SCHEMA.fingerprint + b"\x01",
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_undecodable_bytes_raise_a_deserialization_error(value: bytes) -> None:
    with pytest.raises(DeserializationError):
        OrderDecoder(SCHEMA, _unknown_id).decode(value)


def test_confluent_records_without_a_registry_name_the_missing_setting() -> None:
    with pytest.raises(DeserializationError, match="SCHEMA_REGISTRY_URL"):
        OrderDecoder(SCHEMA).decode(confluent(1, SCHEMA.encode_body(ORDER)))


@pytest.mark.parametrize(
    "order",
    [
        Order("O-1", "Keyboard", 123.45),
        Order("", "", 0.0),
        Order("O-" + "x" * 62, "Ünïcödé ✓ " * 30, 99999.99),  # lengths past one varint byte
        Order("O-2", "Mouse", -1.5),
        Order("O-3", "Mouse", float("nan")),
        Order("O-4", "Mouse", 1e39),  # beyond float32: written as infinity
        Order("O-5", "Mouse", -1e39),
        Order("O-6", "p" * 70_000, 1.0),  # a length past the ready-made prefixes
    ],
)
def test_the_direct_writer_matches_fastavro_byte_for_byte(order: Order) -> None:
    assert SCHEMA.has_order_layout
    general = replace(SCHEMA, has_order_layout=False)
    assert SCHEMA.encode_body(order) == general.encode_body(order)


def test_a_schema_of_another_shape_is_written_by_fastavro() -> None:
    text = json.dumps(
        {
            "type": "record",
            "name": "Order",
            "fields": [
                {"name": "orderId", "type": "string"},
                {"name": "product", "type": "string"},
                {"name": "price", "type": "float"},
                {"name": "note", "type": "string", "default": ""},
            ],
        }
    )
    parsed = parse_schema_text(text)
    schema = OrderSchema(text, parsed, b"", has_order_layout=False)
    body = schema.encode_body(Order("O-1", "Keyboard", 1.5))
    record = fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
    assert isinstance(record, dict)
    assert record["note"] == ""


def _fastavro_order(body: bytes) -> Order | None:
    """What fastavro makes of a body (None when it refuses it), as the general decoder would."""
    buffer = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buffer, SCHEMA.parsed, None)
    except Exception:
        return None
    if buffer.tell() != len(body) or not isinstance(record, dict):
        return None
    return Order.from_record(record)


def test_the_direct_reader_never_disagrees_with_fastavro() -> None:
    """On well-formed and on mutated bodies it returns fastavro's order, or leaves the body to fastavro."""
    rng = random.Random(3)
    factory = OrderFactory(rng, "READ", invalid_rate=0.3, max_price_cents=10_000_000)
    bodies = [SCHEMA.encode_body(g.order) for g in (factory.make(SCHEMA.encode_single_object) for _ in range(300))]
    bodies += [SCHEMA.encode_body(Order("O-1", "é" * 40, 1.0)), b"", b"\x00", b"\x02a\x02b\x00\x00\x80"]
    mutated = []
    for body in bodies[:300]:
        for _ in range(10):
            data = bytearray(body)
            cut = rng.randrange(len(data) + 1)
            choice = rng.randrange(3)
            if choice == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice == 1:
                del data[cut:]
            else:
                data[cut:cut] = rng.randbytes(rng.randrange(1, 4))
            mutated.append(bytes(data))
    taken = 0
    for body in bodies + mutated:
        direct = _read_order(body, 0)
        if direct is None:
            continue
        taken += 1
        general = _fastavro_order(body)
        assert general is not None, body
        assert (direct.order_id, direct.product) == (general.order_id, general.product)
        assert struct.pack("<f", direct.price) == struct.pack("<f", general.price), body
    assert taken > 300  # the common shape really takes the fast path


def test_records_the_direct_reader_leaves_alone_get_fastavros_error() -> None:
    truncated = SCHEMA.encode_single_object(ORDER)[:-2]
    with pytest.raises(DeserializationError, match="Avro body is not a valid order"):
        OrderDecoder(SCHEMA).decode(truncated)
