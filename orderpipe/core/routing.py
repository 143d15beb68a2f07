"""Routing decisions for consumed records (docs/wire-formats.md), free of Kafka and clocks.

The consumer edge turns each record into an `Incoming` (orderpipe/model/records.py),
asks `plan_batch` what to do with a batch of them at a given time, and applies the
returned `BatchPlan`: count the processed orders, produce the retry and DLQ records,
commit the positions and pause the partitions whose head record is not yet due (a
retry) or not yet readable (its schema still being looked up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import NamedTuple

from orderpipe.errors import DeserializationError, NotReady, ValidationError
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
    "CLOCK_SKEW_MS",
    "REASONS",
    "REASON_DESERIALIZATION",
    "REASON_RETRIES_EXHAUSTED",
    "REASON_VALIDATION",
    "BatchPlan",
    "DeadLetter",
    "Decision",
    "Deferred",
    "Processed",
    "Retry",
    "RetryPolicy",
    "backoff_ms",
    "decide",
    "plan_batch",
]

REASON_DESERIALIZATION = "deserialization"
REASON_VALIDATION = "validation"
REASON_RETRIES_EXHAUSTED = "retries-exhausted"
REASONS = (REASON_DESERIALIZATION, REASON_VALIDATION, REASON_RETRIES_EXHAUSTED)

MAX_ERROR_MESSAGE_BYTES = 1024
# How far another consumer's clock may run ahead of this one's. A retry record's due
# time is at most its own timestamp plus the longest backoff; anything later than
# that plus this allowance is forged or garbled, and the record counts as due now.
CLOCK_SKEW_MS = 10_000


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


@dataclass(frozen=True)
class Deferred:
    """A record not yet due (a retry) or not yet readable (NotReady): pause its partition and seek back to it."""

    topic: str
    partition: int
    offset: int
    due_ms: int


@dataclass(frozen=True)
class BatchPlan:
    """A batch's decisions, in order, and what the effects need of them without going over each again.

    `routed` holds the retries and dead letters among the decisions, in order, and
    `totals` the orders processed and their cents per partition. `plan_batch` adds
    them up as it decides; `BatchPlan.of` does it for decisions made elsewhere.
    """

    decisions: tuple[Decision, ...] = ()
    # Next offset to commit per (topic, partition): just past the last record decided.
    commits: dict[tuple[str, int], int] = field(default_factory=dict)
    deferred: tuple[Deferred, ...] = ()
    routed: tuple[Retry | DeadLetter, ...] = ()
    totals: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # [orders, cents]

    @classmethod
    def of(
        cls,
        decisions: tuple[Decision, ...],
        commits: dict[tuple[str, int], int] | None = None,
        deferred: tuple[Deferred, ...] = (),
    ) -> BatchPlan:
        routed: list[Retry | DeadLetter] = []
        totals: dict[tuple[str, int], list[int]] = {}
        for decision in decisions:
            if isinstance(decision, Processed):
                added = totals.setdefault((decision.record.topic, decision.record.partition), [0, 0])
                added[0] += 1
                added[1] += decision.order.price_cents
            else:
                routed.append(decision)
        return cls(decisions, commits or {}, deferred, tuple(routed), totals)


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


def plan_batch(
    records: Sequence[Incoming],
    now_ms: int,
    process: Callable[[Incoming], ValidOrder],
    policy: RetryPolicy,
    max_record_bytes: int | None = None,
    *,
    fast: Callable[[bytes | None], ValidOrder | None] | None = None,
) -> BatchPlan:
    """Decides a batch in order, stopping a partition at its first record not yet due or not yet readable.

    Args:
        records: the batch, in the order the consumer returned it.
        now_ms: the current time in epoch milliseconds (one reading per batch).
        process: decodes, validates and handles one record; any exception it raises
            is the record's failure and is routed by `decide`, except `NotReady`,
            which defers the record (its partition waits, the others go on).
        policy: retry limits and backoff.
        max_record_bytes: see `decide`.
        fast: reads the common record's value (of the orders topic, readable) as the
            valid order `process` would return, or answers None, and then `process`
            decides. Only for a `process` that does nothing more than read the order.
    """
    planner = _Planner(now_ms, process, policy, max_record_bytes)
    # Records come in runs of one partition: what is per partition is done once per run.
    for (topic, partition, from_retry_topic), run in groupby(records, _RUN_KEY):
        tp = (topic, partition)
        if tp not in planner.stopped:  # else refetched after the seek back to a deferred record
            planner.run(tp, run, None if from_retry_topic else fast)
    return BatchPlan(
        tuple(planner.decisions), planner.commits, tuple(planner.deferred), tuple(planner.routed), planner.totals
    )


_RUN_KEY = attrgetter("topic", "partition", "from_retry_topic")


class _Planner:
    """What plan_batch adds up while it decides, run after run."""

    def __init__(
        self, now_ms: int, process: Callable[[Incoming], ValidOrder], policy: RetryPolicy, max_record_bytes: int | None
    ) -> None:
        self.now_ms, self.process, self.policy, self.max_record_bytes = now_ms, process, policy, max_record_bytes
        self.decisions: list[Decision] = []
        self.routed: list[Retry | DeadLetter] = []
        self.totals: dict[tuple[str, int], list[int]] = {}
        self.commits: dict[tuple[str, int], int] = {}
        self.deferred: list[Deferred] = []
        self.stopped: set[tuple[str, int]] = set()

    def run(
        self, tp: tuple[str, int], records: Iterable[Incoming], fast: Callable[[bytes | None], ValidOrder | None] | None
    ) -> None:
        """Decides one partition's run of records, up to the first one deferred."""
        append, now_ms, policy = self.decisions.append, self.now_ms, self.policy
        count = cents = 0
        for record in records:
            if fast is not None and not record.unreadable:
                order = fast(record.value)
                if order is not None:
                    append(_new_tuple(Processed, (record, order)))
                    count += 1
                    cents += order.price_cents
                    continue
            due, outcome = _attempt(record, now_ms, self.process, policy)
            if outcome is None:  # not due yet, or not ready: the partition stops here
                self.stopped.add(tp)
                self.deferred.append(Deferred(record.topic, record.partition, record.offset, due or now_ms))
                self.commits[tp] = record.offset
                break
            decision = (
                _new_tuple(Processed, (record, outcome))  # the common case, as `decide` would route it
                if type(outcome) is ValidOrder
                else decide(record, outcome, now_ms, policy, self.max_record_bytes)
            )
            append(decision)
            if isinstance(decision, Processed):
                count += 1
                cents += decision.order.price_cents
            else:
                self.routed.append(decision)
        else:
            self.commits[tp] = record.offset + 1  # a run holds at least one record
        if count:
            added = self.totals.setdefault(tp, [0, 0])
            added[0] += count
            added[1] += cents


_new_tuple = tuple.__new__


def _attempt(
    record: Incoming, now_ms: int, process: Callable[[Incoming], ValidOrder], policy: RetryPolicy
) -> tuple[int | None, ValidOrder | BaseException | None]:
    """What processing the record gave (its order or its failure), or when it is due: (due, None)."""
    # Only records of the retry topic carry a due time.
    due = _due(record, now_ms, policy) if record.from_retry_topic else None
    if due is not None:
        return due, None
    if record.unreadable:
        return None, DeserializationError(record.unreadable)
    try:
        return None, process(record)
    except NotReady as exc:
        return now_ms + exc.retry_after_ms, None
    except Exception as exc:  # routing every failure is the point of plan_batch
        return None, exc


def _due(record: Incoming, now_ms: int, policy: RetryPolicy) -> int | None:
    """When a retry record not yet due is due, or None when it may be processed now.

    A retry written by this pipeline is due at most the longest backoff after it was
    written. A later due time (a forged or garbled header, a timestamp in the future)
    counts as due now, so no partition is paused for longer than that.
    """
    due = record.not_before
    if due is None or due <= now_ms:
        return None
    if due > min(record.timestamp, now_ms) + policy.backoff_max_ms + CLOCK_SKEW_MS:
        return None
    return due
