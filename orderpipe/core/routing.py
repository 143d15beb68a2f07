"""Routing one consumed record (docs/wire-formats.md), free of Kafka and clocks.

`decide` says what becomes of a record once it was processed: the order counts
(`Processed`), or the record goes to the retry topic with its attempt and due time
(`Retry`), or to the DLQ with the reason and its origin in the headers
(`DeadLetter`). Whole batches are planned by orderpipe/core/batch_plan.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from orderpipe.errors import DeserializationError, ValidationError
from orderpipe.model.order import ValidOrder
from orderpipe.model.records import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_NOT_BEFORE,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TOPIC,
    H_REASON,
    H_TRUNCATED,
    PIPELINE_HEADERS,
    Headers,
    Incoming,
    record_bytes,
)

__all__ = [
    "REASONS",
    "REASON_DESERIALIZATION",
    "REASON_RETRIES_EXHAUSTED",
    "REASON_VALIDATION",
    "DeadLetter",
    "Decision",
    "Processed",
    "Retry",
    "RetryPolicy",
    "backoff_ms",
    "decide",
]

REASON_DESERIALIZATION = "deserialization"
REASON_VALIDATION = "validation"
REASON_RETRIES_EXHAUSTED = "retries-exhausted"
REASONS = (REASON_DESERIALIZATION, REASON_VALIDATION, REASON_RETRIES_EXHAUSTED)

MAX_ERROR_MESSAGE_BYTES = 1024


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_ms: int = 1000
    backoff_max_ms: int = 30000


class Processed(NamedTuple):
    record: Incoming
    order: ValidOrder


class Retry(NamedTuple):
    """Produce `value` to the retry topic as retry number `attempt`, due at `not_before`."""

    record: Incoming
    attempt: int
    not_before: int
    error: BaseException
    headers: Headers


class DeadLetter(NamedTuple):
    """Produce `key` and `value` to the DLQ with the reason in the headers.

    Both are the record's own bytes, unchanged, unless the copy would be too large;
    then what was left out is named in the `dlq.truncated` header.
    """

    record: Incoming
    reason: str
    retries: int
    error: BaseException
    headers: Headers
    key: bytes | None
    value: bytes | None


Decision = Processed | Retry | DeadLetter


def backoff_ms(attempt: int, policy: RetryPolicy) -> int:
    """Delay before retry number `attempt` (1-based): base, doubling, capped."""
    return min(policy.backoff_ms << max(attempt - 1, 0), policy.backoff_max_ms)


def _truncate_utf8(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to at most `limit` bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def _error_headers(record: Incoming, error: BaseException) -> list[tuple[str, bytes]]:
    origin = record.origin
    return [
        (H_ERROR_CLASS, type(error).__name__.encode()),
        (H_ERROR_MESSAGE, _truncate_utf8(str(error), MAX_ERROR_MESSAGE_BYTES)),
        (H_ORIGINAL_TOPIC, _truncate_utf8(origin.topic, 255)),
        (H_ORIGINAL_PARTITION, str(origin.partition).encode()),
        (H_ORIGINAL_OFFSET, str(origin.offset).encode()),
        (H_ORIGINAL_TIMESTAMP, str(origin.timestamp).encode()),
    ]


def _foreign_headers(record: Incoming) -> list[tuple[str, bytes]]:
    """Headers set by the producer; the pipeline's own are replaced on every hop."""
    return [(k, v) for k, v in record.headers if k not in PIPELINE_HEADERS]


def decide(
    record: Incoming,
    outcome: ValidOrder | BaseException,
    now_ms: int,
    policy: RetryPolicy,
    max_record_bytes: int | None = None,
) -> Decision:
    """Routes one record given the outcome of processing it (an order or an error).

    Args:
        max_record_bytes: the largest record the retry and DLQ topics take (see
            `record_bytes`). A retry copy larger than that is dead-lettered instead,
            and a DLQ copy larger than that leaves out what does not fit.
    """
    if isinstance(outcome, ValidOrder):
        return Processed(record, outcome)
    if isinstance(outcome, (DeserializationError, ValidationError)):
        reason = REASON_DESERIALIZATION if isinstance(outcome, DeserializationError) else REASON_VALIDATION
        return _dead_letter(record, reason, outcome, now_ms, max_record_bytes, retries=record.attempt)
    if record.attempt >= policy.max_retries:
        # A forged attempt beyond the limit is reported as the limit.
        retries = policy.max_retries
        return _dead_letter(record, REASON_RETRIES_EXHAUSTED, outcome, now_ms, max_record_bytes, retries=retries)
    attempt = record.attempt + 1
    not_before = now_ms + backoff_ms(attempt, policy)
    headers = (
        *_foreign_headers(record),
        (H_ATTEMPT, str(attempt).encode()),
        (H_NOT_BEFORE, str(not_before).encode()),
        *_error_headers(record, outcome),
    )
    if max_record_bytes is not None and record_bytes(record.key, record.value, headers) > max_record_bytes:
        # It cannot be copied to the retry topic whole, so it is not retried.
        return _dead_letter(record, REASON_RETRIES_EXHAUSTED, outcome, now_ms, max_record_bytes, retries=record.attempt)
    return Retry(record, attempt, not_before, outcome, headers)


def _dead_letter(
    record: Incoming, reason: str, error: BaseException, now_ms: int, max_record_bytes: int | None, *, retries: int
) -> DeadLetter:
    pipeline = [
        (H_ATTEMPT, str(retries).encode()),
        (H_REASON, reason.encode()),
        *_error_headers(record, error),
        (H_FAILED_AT, str(now_ms).encode()),
    ]
    foreign = _foreign_headers(record)
    key, value = record.key, record.value
    left_out: list[str] = ["headers (unreadable)"] if record.unreadable else []
    if max_record_bytes is not None:
        room = max_record_bytes - record_bytes(None, None, (*pipeline, (H_TRUNCATED, b"x" * 128)))
        key, value, foreign, cut = _fit(key, value, foreign, room)
        left_out += cut
    if left_out:
        pipeline.append((H_TRUNCATED, ", ".join(left_out).encode()))
    return DeadLetter(record, reason, retries, error, (*foreign, *pipeline), key, value)


# What a DLQ copy leaves out, tried in this order until it fits: the value is kept
# if anything is, then the key.
_CUTS = ((), ("headers",), ("value",), ("headers", "value"), ("headers", "value", "key"))


def _fit(
    key: bytes | None, value: bytes | None, foreign: list[tuple[str, bytes]], room: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]], list[str]]:
    """What of a DLQ copy fits in `room` bytes: the key, value and producer headers to carry, and what was left out."""

    def cut_to(cut: tuple[str, ...]) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]], list[str]]:
        left_out = []
        if value is not None and "value" in cut:
            left_out.append(f"value ({len(value)} bytes)")
        if foreign and "headers" in cut:
            left_out.append(f"headers ({len(foreign)})")
        if key is not None and "key" in cut:
            left_out.append(f"key ({len(key)} bytes)")
        return (
            None if "key" in cut else key,
            None if "value" in cut else value,
            [] if "headers" in cut else foreign,
            left_out,
        )

    for cut in _CUTS[:-1]:
        kept_key, kept_value, kept_headers, left_out = cut_to(cut)
        if record_bytes(kept_key, kept_value, tuple(kept_headers)) <= room:
            return kept_key, kept_value, kept_headers, left_out
    return cut_to(_CUTS[-1])
