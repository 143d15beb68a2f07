"""How the producer writes values: the schema it writes with, and the framing of its wire format.

Single-object Avro, the Confluent wire format (the schema registered, or looked up,
once) or bare bodies (AVRO_WIRE_FORMAT=raw, orderpipe.serde.wire).
"""

from __future__ import annotations

import struct
from contextlib import ExitStack
from typing import NamedTuple

from orderpipe.config.settings import Settings
from orderpipe.errors import ConfigError, OrderPipeError, RegistryUnavailableError
from orderpipe.kafka.registry import START_REGISTRY_HINT, connect_registry, registered_id, registry_login_problem
from orderpipe.model.generator import OrderEncoder
from orderpipe.model.order import Order
from orderpipe.serde.codec import CONFLUENT_MAGIC
from orderpipe.serde.schemas import SINGLE_OBJECT_MAGIC, OrderSchema, load_order_schema
from orderpipe.serde.wire import RAW, SINGLE_OBJECT, RawSchema, load_raw_schema
from orderpipe.text import redact

__all__ = ["Encoding", "value_encoding", "writer_schema", "writes_single_object"]


class Encoding(NamedTuple):
    """How values are written: `encode` turns one order into value bytes; `prefix`, when set, is the
    header before the body of every value, whose body has Order's layout (OrderFactory.fill builds those)."""

    encode: OrderEncoder
    prefix: bytes | None


def value_encoding(settings: Settings, schema: OrderSchema | RawSchema, stack: ExitStack) -> Encoding:
    """The value encoder of the wire format (orderpipe.serde.wire): bare bodies, single-object, or Confluent framing.

    With a registry the schema is registered (or looked up) once, as one canonical
    text, and each value is the same fast Avro body as without one, framed with
    the schema id: no serializer call per record.
    """
    if isinstance(schema, RawSchema):
        return Encoding(schema.encode, None)
    if writes_single_object(settings):
        header = SINGLE_OBJECT_MAGIC + schema.fingerprint
        return Encoding(schema.encode_single_object, header if schema.has_order_layout else None)
    client = stack.enter_context(connect_registry(settings))
    subject = f"{settings.orders_topic}-value"
    try:
        schema_id = registered_id(
            client, subject, schema.text, register=settings.registry_auto_register, source=schema.source
        )
    except OrderPipeError:
        raise
    except Exception as exc:
        raise _refused(settings, subject, exc) from None
    header = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
    body = schema.encode_body

    def encode(order: Order) -> bytes:
        return header + body(order)

    return Encoding(encode, header if schema.has_order_layout else None)


def writes_single_object(settings: Settings) -> bool:
    """Whether framed orders are written single-object: asked for, or no registry to frame them for."""
    return settings.avro_wire_format == SINGLE_OBJECT or not settings.schema_registry_url


def writer_schema(settings: Settings, version: int | None) -> OrderSchema | RawSchema:
    """The schema the producer writes with: a version of the order schema, or AVRO_WRITER_SCHEMA for bare bodies.

    Raises:
        ConfigError: an unknown version, a writer schema that cannot carry an order,
            or both a version and bare bodies asked for.
    """
    if settings.avro_wire_format != RAW:
        return load_order_schema(version)
    if version is not None:
        raise ConfigError(
            "--schema-version does not apply with AVRO_WIRE_FORMAT=raw: bare bodies are written with AVRO_WRITER_SCHEMA"
        )
    return load_raw_schema(settings.avro_writer_schema, producing=True)


def _refused(settings: Settings, subject: str, exc: Exception) -> OrderPipeError:
    if (problem := registry_login_problem(exc, settings.registry_address)) is not None:
        return ConfigError(problem)
    return RegistryUnavailableError(
        f"The schema registry at {settings.registry_address} refused the order schema for subject "
        f"{subject} ({type(exc).__name__}: {redact(str(exc))}): {START_REGISTRY_HINT}."
    )
