"""Routing decisions for consumed records (DESIGN section 5), free of Kafka and clocks.

The consumer edge turns each record into an `Incoming`, asks `plan_batch` what to do
with a batch of them at a given time, and applies the returned `BatchPlan`: count the
processed orders, produce the retry and DLQ records, commit the positions and pause
the retry partitions whose head record is not yet due.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from orderpipe.errors import DeserializationError, ValidationError
from orderpipe.order import ValidOrder

__all__ = [
    "REASON_DESERIALIZATION",
    "REASON_RETRIES_EXHAUSTED",
    "REASON_VALIDATION",
    "BatchPlan",
    "DeadLetter",
    "Decision",
    "Deferred",
    "Headers",
    "Incoming",
    "Origin",
    "Processed",
    "Retry",
    "RetryPolicy",
    "backoff_ms",
    "decide",
    "plan_batch",
]

Headers = tuple[tuple[str, bytes], ...]

REASON_DESERIALIZATION = "deserialization"
REASON_VALIDATION = "validation"
REASON_RETRIES_EXHAUSTED = "retries-exhausted"

H_ATTEMPT = "retry.attempt"
H_NOT_BEFORE = "retry.not-before"
H_REASON = "dlq.reason"
H_ERROR_CLASS = "error.class"
H_ERROR_MESSAGE = "error.message"
H_ORIGINAL_TOPIC = "original.topic"
H_ORIGINAL_PARTITION = "original.partition"
H_ORIGINAL_OFFSET = "original.offset"
H_ORIGINAL_TIMESTAMP = "original.timestamp"
H_FAILED_AT = "dlq.failed-at"
PIPELINE_HEADERS = frozenset(
    {
        H_ATTEMPT,
        H_NOT_BEFORE,
        H_REASON,
        H_ERROR_CLASS,
        H_ERROR_MESSAGE,
        H_ORIGINAL_TOPIC,
        H_ORIGINAL_PARTITION,
        H_ORIGINAL_OFFSET,
        H_ORIGINAL_TIMESTAMP,
        H_FAILED_AT,
    }
)
MAX_ERROR_MESSAGE_BYTES = 1024


@dataclass(frozen=True)
class Origin:
    """Where a record first arrived on the orders topic; kept across retries."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class Incoming(NamedTuple):
    """One consumed record, as plain data (a named tuple: one is made per record)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    # True for records read from the retry topic. Only those carry trustworthy
    # pipeline headers: a DLQ record replayed onto `orders` starts afresh.
    from_retry_topic: bool = False

    def header(self, name: str) -> str | None:
        """The last value of a header as text, or None when absent or not UTF-8."""
        for key, raw in reversed(self.headers):
            if key == name:
                try:
                    return raw.decode("utf-8")
                except (UnicodeDecodeError, AttributeError):
                    return None
        return None

    def header_int(self, name: str) -> int | None:
        text = self.header(name)
        try:
            return None if text is None else int(text)
        except ValueError:
            return None

    @property
    def attempt(self) -> int:
        """How many retries this record already is (0 on the orders topic)."""
        return max(self.header_int(H_ATTEMPT) or 0, 0) if self.from_retry_topic else 0

    @property
    def not_before(self) -> int | None:
        return self.header_int(H_NOT_BEFORE) if self.from_retry_topic else None

    @property
    def origin(self) -> Origin:
        if not self.from_retry_topic:
            return Origin(self.topic, self.partition, self.offset, self.timestamp)
        topic = self.header(H_ORIGINAL_TOPIC)
        partition = self.header_int(H_ORIGINAL_PARTITION)
        offset = self.header_int(H_ORIGINAL_OFFSET)
        timestamp = self.header_int(H_ORIGINAL_TIMESTAMP)
        if topic is None or partition is None or offset is None or timestamp is None:
            return Origin(self.topic, self.partition, self.offset, self.timestamp)
        return Origin(topic, partition, offset, timestamp)

    @property
    def label(self) -> str:
        """The record's key for people: the orderId when the key is text."""
        if self.key is None:
            return "(no key)"
        try:
            return self.key.decode("utf-8")
        except UnicodeDecodeError:
            return self.key.hex()


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
    """Produce `value` unchanged to the DLQ with the reason in the headers."""

    record: Incoming
    reason: str
    retries: int
    error: BaseException
    headers: Headers


Decision = Processed | Retry | DeadLetter


@dataclass(frozen=True)
class Deferred:
    """A retry record that is not yet due: pause its partition and seek back to it."""

    topic: str
    partition: int
    offset: int
    due_ms: int


@dataclass(frozen=True)
class BatchPlan:
    decisions: tuple[Decision, ...]
    # Next offset to commit per (topic, partition): just past the last record decided.
    commits: dict[tuple[str, int], int] = field(default_factory=dict)
    deferred: tuple[Deferred, ...] = ()


def backoff_ms(attempt: int, policy: RetryPolicy) -> int:
    """Delay before retry number `attempt` (1-based): base, doubling, capped."""
    return min(policy.backoff_ms << max(attempt - 1, 0), policy.backoff_max_ms)


def _truncate_utf8(text: str, limit: int) -> bytes:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def _error_headers(record: Incoming, error: BaseException) -> list[tuple[str, bytes]]:
    origin = record.origin
    return [
        (H_ERROR_CLASS, type(error).__name__.encode()),
        (H_ERROR_MESSAGE, _truncate_utf8(str(error), MAX_ERROR_MESSAGE_BYTES)),
        (H_ORIGINAL_TOPIC, origin.topic.encode()),
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
) -> Decision:
    """Routes one record given the outcome of processing it (an order or an error)."""
    if isinstance(outcome, ValidOrder):
        return Processed(record, outcome)
    if isinstance(outcome, (DeserializationError, ValidationError)):
        reason = REASON_DESERIALIZATION if isinstance(outcome, DeserializationError) else REASON_VALIDATION
        return _dead_letter(record, reason, outcome, now_ms)
    if record.attempt >= policy.max_retries:
        return _dead_letter(record, REASON_RETRIES_EXHAUSTED, outcome, now_ms)
    attempt = record.attempt + 1
    not_before = now_ms + backoff_ms(attempt, policy)
    headers = (
        *_foreign_headers(record),
        (H_ATTEMPT, str(attempt).encode()),
        (H_NOT_BEFORE, str(not_before).encode()),
        *_error_headers(record, outcome),
    )
    return Retry(record, attempt, not_before, outcome, headers)


def _dead_letter(record: Incoming, reason: str, error: BaseException, now_ms: int) -> DeadLetter:
    headers = (
        *_foreign_headers(record),
        (H_ATTEMPT, str(record.attempt).encode()),
        (H_REASON, reason.encode()),
        *_error_headers(record, error),
        (H_FAILED_AT, str(now_ms).encode()),
    )
    return DeadLetter(record, reason, record.attempt, error, headers)


def plan_batch(
    records: Sequence[Incoming],
    now_ms: int,
    process: Callable[[Incoming], ValidOrder],
    policy: RetryPolicy,
) -> BatchPlan:
    """Decides a batch in order, stopping each retry partition at its first record not yet due.

    Args:
        records: the batch, in the order the consumer returned it.
        now_ms: the current time in epoch milliseconds (one reading per batch).
        process: decodes, validates and handles one record; any exception it raises
            is the record's failure and is routed by `decide`.
        policy: retry limits and backoff. A due time further ahead than the longest
            backoff (a garbled header, or another consumer's clock running fast) is
            cut to that, so no partition stays paused for longer.
    """
    decisions: list[Decision] = []
    commits: dict[tuple[str, int], int] = {}
    deferred: list[Deferred] = []
    stopped: set[tuple[str, int]] = set()
    for record in records:
        tp = (record.topic, record.partition)
        if tp in stopped:
            continue  # refetched after the seek back to the deferred record
        due = record.not_before
        if due is not None and due > now_ms:
            due = min(due, now_ms + policy.backoff_max_ms)
            stopped.add(tp)
            deferred.append(Deferred(record.topic, record.partition, record.offset, due))
            commits[tp] = record.offset
            continue
        outcome: ValidOrder | BaseException
        try:
            outcome = process(record)
        except Exception as exc:  # routing every failure is the point of this function
            outcome = exc
        decisions.append(decide(record, outcome, now_ms, policy))
        commits[tp] = record.offset + 1
    return BatchPlan(tuple(decisions), commits, tuple(deferred))
