"""Avro wire formats for orders: schema versions, encoding, format detection and decoding.

Two formats share the `orders` topic (the README's "Topics, wire formats and headers"):

* Avro single-object encoding: 0xC3 0x01, the writer schema's 8-byte little-endian
  CRC-64-AVRO fingerprint, then the Avro body. Used when there is no registry. The
  writer schema is found by fingerprint among the versions in `schemas/`.
* Confluent wire format: 0x00, a 4-byte big-endian schema id, then the Avro body.
  The writer schema is looked up by id through a `SchemaLookup` the caller supplies
  (the registry client lives at the edge, in `orderpipe/kafka/registry.py`).

Every version of the order schema is kept as `schemas/order-vN.avsc` (a `SchemaSet`);
`order.avsc` equals the newest, which is the reader schema: a record written with any
version is resolved to it (Avro schema resolution, with fastavro), so a version 1
record reads with version 2's defaults, and a newer writer's extra fields are skipped.
Everything that is not a decodable order raises `DeserializationError`.

Encoding and decoding are on the hot paths, so the layouts of the known versions have
a direct writer and a direct reader for well-formed records (`DirectCodec`), chosen by
the writer schema's parsing canonical form. Unit tests hold them equal to fastavro,
byte for byte and on mutated input. Any other schema, and any record a direct reader
is unsure of, goes through fastavro, whose errors name what is wrong.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from orderpipe.config.settings import AUTO, CONFLUENT, RAW, SINGLE_OBJECT
from orderpipe.errors import ConfigError, DeserializationError
from orderpipe.model.order import Order
from orderpipe.text import printable

__all__ = [
    "CONFLUENT_MAGIC",
    "SCHEMAS_DIR",
    "SINGLE_OBJECT_MAGIC",
    "DirectCodec",
    "DirectRead",
    "OrderDecoder",
    "OrderSchema",
    "SchemaLookup",
    "SchemaSet",
    "incompatibility",
    "load_order_schema",
    "load_schema_set",
    "parse_schema_text",
    "schema_id_of",
    "unreadable_shape",
    "zigzag_varint",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
_VERSION_FILE = re.compile(r"order-v([1-9][0-9]*)\.avsc")

# Returns the parsed writer schema registered under a schema id, or raises
# DeserializationError when the id is unknown or cannot be looked up.
SchemaLookup = Callable[[int], Any]

_FLOAT = struct.Struct("<f")
_SCHEMA_ID = struct.Struct(">I")
# Writer schemas of Confluent records kept with their direct reader, per decoder.
_MAX_WRITERS = 1_000

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
_DIRECT = {
    codec.canonical: codec
    for codec in (
        DirectCodec(_canonical_of(_V1_FIELDS), _write_v1, _read_v1),
        DirectCodec(_canonical_of(_V2_FIELDS), _write_v2, _read_v2),
    )
}
# The layout `Order` mirrors: direct readers (which fill in Order's defaults, the same
# as order.avsc's, a unit test holds) stand in for schema resolution only when the
# reader schema has it.
_ORDER_CANONICAL = _canonical_of(_V2_FIELDS)


def parse_schema_text(text: str) -> Any:
    """Parses Avro schema JSON into fastavro's form, logical types dropped; bad JSON or schema raises ValueError.

    An order's fields are plain strings and numbers. A writer's logical type (a uuid
    orderId, a date quantity) would make fastavro hand back objects of other types,
    so the annotations are removed and the values read as their underlying types.
    """
    return fastavro.parse_schema(_without_logical_types(json.loads(text)))


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_logical_types(value) for key, value in schema.items() if key != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def unreadable_shape(parsed: Any) -> str | None:
    """Why data written with this (untrusted) schema is not read at all, or None.

    Two shapes let a small body cost without bound: a recursive type (each level of
    nesting is a level of recursion in fastavro's reader, so a body of 100 KB can
    exhaust the C stack), and an array whose items take no bytes (a count of 2^62
    such items costs 2^62 steps). Neither can carry an order.
    """
    names = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}

    def walk(schema: Any, stack: tuple[str, ...]) -> str | None:
        if isinstance(schema, str):
            if schema in stack:
                return f"the type {schema} contains itself"
            named = names.get(schema)
            return walk(named, stack) if isinstance(named, dict) else None
        if isinstance(schema, list):
            return next((problem for branch in schema if (problem := walk(branch, stack)) is not None), None)
        if not isinstance(schema, dict):
            return None
        kind = schema.get("type")
        if kind == "record":
            name = str(schema.get("name"))
            if name in stack:
                return f"the type {name} contains itself"
            fields = schema.get("fields", ())
            return next((p for field in fields if (p := walk(field.get("type"), (*stack, name))) is not None), None)
        if kind == "array":
            if _takes_no_bytes(schema.get("items"), names, 0):
                return "an array's items take no bytes"
            return walk(schema.get("items"), stack)
        if kind == "map":
            return walk(schema.get("values"), stack)
        return None

    return walk(parsed, ())


def _takes_no_bytes(schema: Any, names: dict[str, Any], depth: int) -> bool:
    """Whether a value of this type is encoded in zero bytes (null, an empty fixed, a record of such fields)."""
    if depth > 100:  # only reached through a recursive type, which `unreadable_shape` names first
        return False
    if isinstance(schema, str):
        return schema == "null" or (
            isinstance(names.get(schema), dict) and _takes_no_bytes(names[schema], names, depth + 1)
        )
    if isinstance(schema, dict):
        if schema.get("type") == "fixed":
            return schema.get("size") == 0
        if schema.get("type") == "record":
            return all(_takes_no_bytes(field.get("type"), names, depth + 1) for field in schema.get("fields", ()))
        return _takes_no_bytes(schema.get("type"), names, depth + 1) if isinstance(schema.get("type"), str) else False
    return False


@dataclass(frozen=True)
class OrderSchema:
    """One version of the order schema, parsed once, with what both wire formats need from it.

    `canonical` is its parsing canonical form (no docs, no defaults) and `fingerprint`
    the 8 little-endian bytes of that form's CRC-64-AVRO, as the single-object header
    carries it. `direct` is the direct codec of its layout, when there is one.
    `version` is N of `schemas/order-vN.avsc`, 0 for a schema from elsewhere;
    `source` names where it was read, for messages (`schemas/order-v2.avsc`).
    """

    text: str
    parsed: Any
    fingerprint: bytes
    canonical: str
    direct: DirectCodec | None
    version: int = 0
    source: str = ""

    @classmethod
    def from_text(cls, text: str, version: int = 0, source: str = "") -> OrderSchema:
        """Parses schema JSON and computes its canonical form and fingerprint; bad text raises ValueError."""
        parsed = parse_schema_text(text)
        canonical = to_parsing_canonical_form(parsed)
        # fastavro renders the fingerprint as hex of its little-endian bytes, which is
        # the byte order the single-object header wants.
        raw = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        return cls(text, parsed, raw, canonical, _DIRECT.get(canonical), version, source)

    @property
    def has_order_layout(self) -> bool:
        """Whether its records are laid out as `Order` is (the newest layout): a bulk writer may then build them."""
        return self.canonical == _ORDER_CANONICAL

    def encode_body(self, order: Order) -> bytes:
        """The plain Avro body of an order under this version, with no header (fields it lacks are left out)."""
        if self.direct is not None:
            return self.direct.write(order)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.parsed, order.to_record())
        return buffer.getvalue()

    def encode_single_object(self, order: Order) -> bytes:
        """An order in Avro single-object encoding under this version (no registry needed to read it)."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint + self.encode_body(order)


@dataclass(frozen=True)
class SchemaSet:
    """Every version of the order schema, oldest first; the newest is the reader schema."""

    versions: tuple[OrderSchema, ...]

    @property
    def newest(self) -> OrderSchema:
        return self.versions[-1]

    def version(self, number: int) -> OrderSchema:
        """The schema of version `number`.

        Raises:
            ConfigError: no such version, naming the known ones.
        """
        for schema in self.versions:
            if schema.version == number:
                return schema
        known = ", ".join(str(schema.version) for schema in self.versions)
        raise ConfigError(f"order schema version {number} is unknown: the versions are {known} (schemas/order-vN.avsc)")

    def by_fingerprint(self, raw: bytes) -> OrderSchema | None:
        """The version whose fingerprint (8 little-endian bytes) this is, or None."""
        for schema in self.versions:
            if schema.fingerprint == raw:
                return schema
        return None


@cache
def load_schema_set(directory: Path = SCHEMAS_DIR) -> SchemaSet:
    """Reads and parses every `order-vN.avsc` in `directory`, sorted by N (read once per directory).

    Raises:
        ValueError: no such file, or one that is not an Avro schema.
    """
    found = {}
    for path in directory.glob("order-v*.avsc"):
        match = _VERSION_FILE.fullmatch(path.name)
        if match:
            number = int(match.group(1))
            source = f"{directory.name}/{path.name}"
            found[number] = OrderSchema.from_text(path.read_text(encoding="utf-8"), number, source)
    if not found:
        raise ValueError(f"no order schema (order-vN.avsc) in {directory}")
    return SchemaSet(tuple(found[number] for number in sorted(found)))


def load_order_schema(version: int | None = None) -> OrderSchema:
    """A version of the order schema from `schemas/`: the newest (`order.avsc`) by default.

    Raises:
        ConfigError: an unknown version, naming the known ones.
    """
    schemas = load_schema_set()
    return schemas.newest if version is None else schemas.version(version)


def schema_id_of(value: bytes | None) -> int | None:
    """The schema id of a value in the Confluent wire format, else None."""
    if value is None or len(value) < _CONFLUENT_HEADER or not value.startswith(CONFLUENT_MAGIC):
        return None
    schema_id: int = _SCHEMA_ID.unpack_from(value, 1)[0]
    return schema_id


class OrderDecoder:
    """Detects the wire format of a record value and decodes it into an `Order`.

    Args:
        schema: the reader schema (ours, normally the newest version); every writer
            schema is resolved to it.
        lookup: resolves Confluent schema ids; None when no registry is configured.
        writers: the versions a single-object record's fingerprint may name
            (`schema` is always one); by default the files in `schemas/`.
        wire_format: AVRO_WIRE_FORMAT (orderpipe.serde.wire): "auto" detects the framed
            format; "confluent" or "single-object" accept only that one; "raw" reads
            every value with `raw`.
    """

    def __init__(
        self,
        schema: OrderSchema,
        lookup: SchemaLookup | None = None,
        *,
        writers: SchemaSet | None = None,
        wire_format: str = AUTO,
        raw: Callable[[bytes | None], Order] | None = None,
    ):
        self._schema = schema
        self._lookup = lookup
        # "auto" reads both framed formats; "confluent" or "single-object" only that one;
        # "raw" hands every value to `raw`, the reader of bare bodies (orderpipe.serde.wire).
        self._only = {CONFLUENT: CONFLUENT_MAGIC, SINGLE_OBJECT: SINGLE_OBJECT_MAGIC}.get(wire_format)
        self._raw = raw if wire_format == RAW else None
        self._resolves_to_order = schema.canonical == _ORDER_CANONICAL
        versions = (writers if writers is not None else load_schema_set()).versions
        self._known_versions = ", ".join(str(writer.version) for writer in versions)
        known = (*versions, schema)
        self._writer_by_fingerprint = {writer.fingerprint: writer.parsed for writer in known}
        self._direct_by_fingerprint = {
            writer.fingerprint: direct for writer in known if (direct := self._direct_reader(writer.parsed)) is not None
        }
        # Per Confluent schema id: the writer schema the lookup returned, and its direct reader.
        self._by_schema_id: dict[int, tuple[Any, DirectRead | None]] = {}

    def order_layout_headers(self) -> frozenset[bytes]:
        """The single-object headers this decoder reads whose body has `Order`'s layout, for orderpipe.core.intake.

        Empty when such records are not read as single-object (AVRO_WIRE_FORMAT
        confluent or raw) or the reader schema is not `Order`'s.
        """
        if self._raw is not None or self._only == CONFLUENT_MAGIC or not self._resolves_to_order:
            return frozenset()
        return frozenset(
            SINGLE_OBJECT_MAGIC + fp for fp, direct in self._direct_by_fingerprint.items() if direct is _read_v2
        )

    def _direct_reader(self, writer: Any) -> DirectRead | None:
        """The direct reader of a writer schema's layout, if it has one and the reader schema is `Order`'s."""
        if not self._resolves_to_order:
            return None
        try:
            direct = _DIRECT.get(to_parsing_canonical_form(writer))
        except Exception:  # a registry's schema is untrusted: one fastavro cannot render takes the general path
            return None
        return None if direct is None else direct.read

    def decode(self, value: bytes | None) -> Order:
        """Decodes one record value.

        Raises:
            DeserializationError: for an empty value, an unknown magic, an unknown
                fingerprint or schema id, a writer schema that cannot be resolved to
                ours, or a body that is not a valid order.
        """
        if self._raw is not None:
            return self._raw(value)
        if not value:
            raise DeserializationError("record has no value")
        if self._only is not None and not value.startswith(self._only):
            expected = "the Confluent wire format" if self._only == CONFLUENT_MAGIC else "single-object Avro"
            raise DeserializationError(f"not {expected}, as AVRO_WIRE_FORMAT asks: first bytes {value[:2].hex()}")
        if value.startswith(SINGLE_OBJECT_MAGIC):
            if len(value) < _SINGLE_OBJECT_HEADER:
                raise DeserializationError("single-object header is truncated")
            fp = value[2:_SINGLE_OBJECT_HEADER]
            direct = self._direct_by_fingerprint.get(fp)
            if direct is not None and (order := direct(value, _SINGLE_OBJECT_HEADER)) is not None:
                return order
            writer = self._writer_by_fingerprint.get(fp)
            if writer is None:
                raise DeserializationError(
                    f"unknown writer schema: fingerprint {fp.hex()} is none of the order schemas this consumer "
                    f"knows (schemas/order-vN.avsc, versions {self._known_versions})"
                )
            return self._read_body(value, _SINGLE_OBJECT_HEADER, writer)
        if value.startswith(CONFLUENT_MAGIC):
            if len(value) < _CONFLUENT_HEADER:
                raise DeserializationError("schema-registry header is truncated")
            (schema_id,) = _SCHEMA_ID.unpack_from(value, 1)
            if self._lookup is None:
                raise DeserializationError(
                    f"record uses the schema-registry format (schema id {schema_id}) but SCHEMA_REGISTRY_URL is not set"
                )
            writer = self._lookup(schema_id)
            plan = self._by_schema_id.get(schema_id)
            if plan is None or plan[0] is not writer:  # new, or the lookup parsed the schema again
                if len(self._by_schema_id) >= _MAX_WRITERS:
                    del self._by_schema_id[next(iter(self._by_schema_id))]
                plan = self._by_schema_id[schema_id] = (writer, self._direct_reader(writer))
            direct = plan[1]
            if direct is not None and (order := direct(value, _CONFLUENT_HEADER)) is not None:
                return order
            return self._read_body(value, _CONFLUENT_HEADER, writer)
        # Neither header, and AVRO_WIRE_FORMAT is auto (raw and the framed formats were handled
        # above): perhaps a bare Avro body, which is never guessed. Two bytes of the value at most.
        raise DeserializationError(
            f"unknown wire format: first bytes {value[:2].hex()}; if the producer writes bare Avro bodies, "
            "set AVRO_WIRE_FORMAT=raw and AVRO_WRITER_SCHEMA"
        )

    def _read_body(self, value: bytes, start: int, writer: Any) -> Order:
        """The order in `value[start:]` by fastavro, `writer` resolved to the reader schema."""
        buffer = io.BytesIO(value)
        buffer.seek(start)
        try:
            record = fastavro.schemaless_reader(buffer, writer, self._schema.parsed)
        except SchemaResolutionError as exc:
            why = incompatibility(writer, self._schema.parsed) or printable(str(exc), 200)
            raise DeserializationError(f"the writer schema cannot be resolved to the order schema: {why}") from exc
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise DeserializationError(f"Avro body is not a valid order: {type(exc).__name__}: {exc}") from exc
        if buffer.tell() != len(value):
            raise DeserializationError(f"{len(value) - buffer.tell()} unexpected bytes after the Avro body")
        if not isinstance(record, dict):
            raise DeserializationError("Avro body is not a record")
        return Order.from_record(record)


# Avro's promotions: a writer's type (key) that a reader of each of these types reads.
_PROMOTIONS = {
    "int": ("long", "float", "double"),
    "long": ("float", "double"),
    "float": ("double",),
    "string": ("bytes",),
    "bytes": ("string",),
}


def incompatibility(writer: Any, reader: Any) -> str | None:
    """Why data written with `writer` cannot be read with `reader` under Avro schema resolution, or None.

    Both are parsed schemas (fastavro's form). The rules of the Avro specification:
    a reader's field missing from the writer needs a default, a writer's field missing
    from the reader is skipped, a type may change only by a promotion (int to long,
    float or double; long to float or double; float to double; string to and from
    bytes), records and fixed types keep their names, an enum reader without a default
    knows every writer symbol, and every branch of a writer's union must be readable.
    Strict: a writer union branch the reader cannot read is a problem even if no
    record uses it. Checking both directions between consecutive versions is the
    compatibility test of `tests/unit/serde/test_schema_compat.py`.
    """
    return _Resolution(writer, reader).problem(writer, reader, "")


class _Resolution:
    """One writer-to-reader check; named types are looked up in each schema's own names."""

    def __init__(self, writer: Any, reader: Any) -> None:
        self._writer_names = _named_types(writer)
        self._reader_names = _named_types(reader)
        self._records_seen: set[tuple[str, str]] = set()  # recursive records are checked once

    def problem(self, writer: Any, reader: Any, where: str) -> str | None:
        writer = self._writer_names.get(writer, writer) if isinstance(writer, str) else writer
        reader = self._reader_names.get(reader, reader) if isinstance(reader, str) else reader
        if isinstance(writer, list):
            for branch in writer:
                if (problem := self.problem(branch, reader, where)) is not None:
                    return problem
            return None
        if isinstance(reader, list):
            if any(self.problem(writer, branch, where) is None for branch in reader):
                return None
            return f"{_place(where)} is {_type_name(writer)} in the writer, which no branch of the reader's union reads"
        writer_type, reader_type = _type_name(writer), _type_name(reader)
        if writer_type != reader_type:
            if reader_type in _PROMOTIONS.get(writer_type, ()):
                return None
            return f"{_place(where)} is {writer_type} in the writer but {reader_type} in the reader"
        if writer_type in ("record", "enum", "fixed") and writer["name"] != reader["name"]:
            names = f"{writer['name']} in the writer but {reader['name']} in the reader"
            return f"{_place(where)} is the {writer_type} {names}"
        if writer_type == "record":
            return self._record_problem(writer, reader, where)
        if writer_type == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return f"{_place(where)} has symbols {missing} in the writer that the reader's enum lacks"
        if writer_type == "fixed" and writer["size"] != reader["size"]:
            return f"{_place(where)} is {writer['size']} bytes in the writer but {reader['size']} in the reader"
        if writer_type == "array":
            return self.problem(writer["items"], reader["items"], f"{where}[]")
        if writer_type == "map":
            return self.problem(writer["values"], reader["values"], f"{where}{{}}")
        return None

    def _record_problem(self, writer: Any, reader: Any, where: str) -> str | None:
        pair = (writer["name"], reader["name"])
        if pair in self._records_seen:  # being checked further up: a recursive record
            return None
        self._records_seen.add(pair)
        problem = self._fields_problem(writer, reader, where)
        if problem is not None:
            self._records_seen.discard(pair)  # a union may try the pair again elsewhere
        return problem

    def _fields_problem(self, writer: Any, reader: Any, where: str) -> str | None:
        written = {field["name"]: field for field in writer["fields"]}
        for field in reader["fields"]:
            path = f"{where}.{field['name']}" if where else field["name"]
            names = (field["name"], *field.get("aliases", ()))
            source = next((written[name] for name in names if name in written), None)
            if source is None:
                if "default" not in field:
                    return f"field {path} is missing from the writer and has no default in the reader"
                continue
            if (problem := self.problem(source["type"], field["type"], path)) is not None:
                return problem
        return None


def _named_types(schema: Any) -> dict[str, Any]:
    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    return dict(named)


def _type_name(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _place(where: str) -> str:
    return f"field {where}" if where else "the value"
