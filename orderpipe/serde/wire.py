"""The wire format the settings choose (AVRO_WIRE_FORMAT), and bare Avro bodies (`raw`), free of Kafka.

`auto` (the default) reads both framed formats, telling them apart by their first
bytes, and writes the Confluent format with a registry, single-object without.
`confluent` and `single-object` write and accept only that format. `raw` writes and
reads bare Avro bodies with no header, in the writer schema AVRO_WRITER_SCHEMA names,
as many existing producers do (the original assignment's reference producer writes
its price as a double). Bare bodies cannot be recognised, so `raw` is never guessed.

A bare body is read with its writer schema alone and mapped to the order by field
name: Avro's own resolution does not read a double as a float, so the mapping is
ours. A double price goes to cents exactly as a float does (the exact binary value,
rounded half to even, in orderpipe.model.money). A body that does not decode cleanly with
the schema (bad lengths, bytes left over) is a deserialization error, and so goes to
the DLQ. A writer schema that lacks a field the order needs, or has it in a type that
cannot carry it, is refused at start with one sentence.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from orderpipe.config.settings import AUTO, CONFLUENT, RAW, SINGLE_OBJECT, WIRE_FORMATS, Settings
from orderpipe.errors import ConfigError, DeserializationError
from orderpipe.model.order import Order
from orderpipe.serde.codec import OrderDecoder, SchemaLookup
from orderpipe.serde.schemas import load_order_schema, parse_schema_text, unreadable_shape
from orderpipe.text import printable

__all__ = [
    "AUTO",
    "CONFLUENT",
    "RAW",
    "SINGLE_OBJECT",
    "WIRE_FORMATS",
    "RawSchema",
    "load_raw_schema",
    "order_decoder",
    "raw_reader",
]

# The order's fields, the Avro types a bare body may carry each in, and whether the order needs it.
_FIELDS = {
    "orderId": ({"string"}, True),
    "product": ({"string"}, True),
    "price": ({"float", "double"}, True),
    "quantity": ({"int", "long"}, False),
    "customerId": ({"string", "null"}, False),
}


class RawSchema:
    """A writer schema for bare Avro bodies, checked to carry an order."""

    def __init__(self, parsed: Any, source: str) -> None:
        self._parsed = parsed
        self.source = source

    def decode(self, value: bytes | None) -> Order:
        """The order in a bare body.

        Raises:
            DeserializationError: no value, a body that does not decode with the writer
                schema, or bytes left over after it.
        """
        if not value:
            raise DeserializationError("record has no value")
        buffer = io.BytesIO(value)
        try:
            record = fastavro.schemaless_reader(buffer, self._parsed, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise DeserializationError(
                f"bare Avro body does not decode with {self.source}: {type(exc).__name__}: {printable(str(exc), 200)}"
            ) from exc
        if buffer.tell() != len(value):
            raise DeserializationError(
                f"{len(value) - buffer.tell()} unexpected bytes after the bare Avro body ({self.source})"
            )
        if not isinstance(record, dict):
            raise DeserializationError(f"bare Avro body is not a record ({self.source})")
        return Order(
            record["orderId"],
            record["product"],
            float(record["price"]),
            int(record.get("quantity", 1)),
            record.get("customerId"),
        )

    def encode(self, order: Order) -> bytes:
        """A bare body of the order under the writer schema (its other fields take their defaults)."""
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self._parsed, order.to_record())
        return buffer.getvalue()


def load_raw_schema(path: str, *, producing: bool) -> RawSchema:
    """Reads and checks AVRO_WRITER_SCHEMA.

    Args:
        producing: the producer also needs a default for every field that is not the order's.

    Raises:
        ConfigError: one sentence naming the setting, the file and what is wrong with it.
    """
    where = f"AVRO_WRITER_SCHEMA ({printable(path, 200)})"
    if not path:
        raise ConfigError("AVRO_WIRE_FORMAT=raw needs AVRO_WRITER_SCHEMA: the schema bare bodies are written with")
    try:
        parsed = parse_schema_text(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # not JSON, or JSON that is not an Avro schema
        raise ConfigError(f"{where} is not an Avro schema: {printable(str(exc), 200)}") from None
    problem = unreadable_shape(parsed) or _problem(parsed, producing)
    if problem is not None:
        raise ConfigError(f"{where} cannot carry an order: {problem}")
    return RawSchema(parsed, Path(path).name)


def _problem(parsed: Any, producing: bool) -> str | None:
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return "it is not a record"
    fields = {field["name"]: field for field in parsed["fields"]}
    for name, (types, required) in _FIELDS.items():
        if name not in fields:
            if required:
                return f"it has no field {name}"
            continue
        kinds = _types(fields[name]["type"])
        if not kinds <= types or (name != "customerId" and "null" in kinds):
            return f"its field {name} is {'/'.join(sorted(kinds))}, not {' or '.join(sorted(types - {'null'}))}"
    if producing:
        for name, field in fields.items():
            if name not in _FIELDS and "default" not in field:
                return f"its field {name} has no default, and the producer has no value for it"
    return None


def _types(schema: Any) -> set[str]:
    """The Avro type names a field may hold (the branches of a union)."""
    if isinstance(schema, list):
        return set().union(*(_types(branch) for branch in schema))
    if isinstance(schema, dict):
        return {str(schema.get("type"))}
    return {str(schema)}


def raw_reader(settings: Settings) -> Callable[[bytes | None], Order] | None:
    """The reader of bare bodies when AVRO_WIRE_FORMAT is raw (checked now: call it at start), else None.

    Raises:
        ConfigError: AVRO_WRITER_SCHEMA cannot be read or cannot carry an order.
    """
    if settings.avro_wire_format != RAW:
        return None
    return load_raw_schema(settings.avro_writer_schema, producing=False).decode


def order_decoder(
    settings: Settings, lookup: SchemaLookup | None, raw: Callable[[bytes | None], Order] | None
) -> OrderDecoder:
    """The decoder of the wire format the settings choose, reading any known order schema version.

    Args:
        raw: `raw_reader(settings)`.
    """
    return OrderDecoder(load_order_schema(), lookup, wire_format=settings.avro_wire_format, raw=raw)
