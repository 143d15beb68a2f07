"""Orders on the wire: the framed formats detected and decoded (`OrderDecoder`).

Two formats share the `orders` topic (docs/wire-formats.md, "Wire formats"):

* Avro single-object encoding: 0xC3 0x01, the writer schema's 8-byte little-endian
  CRC-64-AVRO fingerprint, then the Avro body. Used when there is no registry. The
  writer schema is found by fingerprint among the versions in `schemas/`
  (orderpipe/serde/schemas.py).
* Confluent wire format: 0x00, a 4-byte big-endian schema id, then the Avro body.
  The writer schema is looked up by id through a `SchemaLookup` the caller supplies
  (the registry client lives at the edge, in `orderpipe/kafka/registry.py`).

A record written with any version is resolved to the reader schema (Avro schema
resolution, with fastavro), so a version 1 record reads with version 2's defaults, and
a newer writer's extra fields are skipped. Well-formed records of the known layouts are
read by the direct readers (orderpipe/serde/direct.py). Everything that is not a
decodable order raises `DeserializationError`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from orderpipe.config.settings import AUTO, CONFLUENT, RAW, SINGLE_OBJECT
from orderpipe.errors import DeserializationError
from orderpipe.model.order import Order
from orderpipe.serde.direct import DIRECT_CODECS, ORDER_LAYOUT, DirectRead
from orderpipe.serde.schema_compat import incompatibility
from orderpipe.serde.schemas import SINGLE_OBJECT_MAGIC, OrderSchema, SchemaSet, load_schema_set
from orderpipe.text import printable

__all__ = ["CONFLUENT_MAGIC", "OrderDecoder", "SchemaLookup", "schema_id_of"]

CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4

# Returns the parsed writer schema registered under a schema id, or raises
# DeserializationError when the id is unknown or cannot be looked up.
SchemaLookup = Callable[[int], Any]

_SCHEMA_ID = struct.Struct(">I")
# Writer schemas of Confluent records kept with their direct reader, per decoder.
_MAX_WRITERS = 1_000


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
        self._resolves_to_order = schema.canonical == ORDER_LAYOUT.canonical
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
            SINGLE_OBJECT_MAGIC + fp
            for fp, direct in self._direct_by_fingerprint.items()
            if direct is ORDER_LAYOUT.read
        )

    def _direct_reader(self, writer: Any) -> DirectRead | None:
        """The direct reader of a writer schema's layout, if it has one and the reader schema is `Order`'s."""
        if not self._resolves_to_order:
            return None
        try:
            direct = DIRECT_CODECS.get(to_parsing_canonical_form(writer))
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
