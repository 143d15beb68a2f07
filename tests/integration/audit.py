"""An independent account of a drained pipeline, read straight from its topics.

The orders are decoded with fastavro directly (not with the consumer's decoder) and
judged by the validation rules; the account then says what `orders-stats` must hold
if every order was counted or dead-lettered exactly once, and checks the DLQ and the
retry topic for duplicates.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from orderpipe.errors import ValidationError
from orderpipe.money import RunningAverage
from orderpipe.order import Order, validate
from tests.integration.conftest import ROOT, Pipeline

__all__ = ["Audit", "audit"]

SCHEMA: Any = fastavro.parse_schema(json.loads((ROOT / "order.avsc").read_text()))
FINGERPRINT = bytes.fromhex(fingerprint(to_parsing_canonical_form(SCHEMA), "CRC-64-AVRO"))


def _decode(value: bytes | None) -> Order | None:
    """The order in an Avro single-object record, or None when it is not one."""
    if value is None or value[:2] != b"\xc3\x01" or value[2:10] != FINGERPRINT:
        return None
    body = io.BytesIO(value[10:])
    try:
        record = fastavro.schemaless_reader(body, SCHEMA, None)
    except Exception:  # any decoding failure means the record is poison
        return None
    if body.read():
        return None
    return Order.from_record(record)  # type: ignore[arg-type]


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

    @property
    def counted_exactly(self) -> bool:
        return self.stats == self.expected

    def describe(self) -> str:
        return (
            f"orders {self.orders} (valid {self.valid}, invalid {self.invalid}, poison {self.poison}); "
            f"dead-lettered {self.dlq_by_reason}; counted {self.stats.count} (expected {self.expected.count}), "
            f"sum_cents {self.stats.sum_cents} (expected {self.expected.sum_cents}); "
            f"duplicates: dlq {self.dlq_duplicates}, retry {self.retry_duplicates}; missing {self.missing}"
        )


def audit(pipeline: Pipeline) -> Audit:
    settings = pipeline.settings
    orders = pipeline.read(settings.orders_topic)
    dlq = pipeline.read(settings.dlq_topic)
    retries = pipeline.read(settings.retry_topic)
    stats_records = pipeline.read(settings.stats_topic)

    prices: dict[bytes | None, int] = {}
    poison = invalid = 0
    for record in orders:
        order = _decode(record.value)
        if order is None:
            poison += 1
            continue
        try:
            prices[record.key] = validate(order, settings.max_order_price_cents).price_cents
        except ValidationError:
            invalid += 1

    dlq_keys = Counter(r.key for r in dlq)
    retry_keys = Counter((r.key, r.headers["retry.attempt"]) for r in retries)
    counted = {key: cents for key, cents in prices.items() if key not in dlq_keys}
    latest: dict[bytes | None, Any] = {}
    for record in stats_records:
        latest[record.key] = json.loads(record.value) if record.value is not None else None
    stats = RunningAverage()
    for value in latest.values():
        if value is not None:
            stats += RunningAverage(value["count"], value["sum_cents"])
    return Audit(
        orders=len(orders),
        poison=poison,
        invalid=invalid,
        valid=len(prices),
        dlq_by_reason=dict(Counter(r.headers["dlq.reason"] for r in dlq)),
        dlq_duplicates=sum(n - 1 for n in dlq_keys.values()),
        retry_duplicates=sum(n - 1 for n in retry_keys.values()),
        missing=len({r.key for r in orders} - set(counted) - set(dlq_keys)),
        expected=RunningAverage(len(counted), sum(counted.values())),
        stats=stats,
    )
