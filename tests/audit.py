"""An independent account of a drained pipeline, from its topics' records alone.

The orders are decoded with fastavro directly (not with the consumer's decoder) and
judged by the validation rules; the account then says what `orders-stats` must hold
if every order was counted or dead-lettered exactly once, and checks the DLQ and the
retry topic for duplicates. Integration tests feed it records read from the real
broker, unit tests records read from the in-memory twin.

`dlq.py replay` puts dead letters back on `orders`: a replayed record (one with a
`dlq.replayed-from` header) is the same order again, and the dead letter it came from
no longer decides that order's fate; the replayed record's own outcome does.

Every schema version is read as the consumer must read it: the writer schema is
resolved to the newest (`order.avsc`) with fastavro. A single-object record names
its writer by fingerprint, which must be one of the files in `schemas/`. A
Confluent-framed record names it by schema id, and the audit asks the registry of
the pipeline's settings for it, as any independent reader would: the tests'
registries may hold version 1, version 2 or a newer version than the files (a field
added with a default), and guessing the writer from the files could not read the
newer one. Without a registry in the settings such a record is poison, since the
consumer cannot read it either.

With AVRO_WIRE_FORMAT=raw every record is a bare Avro body (nothing tells one apart),
read with the writer schema AVRO_WRITER_SCHEMA names alone and taken field by field
as an order, as docs/wire-formats.md describes; a body that does not decode cleanly, or
lacks a field an order needs, is poison.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import fingerprint, to_parsing_canonical_form

from orderpipe.config.settings import RAW, Settings
from orderpipe.errors import ValidationError
from orderpipe.model.money import RunningAverage
from orderpipe.model.order import Order, validate

__all__ = [
    "Audit",
    "audit_records",
    "audit_topics",
    "pipeline_env",
    "published_total",
    "raw_writer_schema",
    "registry_writer_schemas",
]

ROOT = Path(__file__).resolve().parents[1]
MISSING_SHOWN = 10  # missing orders whose place an audit keeps
SCHEMA: Any = fastavro.parse_schema(json.loads((ROOT / "order.avsc").read_text()))
# Every version's parsed schema by its CRC-64-AVRO fingerprint (little-endian bytes).
WRITERS: dict[bytes, Any] = {
    bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")): parsed
    for parsed in (fastavro.parse_schema(json.loads(path.read_text())) for path in (ROOT / "schemas").glob("*.avsc"))
}

# The parsed writer schema of a schema id, or None when the registry does not have it.
WriterSchemas = Callable[[int], Any]


class TopicRecord(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    def header(self, name: str) -> str | None: ...


def _decode(value: bytes | None, registry: WriterSchemas | None, raw: Any = None) -> Order | None:
    """The order in an Avro record, resolved to the newest schema, or None when it is not one.

    Single-object records must carry the fingerprint of a file in schemas/; a
    Confluent-framed record (magic byte 0, 4-byte schema id) needs a registry that
    knows its id. With `raw` (a parsed writer schema) every record is a bare body.
    """
    if value is None:
        return None
    if raw is not None:
        return _decode_bare(value, raw)
    if value[:2] == b"\xc3\x01" and len(value) >= 10:
        writer = WRITERS.get(value[2:10])
        body = io.BytesIO(value[10:])
    elif value[:1] == b"\x00" and len(value) >= 5 and registry is not None:
        writer = registry(int.from_bytes(value[1:5], "big"))
        body = io.BytesIO(value[5:])
    else:
        return None
    if writer is None:
        return None
    try:
        record = fastavro.schemaless_reader(body, writer, SCHEMA)
    except Exception:  # any decoding failure means the record is poison
        return None
    if body.read():
        return None
    return Order.from_record(record)  # type: ignore[arg-type]


def _decode_bare(value: bytes, writer: Any) -> Order | None:
    """A bare body read with its writer schema alone, its fields taken by name (the price may be a double)."""
    body = io.BytesIO(value)
    try:
        record = fastavro.schemaless_reader(body, writer, None)
        if body.read() or not isinstance(record, dict):
            return None
        return Order.from_record(record)
    except Exception:  # any decoding failure, or a field the order needs missing: poison
        return None


def raw_writer_schema(settings: Settings) -> Any:
    """The parsed AVRO_WRITER_SCHEMA when the settings say AVRO_WIRE_FORMAT=raw, else None.

    A relative path is taken from the repository, where the tests run the programs.
    """
    if settings.avro_wire_format != RAW:
        return None
    path = Path(settings.avro_writer_schema)
    return fastavro.parse_schema(json.loads((path if path.is_absolute() else ROOT / path).read_text()))


def registry_writer_schemas(settings: Settings) -> WriterSchemas | None:
    """Schema ids looked up in the registry of `settings` (each once); None without a registry.

    An id the registry does not have, or whose schema is not Avro, makes its records
    poison. Any other failure (the registry unreachable) raises: the audit cannot
    judge those records.
    """
    if not settings.schema_registry_url:
        return None
    client = SchemaRegistryClient(settings.registry_client_config())

    @cache
    def writer(schema_id: int) -> Any:
        try:
            text = client.get_schema(schema_id).schema_str or ""
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise
        try:
            return fastavro.parse_schema(json.loads(text))
        except Exception:  # not an Avro schema: the consumer cannot read its records either
            return None

    return writer


@dataclass(frozen=True)
class Audit:
    orders: int
    poison: int
    invalid: int
    valid: int
    dlq_by_reason: dict[str, int]
    dlq_duplicates: int
    retry_duplicates: int
    missing: int  # orders neither countable (valid) nor dead-lettered
    expected: RunningAverage  # valid orders not dead-lettered
    stats: RunningAverage  # summed over the stats topic's latest values
    # Records on `orders` whose key an earlier one had (keyless ones aside): a producer wrote an order twice.
    order_duplicates: int = 0
    # The first missing orders: (partition, offset) on `orders` and their records on the retry topic.
    missing_at: tuple[tuple[int, int, int], ...] = ()

    @property
    def counted_exactly(self) -> bool:
        return self.stats == self.expected

    @property
    def exact(self) -> bool:
        """Every order counted or dead-lettered once, nothing written twice, the stats to the cent."""
        return (
            self.counted_exactly
            and self.missing == self.dlq_duplicates == self.retry_duplicates == self.order_duplicates == 0
        )

    def describe(self) -> str:
        return (
            f"orders {self.orders} (valid {self.valid}, invalid {self.invalid}, poison {self.poison}); "
            f"dead-lettered {self.dlq_by_reason}; counted {self.stats.count} (expected {self.expected.count}), "
            f"sum_cents {self.stats.sum_cents} (expected {self.expected.sum_cents}); "
            f"duplicates: orders {self.order_duplicates}, dlq {self.dlq_duplicates}, retry {self.retry_duplicates}; "
            f"missing {self.missing}"
        )


def audit_records(
    orders: Sequence[TopicRecord],
    dlq: Sequence[TopicRecord],
    retries: Sequence[TopicRecord],
    stats_records: Sequence[TopicRecord],
    max_price_cents: int,
    *,
    group: str | None = None,
    registry: WriterSchemas | None = None,
    raw: Any = None,
) -> Audit:
    """The account of the records.

    Args:
        registry: gives Confluent-framed records their writer schemas.
        raw: the parsed writer schema of bare bodies (AVRO_WIRE_FORMAT=raw): every record is one.
    """
    prices: dict[bytes | None, int] = {}
    poison = invalid = 0
    for record in orders:
        order = _decode(record.value, registry, raw)
        if order is None:
            poison += 1
            continue
        try:
            prices[record.key] = validate(order, max_price_cents).price_cents
        except ValidationError:
            invalid += 1

    # A record without a key names no order: any client may write several, none is a second copy.
    keyed = [r.key for r in orders if r.key is not None]
    dlq_keys = Counter(r.key for r in dlq)
    retry_keys = Counter((r.key, r.header("retry.attempt")) for r in retries)
    counted = {key: cents for key, cents in prices.items() if key not in dlq_keys}
    missing = {r.key for r in orders} - set(counted) - set(dlq_keys)
    retried = Counter(key for key, _ in retry_keys)
    missing_at = sorted((r.partition, r.offset, retried[r.key]) for r in orders if r.key in missing)[:MISSING_SHOWN]
    # Only input partitions that hold records have a state; the consumer ignores keys of others.
    inputs = None if group is None else {f"{group}/{r.topic}-{r.partition}".encode() for r in (*orders, *retries)}
    stats = published_total(stats_records, inputs)
    return Audit(
        orders=len(orders),
        poison=poison,
        invalid=invalid,
        valid=len(prices),
        dlq_by_reason=dict(Counter(r.header("dlq.reason") or "" for r in dlq)),
        dlq_duplicates=sum(n - 1 for n in dlq_keys.values()),
        retry_duplicates=sum(n - 1 for n in retry_keys.values()),
        missing=len(missing),
        expected=RunningAverage(len(counted), sum(counted.values())),
        stats=stats,
        order_duplicates=len(keyed) - len(set(keyed)),
        missing_at=tuple(missing_at),
    )


def published_total(stats_records: Sequence[TopicRecord], keys: Collection[bytes] | None = None) -> RunningAverage:
    """The sum of every key's latest value on the stats topic (what the group counted).

    With `keys`, only those keys (`<group>/<topic>-<partition>`) count.
    """
    latest: dict[bytes | None, bytes | None] = {}
    for record in stats_records:
        if keys is None or record.key in keys:
            latest[record.key] = record.value  # only the latest is read: earlier ones may be anything
    total = RunningAverage()
    for value in latest.values():
        if value is not None:
            data = json.loads(value)
            total += RunningAverage(data["count"], data["sum_cents"])
    return total


def audit_topics(read: Callable[[str], Sequence[TopicRecord]], settings: Settings) -> Audit:
    """The audit of a pipeline whose topics `read` returns, each in full; replayed dead letters count once."""
    orders = read(settings.orders_topic)
    first, replayed_from = [], set()
    for record in orders:
        origin = record.header("dlq.replayed-from")
        if origin is None:
            first.append(record)
        else:
            replayed_from.add(origin)
    dlq = [r for r in read(settings.dlq_topic) if f"{r.topic}:{r.partition}:{r.offset}" not in replayed_from]
    return audit_records(
        first,
        dlq,
        read(settings.retry_topic),
        read(settings.stats_topic),
        settings.max_order_price_cents,
        group=settings.consumer_group,
        registry=registry_writer_schemas(settings),
        raw=raw_writer_schema(settings),
    )


def pipeline_env(bootstrap: str, prefix: str) -> dict[str, str]:
    """Settings, as environment variables, for a pipeline of its own: topics and group named after `prefix`."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "SCHEMA_REGISTRY_URL": "",
        "ORDERS_TOPIC": f"{prefix}-orders",
        "RETRY_TOPIC": f"{prefix}-orders-retry",
        "DLQ_TOPIC": f"{prefix}-orders-dlq",
        "STATS_TOPIC": f"{prefix}-orders-stats",
        "CONSUMER_GROUP": f"{prefix}-group",
        "RETRY_BACKOFF_MS": "100",
        "RETRY_BACKOFF_MAX_MS": "400",
    }
