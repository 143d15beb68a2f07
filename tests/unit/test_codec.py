"""Both wire formats: round trips, format detection and every way bytes can be bad."""

import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orderpipe.codec import OrderDecoder, load_order_schema, parse_schema_text
from orderpipe.errors import DeserializationError
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
