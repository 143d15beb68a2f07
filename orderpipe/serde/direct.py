"""Hand-written Avro writers and readers for the known layouts of the order, as fastavro writes and reads them.

Encoding and decoding are on the hot paths, so the layouts of the known versions have
a direct writer and a direct reader for well-formed records (`DirectCodec`), chosen by
the writer schema's parsing canonical form. Unit tests hold them equal to fastavro,
byte for byte and on mutated input. Any other schema, and any record a direct reader
is unsure of, goes through fastavro, whose errors name what is wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from orderpipe.model.order import Order

__all__ = ["DIRECT_CODECS", "ORDER_LAYOUT", "DirectCodec", "DirectRead", "zigzag_varint"]

_FLOAT = struct.Struct("<f")

# A direct reader: the order in value[start:], or None to leave the record to fastavro.
DirectRead = Callable[[bytes, int], Order | None]


def zigzag_varint(number: int) -> bytes:
    """An Avro long (and a Kafka record's varint): zigzag, then 7 bits per byte, low bits first."""
    zigzag = (number << 1) ^ (number >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


# Longs (string lengths, quantities) from 0 to 511 have their encoding ready-made.
_SMALL_LONGS = tuple(zigzag_varint(n) for n in range(512))


def _avro_long(number: int) -> bytes:
    return _SMALL_LONGS[number] if 0 <= number < len(_SMALL_LONGS) else zigzag_varint(number)


def _avro_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _avro_long(len(data)) + data


def _avro_float(number: float) -> bytes:
    try:
        return _FLOAT.pack(number)
    except OverflowError:  # beyond float32's range: fastavro writes an infinity, and so do we
        return _FLOAT.pack(math.copysign(math.inf, number))


def _write_v1(order: Order) -> bytes:
    """The Avro body of an order under version 1 (orderId, product, price), as fastavro writes it."""
    return _avro_string(order.order_id) + _avro_string(order.product) + _avro_float(order.price)


def _write_v2(order: Order) -> bytes:
    """The Avro body under version 2: version 1's, then quantity (int) and customerId (union null | string)."""
    customer = b"\x00" if order.customer_id is None else b"\x02" + _avro_string(order.customer_id)
    return _write_v1(order) + _avro_long(order.quantity) + customer


# The direct readers are written out in full, without shared helpers: a function call
# is a good part of their time.


def _read_v1(value: bytes, start: int) -> Order | None:
    """The order in `value[start:]` written with version 1, or None to leave the record to fastavro.

    Takes only the common shape: both string lengths in one varint byte, valid UTF-8,
    and the float ending the value exactly. Anything else (longer strings, truncation,
    bad bytes) returns None, and fastavro decides and explains. The fields version 1
    lacks take their defaults (quantity 1, customerId null).
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


def _read_v2(value: bytes, start: int) -> Order | None:
    """The order in `value[start:]` written with version 2, or None to leave the record to fastavro.

    Version 1's common shape, then a quantity in one varint byte (-64 to 63), and a
    null customerId ending the value or a string one with its length in one byte
    ending it. Anything else returns None.
    """
    try:
        length = value[start]
        if length & 0x81:
            return None
        id_start = start + 1
        id_end = id_start + (length >> 1)
        length = value[id_end]
        if length & 0x81:
            return None
        product_start = id_end + 1
        product_end = product_start + (length >> 1)
        quantity = value[product_end + 4]  # the 4 bytes of the price come first
        branch = value[product_end + 5]
        if quantity & 0x80:  # a multi-byte quantity
            return None
        if branch == 0:  # customerId null
            if product_end + 6 != len(value):
                return None
            customer_id = None
        else:
            length = value[product_end + 6]
            if branch != 2 or length & 0x81 or product_end + 7 + (length >> 1) != len(value):
                return None
            customer_id = value[product_end + 7 :].decode("utf-8")
        return Order(
            value[id_start:id_end].decode("utf-8"),
            value[product_start:product_end].decode("utf-8"),
            _FLOAT.unpack_from(value, product_end)[0],
            (quantity >> 1) ^ -(quantity & 1),
            customer_id,
        )
    except (IndexError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class DirectCodec:
    """A hand-written writer and reader for one exact record layout, as fastavro would write and read it.

    `canonical` is the layout's parsing canonical form: a schema with the same form
    has the same binary encoding, so its records can take this path.
    """

    canonical: str
    write: Callable[[Order], bytes]
    read: DirectRead


def _canonical_of(fields: list[dict[str, Any]]) -> str:
    return to_parsing_canonical_form(fastavro.parse_schema({"type": "record", "name": "Order", "fields": fields}))


_V1_FIELDS: list[dict[str, Any]] = [
    {"name": "orderId", "type": "string"},
    {"name": "product", "type": "string"},
    {"name": "price", "type": "float"},
]
_V2_FIELDS = [*_V1_FIELDS, {"name": "quantity", "type": "int"}, {"name": "customerId", "type": ["null", "string"]}]
# The layout `Order` mirrors (version 2's): direct readers (which fill in Order's
# defaults, the same as order.avsc's, a unit test holds) stand in for schema resolution
# only when the reader schema has it.
ORDER_LAYOUT = DirectCodec(_canonical_of(_V2_FIELDS), _write_v2, _read_v2)
# The direct codec of each known layout, by its parsing canonical form.
DIRECT_CODECS = {
    codec.canonical: codec for codec in (DirectCodec(_canonical_of(_V1_FIELDS), _write_v1, _read_v1), ORDER_LAYOUT)
}
