"""Avro wire formats for orders: encoding, format detection and decoding.

Two formats share the `orders` topic (DESIGN section 4):

* Avro single-object encoding: 0xC3 0x01, the writer schema's 8-byte little-endian
  CRC-64-AVRO fingerprint, then the Avro body. Used when there is no registry.
* Confluent wire format: 0x00, a 4-byte big-endian schema id, then the Avro body.
  The writer schema is looked up by id through a `SchemaLookup` the caller supplies
  (the registry client lives at the edge, in `registry.py`).

Everything that is not a decodable order raises `DeserializationError`.

Encoding and decoding are on the hot paths, so the three-field order schema of
`order.avsc` has a direct writer (`_write_order`, about four times faster than
fastavro's general one) and a direct reader for well-formed records (`_read_order`).
Unit tests hold them equal to fastavro, byte for byte and on mutated input. Any other
schema, and any record the direct reader is unsure of, goes through fastavro, whose
errors name what is wrong.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from orderpipe.errors import DeserializationError
from orderpipe.order import Order

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "OrderDecoder",
    "OrderSchema",
    "SchemaLookup",
    "load_order_schema",
    "schema_id_of",
    "zigzag_varint",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
DEFAULT_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "order.avsc"

# Returns the parsed writer schema registered under a schema id, or raises
# DeserializationError when the id is unknown or cannot be looked up.
SchemaLookup = Callable[[int], Any]


# The fields `_write_order` writes, in order, as (name, Avro type).
ORDER_LAYOUT = (("orderId", "string"), ("product", "string"), ("price", "float"))
_FLOAT = struct.Struct("<f")
_SCHEMA_ID = struct.Struct(">I")


def zigzag_varint(number: int) -> bytes:
    """An Avro long (and a Kafka record's varint): zigzag, then 7 bits per byte, low bits first."""
    zigzag = (number << 1) ^ (number >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


# String lengths up to this many bytes have their prefix ready-made.
_LENGTH_PREFIXES = tuple(zigzag_varint(n) for n in range(512))


def _avro_string(text: str) -> bytes:
    data = text.encode("utf-8")
    size = len(data)
    return (_LENGTH_PREFIXES[size] if size < len(_LENGTH_PREFIXES) else zigzag_varint(size)) + data


def _write_order(order: Order) -> bytes:
    """The Avro body of an order under ORDER_LAYOUT, as fastavro would write it."""
    try:
        price = _FLOAT.pack(order.price)
    except OverflowError:  # beyond float32's range: fastavro writes an infinity, and so do we
        price = _FLOAT.pack(math.copysign(math.inf, order.price))
    return _avro_string(order.order_id) + _avro_string(order.product) + price


def _read_order(value: bytes, start: int) -> Order | None:
    """The order in `value[start:]` under ORDER_LAYOUT, or None to leave the record to fastavro.

    Takes only the common shape: both string lengths in one varint byte, valid UTF-8,
    and the float ending the value exactly. Anything else (longer strings, truncation,
    bad bytes) returns None, and fastavro decides and explains.
    """
    try:
        length = value[start]
        if length & 0x81:  # a multi-byte or negative length
            return None
        id_start = start + 1
        id_end = id_start + (length >> 1)
        length = value[id_end]
        if length & 0x81:
            return None
        product_start = id_end + 1
        product_end = product_start + (length >> 1)
        if product_end + 4 != len(value):
            return None
        return Order(
            value[id_start:id_end].decode("utf-8"),
            value[product_start:product_end].decode("utf-8"),
            _FLOAT.unpack_from(value, product_end)[0],
        )
    except (IndexError, UnicodeDecodeError):
        return None


def _layout(parsed: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((field["name"], field["type"]) for field in parsed.get("fields", ()))


@dataclass(frozen=True)
class OrderSchema:
    """The order schema, parsed once, with what both wire formats need from it."""

    text: str
    parsed: Any
    fingerprint: bytes
    # True when the schema is exactly ORDER_LAYOUT, so the direct writer applies.
    has_order_layout: bool = False

    def encode_body(self, order: Order) -> bytes:
        """The plain Avro body of an order, with no header."""
        if self.has_order_layout:
            return _write_order(order)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.parsed, order.to_record())
        return buffer.getvalue()

    def encode_single_object(self, order: Order) -> bytes:
        """An order in Avro single-object encoding (no registry needed to read it)."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint + self.encode_body(order)


def parse_schema_text(text: str) -> Any:
    """Parses Avro schema JSON into fastavro's form; bad JSON or schema raises ValueError."""
    return fastavro.parse_schema(json.loads(text))


def load_order_schema(path: Path = DEFAULT_SCHEMA_PATH) -> OrderSchema:
    """Reads and parses `order.avsc` and computes its CRC-64-AVRO fingerprint."""
    text = path.read_text(encoding="utf-8")
    parsed = parse_schema_text(text)
    # fastavro renders the fingerprint as hex of its little-endian bytes, which is
    # the byte order the single-object header wants.
    raw = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return OrderSchema(text=text, parsed=parsed, fingerprint=raw, has_order_layout=_layout(parsed) == ORDER_LAYOUT)


def schema_id_of(value: bytes | None) -> int | None:
    """The schema id of a value in the Confluent wire format, else None."""
    if value is None or len(value) < _CONFLUENT_HEADER or not value.startswith(CONFLUENT_MAGIC):
        return None
    schema_id: int = _SCHEMA_ID.unpack_from(value, 1)[0]
    return schema_id


class OrderDecoder:
    """Detects the wire format of a record value and decodes it into an `Order`.

    Args:
        schema: the reader schema (ours); writer schemas are resolved against it.
        lookup: resolves Confluent schema ids; None when no registry is configured.
    """

    def __init__(self, schema: OrderSchema, lookup: SchemaLookup | None = None) -> None:
        self._schema = schema
        self._lookup = lookup

    def decode(self, value: bytes | None) -> Order:
        """Decodes one record value.

        Raises:
            DeserializationError: for an empty value, an unknown magic, an unknown
                fingerprint or schema id, or a body that is not a valid order.
        """
        if not value:
            raise DeserializationError("record has no value")
        if value.startswith(SINGLE_OBJECT_MAGIC):
            if len(value) < _SINGLE_OBJECT_HEADER:
                raise DeserializationError("single-object header is truncated")
            fp = value[2:_SINGLE_OBJECT_HEADER]
            if fp != self._schema.fingerprint:
                raise DeserializationError(f"unknown writer schema fingerprint {fp.hex()}")
            if self._schema.has_order_layout:
                order = _read_order(value, _SINGLE_OBJECT_HEADER)
                if order is not None:
                    return order
            return self._read_body(value, _SINGLE_OBJECT_HEADER, self._schema.parsed)
        if value.startswith(CONFLUENT_MAGIC):
            if len(value) < _CONFLUENT_HEADER:
                raise DeserializationError("schema-registry header is truncated")
            (schema_id,) = struct.unpack(">I", value[1:_CONFLUENT_HEADER])
            if self._lookup is None:
                raise DeserializationError(
                    f"record uses the schema-registry format (schema id {schema_id}) but SCHEMA_REGISTRY_URL is not set"
                )
            return self._read_body(value, _CONFLUENT_HEADER, self._lookup(schema_id))
        raise DeserializationError(f"unknown wire format: first bytes {value[:2].hex()}")

    def _read_body(self, value: bytes, start: int, writer: Any) -> Order:
        buffer = io.BytesIO(value)
        buffer.seek(start)
        try:
            record = fastavro.schemaless_reader(buffer, writer, self._schema.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise DeserializationError(f"Avro body is not a valid order: {type(exc).__name__}: {exc}") from exc
        if buffer.tell() != len(value):
            raise DeserializationError(f"{len(value) - buffer.tell()} unexpected bytes after the Avro body")
        if not isinstance(record, dict):
            raise DeserializationError("Avro body is not a record")
        return Order.from_record(record)
