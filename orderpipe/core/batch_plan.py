"""Planning a polled batch (docs/wire-formats.md), free of Kafka and clocks.

The consumer edge hands over each poll's records as runs of one partition (`Run`,
orderpipe/model/records.py), asks `plan_batch` what to do with them at a given time,
and applies the returned `BatchPlan`: count the processed orders, produce the retry
and DLQ records, commit the positions and pause the partitions whose head record is
not yet due (a retry) or not yet readable (its schema still being looked up). Each
record is routed by `decide` (orderpipe/core/routing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple, Protocol, overload

from orderpipe.core.routing import DeadLetter, Decision, Processed, Retry, RetryPolicy, decide
from orderpipe.errors import DeserializationError, NotReady
from orderpipe.model.order import ValidOrder
from orderpipe.model.records import Incoming, Run

__all__ = ["CLOCK_SKEW_MS", "BatchPlan", "Decisions", "Deferred", "FastLane", "plan_batch"]

# How far another consumer's clock may run ahead of this one's. A retry record's due
# time is at most its own timestamp plus the longest backoff; anything later than
# that plus this allowance is forged or garbled, and the record counts as due now.
CLOCK_SKEW_MS = 10_000


class FastLane(Protocol):
    """Reads the common record's value as the valid order processing would give, or answers None (`Intake`)."""

    def __call__(self, value: bytes | None) -> ValidOrder | None: ...

    def read(self, values: Iterable[bytes | None], orders: list[ValidOrder] | None = None) -> tuple[int, int]:
        """How many of `values` are valid orders, up to the first it does not take (also taken), and their cents.

        Each order is added to `orders` if given.
        """
        ...


class _Orders(NamedTuple):
    """`length` records of a plain run, from `start` on, that `fast` read as valid orders from their values alone."""

    run: Run
    start: int
    length: int
    fast: FastLane


class Decisions(Sequence[Decision]):
    """A batch's decisions, in order.

    The common record's `Processed` is made only when it is read: `plan_batch` keeps
    how many of a plain run's records the fast lane read as valid orders, and the
    order and the record are made again from the run when asked. A quiet consumer,
    which reads no decision but the retries and dead letters, never makes one.
    """

    __slots__ = ("_length", "_made", "_parts")

    def __init__(self, parts: Iterable[Decision | _Orders] = (), length: int | None = None) -> None:
        """`parts`: decisions, and runs of orders read by the fast lane; `length`: the decisions they stand for."""
        self._parts: list[Decision | _Orders] = list(parts)
        self._length = len(self._parts) if length is None else length
        self._made: tuple[Decision, ...] | None = None

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Decision]:
        if self._made is not None:
            return iter(self._made)
        return self._making()

    def _making(self) -> Iterator[Decision]:
        """The decisions, made from the parts; kept once all were made, so they are made once."""
        made: list[Decision] = []
        for decision in self._from_parts():
            made.append(decision)
            yield decision
        self._made = tuple(made)

    def _from_parts(self) -> Iterator[Decision]:
        new = tuple.__new__
        for part in self._parts:
            if type(part) is _Orders:
                run, start, length, fast = part
                orders: list[ValidOrder] = []
                fast.read(run.values[start : start + length], orders)
                for index, order in enumerate(orders, start):
                    yield new(Processed, (run.record(index), order))
            else:
                yield part  # type: ignore[misc]

    @overload
    def __getitem__(self, index: int) -> Decision: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Decision, ...]: ...
    def __getitem__(self, index: int | slice) -> Decision | tuple[Decision, ...]:
        if isinstance(index, slice) and index.start in (None, 0) and index.step is None and index.stop is not None:
            return tuple(islice(self, max(index.stop, 0)))  # the first few, without making the rest
        if self._made is None:
            self._made = tuple(self)
        return self._made[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Decisions, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Decisions({list(self)!r})"


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

    decisions: Sequence[Decision] = ()
    # Next offset to commit per (topic, partition): just past the last record decided.
    commits: dict[tuple[str, int], int] = field(default_factory=dict)
    deferred: tuple[Deferred, ...] = ()
    routed: tuple[Retry | DeadLetter, ...] = ()
    totals: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # [orders, cents]

    @classmethod
    def of(
        cls,
        decisions: Sequence[Decision],
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


def plan_batch(
    runs: Sequence[Run],
    now_ms: int,
    process: Callable[[Incoming], ValidOrder],
    policy: RetryPolicy,
    max_record_bytes: int | None = None,
    *,
    fast: FastLane | None = None,
) -> BatchPlan:
    """Decides a batch in order, stopping a partition at its first record not yet due or not yet readable.

    Args:
        runs: the batch as the consumer returned it, in runs of one partition
            (records already whole are made into runs by `runs_of`).
        now_ms: the current time in epoch milliseconds (one reading per batch).
        process: decodes, validates and handles one record; any exception it raises
            is the record's failure and is routed by `decide`, except `NotReady`,
            which defers the record (its partition waits, the others go on).
        policy: retry limits and backoff.
        max_record_bytes: see `decide`.
        fast: reads a record's value (readable, and due if it is a retry) as the
            valid order `process` would return, or answers None, and then `process`
            decides. Only for a `process` that does nothing more than read the order.
    """
    planner = _Planner(now_ms, process, policy, max_record_bytes)
    for run in runs:
        tp = (run.topic, run.partition)
        if tp in planner.stopped:
            continue  # refetched after the seek back to a deferred record
        if run.plain and fast is not None:
            planner.plain_run(tp, run, fast)
        else:
            planner.run(tp, run.records(), fast)
    decisions = Decisions(planner.parts, len(planner.parts) + planner.more)
    return BatchPlan(decisions, planner.commits, tuple(planner.deferred), tuple(planner.routed), planner.totals)


class _Planner:
    """What plan_batch adds up while it decides, run after run."""

    def __init__(
        self, now_ms: int, process: Callable[[Incoming], ValidOrder], policy: RetryPolicy, max_record_bytes: int | None
    ) -> None:
        self.now_ms, self.process, self.policy, self.max_record_bytes = now_ms, process, policy, max_record_bytes
        # The decisions, with each run of orders the fast lane read as one part (see Decisions).
        self.parts: list[Decision | _Orders] = []
        self.more = 0  # how many more decisions the parts stand for than there are parts
        self.routed: list[Retry | DeadLetter] = []
        self.totals: dict[tuple[str, int], list[int]] = {}
        self.commits: dict[tuple[str, int], int] = {}
        self.deferred: list[Deferred] = []
        self.stopped: set[tuple[str, int]] = set()

    def plain_run(self, tp: tuple[str, int], run: Run, fast: FastLane) -> None:
        """Decides a plain run: its values read by `fast`, and only a record it does not take made whole."""
        values, start = run.values, 0
        # One iterator for the whole run: each read goes on where the last one stopped,
        # so a run of values the fast lane refuses costs no copy of the rest of the run.
        remaining = iter(values)
        count = cents = 0
        while start < len(values):
            read, added = fast.read(remaining)
            cents += added
            if read:
                self.parts.append(_Orders(run, start, read, fast))
                self.more += read - 1
                count += read
                start += read
            if start < len(values):  # a record the fast lane did not take (and took from `remaining`): decided whole
                processed = self._decide(tp, run.record(start))
                if processed is None:
                    break
                if processed:
                    count += 1
                    cents += processed
                start += 1
        else:
            self.commits[tp] = run.last_offset + 1
        self._add(tp, count, cents)

    def run(self, tp: tuple[str, int], records: Iterable[Incoming], fast: FastLane | None) -> None:
        """Decides a run of whole records, up to the first one deferred."""
        count = cents = 0
        now_ms, policy = self.now_ms, self.policy
        for record in records:
            # A retry not yet due is deferred by _decide, whatever its value.
            if (
                fast is not None
                and not record.unreadable
                and (not record.from_retry_topic or _due(record, now_ms, policy) is None)
            ):
                order = fast(record.value)
                if order is not None:
                    self.parts.append(_new_tuple(Processed, (record, order)))
                    count += 1
                    cents += order.price_cents
                    continue
            processed = self._decide(tp, record)
            if processed is None:
                break
            if processed:
                count += 1
                cents += processed
        else:
            self.commits[tp] = record.offset + 1  # a run holds at least one record
        self._add(tp, count, cents)

    def _decide(self, tp: tuple[str, int], record: Incoming) -> int | None:
        """Decides one record through `process`.

        Returns the order's cents when it was processed (a valid order has at least
        one), 0 when it was retried or dead-lettered, and None when it is deferred,
        which stops its partition.
        """
        now_ms, policy = self.now_ms, self.policy
        due, outcome = _attempt(record, now_ms, self.process, policy)
        if outcome is None:  # not due yet, or not ready: the partition stops here
            self.stopped.add(tp)
            self.deferred.append(Deferred(record.topic, record.partition, record.offset, due or now_ms))
            self.commits[tp] = record.offset
            return None
        if type(outcome) is ValidOrder:  # the common case, as `decide` would route it
            self.parts.append(_new_tuple(Processed, (record, outcome)))
            return outcome.price_cents
        decision = decide(record, outcome, now_ms, policy, self.max_record_bytes)
        self.parts.append(decision)
        if isinstance(decision, Processed):
            return decision.order.price_cents
        self.routed.append(decision)
        return 0

    def _add(self, tp: tuple[str, int], count: int, cents: int) -> None:
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
        return None, _without_tracebacks(exc)


def _without_tracebacks(error: Exception) -> Exception:
    """A record's failure without its traceback, nor those of the exceptions it came from.

    A traceback holds the frames it passed through, and each frame the frame that called
    it, up to the planner's, which holds the failure: every failed record would leave
    a cycle of some twenty objects to the collector, most of what a poison record cost.
    Only a failure's type and text are used (the DLQ headers, the console's line).
    """
    pending: list[BaseException | None] = [error]
    for _ in range(_MOST_CHAINED):
        if not pending:
            break
        link = pending.pop()
        if link is not None and link.__traceback__ is not None:
            link.__traceback__ = None
            pending += (link.__cause__, link.__context__)
    return error


# How many chained exceptions `_without_tracebacks` clears at most (a chain may loop).
_MOST_CHAINED = 64


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
