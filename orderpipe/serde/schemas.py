"""The order schema's versions: the files in `schemas/`, parsed once, checked, and their single-object encoding.

Every version of the order schema is kept as `schemas/order-vN.avsc` (a `SchemaSet`);
`order.avsc` equals the newest, which is the reader schema. An `OrderSchema` knows its
parsing canonical form and fingerprint, and encodes orders with it: a plain Avro body,
or Avro single-object encoding (0xC3 0x01, the schema's 8-byte little-endian
CRC-64-AVRO fingerprint, then the body). Schemas from elsewhere (a registry's, a
writer's) are parsed here too, and `unreadable_shape` refuses those whose data could
cost without bound.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from orderpipe.errors import ConfigError
from orderpipe.model.order import Order
from orderpipe.serde.direct import DIRECT_CODECS, ORDER_LAYOUT, DirectCodec

__all__ = [
    "SCHEMAS_DIR",
    "SINGLE_OBJECT_MAGIC",
    "OrderSchema",
    "SchemaSet",
    "load_order_schema",
    "load_schema_set",
    "parse_schema_text",
    "unreadable_shape",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
_VERSION_FILE = re.compile(r"order-v([1-9][0-9]*)\.avsc")


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
        return cls(text, parsed, raw, canonical, DIRECT_CODECS.get(canonical), version, source)

    @property
    def has_order_layout(self) -> bool:
        """Whether its records are laid out as `Order` is (the newest layout): a bulk writer may then build them."""
        return self.canonical == ORDER_LAYOUT.canonical

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
