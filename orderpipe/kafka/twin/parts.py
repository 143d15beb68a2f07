"""The parts of the in-memory twin (orderpipe/kafka/twin/): time, records, transactions, groups and faults.

Kept apart so that each class has one job: `TransactionCoordinator` does what a
broker's transaction coordinator does (epochs that fence older producers, commit and
abort markers, offsets committed with the transaction, time-outs), `Faults` holds
what a test asked to go wrong and when.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from orderpipe.core.ports import TP
from orderpipe.errors import KafkaCallError
from orderpipe.model.records import Headers

__all__ = [
    "ERROR_KINDS",
    "Entry",
    "Faults",
    "Group",
    "Killed",
    "Later",
    "Member",
    "Transaction",
    "TransactionCoordinator",
    "VirtualClock",
    "injected_error",
]

T = TypeVar("T")
# A group's member: a `Member` for the cluster, a `TwinEdge` in fact. A type parameter, so that
# this module needs no import of orderpipe.kafka.twin.edge (which imports this one).
M = TypeVar("M")
ERROR_KINDS = ("retriable", "abortable", "abortable-timeout", "fatal", "fenced")


def injected_error(kind: str, operation: str) -> KafkaCallError:
    """An error of one of ERROR_KINDS, as Kafka would report it for `operation`."""
    message = f"could not {operation}: injected {kind} error"
    if kind == "retriable":
        return KafkaCallError(message, "REQUEST_TIMED_OUT", retriable=True)
    if kind == "abortable":
        return KafkaCallError(message, "INVALID_TXN_STATE", abortable=True)
    if kind == "abortable-timeout":  # as librdkafka reports a send_offsets whose second step timed out
        return KafkaCallError(message, "_TIMED_OUT", abortable=True)
    if kind == "fatal":
        return KafkaCallError(message, "_FATAL", fatal=True)
    if kind == "fenced":
        return KafkaCallError(message, "PRODUCER_FENCED", fatal=True)
    raise ValueError(f"unknown error kind {kind!r}; one of {', '.join(ERROR_KINDS)}")


class Killed(BaseException):
    """The twin consumer was killed at a call, as by SIGKILL: nothing of it runs any more."""


class VirtualClock:
    """Time that moves only when told to (a `Clock`); epoch and monotonic seconds are the same."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(eq=False)
class Transaction:
    transactional_id: str
    started: float
    state: str = "open"  # open, committed or aborted
    partitions: set[TP] = field(default_factory=set)
    offsets: dict[str, dict[TP, int]] = field(default_factory=dict)  # group -> offsets to commit


@dataclass
class Entry:
    """One offset of a partition: a record, or a transaction's marker."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int
    transaction: Transaction | None = None
    marker: bool = False

    @property
    def readable(self) -> bool:
        """Visible to read_committed readers: a record committed or outside any transaction."""
        return not self.marker and (self.transaction is None or self.transaction.state == "committed")


@dataclass
class Group(Generic[M]):
    """A consumer group as its coordinator keeps it.

    A rebalance is eager and takes two steps, as in Kafka: every member is told to
    give its partitions up (it finds out at its next poll, and rejoins), and once all
    live members have rejoined the generation moves on and the new assignment is handed
    out. Until then the old generation is still the group's, and offsets committed
    with it are accepted.
    """

    members: list[M] = field(default_factory=list)
    generation: int = 0
    assignment: dict[int, tuple[TP, ...]] = field(default_factory=dict)  # id(member) -> partitions
    committed: dict[TP, int] = field(default_factory=dict)
    rejoining: list[M] = field(default_factory=list)
    held: bool = False  # every member rejoined, and the rebalance waits for `TwinCluster.joins_held_until`


class Later(Generic[T]):
    """A `Pending` answered on the second look (as a broker's answer arrives a turn later), computed then."""

    def __init__(self, answer: Callable[[], T]) -> None:
        self._answer = answer
        self._looks = 0
        self._value: T | None = None
        self._error: KafkaCallError | None = None

    def done(self) -> bool:
        self._looks += 1
        if self._looks == 2:
            try:
                self._value = self._answer()
            except KafkaCallError as exc:
                self._error = exc
        return self._looks >= 2

    def result(self) -> T:
        assert self._looks >= 2, "result() before done()"
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class TransactionCoordinator(Generic[M]):
    """Transactional ids, their epochs and their open transactions, as the broker keeps them."""

    def __init__(
        self, clock: VirtualClock, logs: dict[str, list[list[Entry]]], groups: dict[str, Group[M]], timeout_s: float
    ) -> None:
        self._clock, self._logs, self._groups = clock, logs, groups
        self.timeout_s = timeout_s
        self._epochs: dict[str, int] = {}
        self._open: dict[str, Transaction] = {}

    def open_count(self) -> int:
        self.time_out()
        return len(self._open)

    def init(self, transactional_id: str) -> int:
        """Registers a transactional id: a new epoch, and whatever the last one left open is aborted."""
        self._end(transactional_id, "aborted")
        self._epochs[transactional_id] = self._epochs.get(transactional_id, 0) + 1
        return self._epochs[transactional_id]

    def epoch(self, transactional_id: str) -> int:
        return self._epochs.get(transactional_id, 0)

    def begin(self, transactional_id: str) -> Transaction:
        transaction = Transaction(transactional_id, self._clock.now)
        self._open[transactional_id] = transaction
        return transaction

    def commit(self, transactional_id: str) -> None:
        self._end(transactional_id, "committed")

    def abort(self, transactional_id: str) -> None:
        self._end(transactional_id, "aborted")

    def _end(self, transactional_id: str, state: str) -> None:
        transaction = self._open.pop(transactional_id, None)
        if transaction is None:
            return
        transaction.state = state
        for topic, partition in sorted(transaction.partitions):
            marker = Entry(None, None, (), int(self._clock.now * 1000), transaction, marker=True)
            self._logs[topic][partition].append(marker)
        if state == "committed":
            for group, offsets in transaction.offsets.items():
                self._groups.setdefault(group, Group()).committed.update(offsets)

    def time_out(self) -> None:
        """Aborts transactions open for longer than the transaction timeout, as the broker does."""
        for transactional_id, transaction in list(self._open.items()):
            if self._clock.now - transaction.started > self.timeout_s:
                self._end(transactional_id, "aborted")

    def unstable(self, group: str, partitions: Collection[TP]) -> bool:
        """Whether an open transaction holds offsets of these partitions for the group."""
        self.time_out()
        return any(set(t.offsets.get(group, {})) & set(partitions) for t in self._open.values())


@dataclass
class _Fault:
    """An injected error (or, with none, a kill) for a call of `operation`, after `skip` calls went through."""

    operation: str
    error: KafkaCallError | None
    after: bool = False
    skip: int = 0


class _Edge(Protocol):
    dead: bool


class Member(Protocol):
    """What the cluster knows of a group's member (a `TwinEdge`): the cluster tells it of rebalances."""

    group: str
    topics: tuple[str, ...]
    dead: bool
    expired: bool
    last_poll: float

    def revoke(self, partitions: tuple[TP, ...]) -> None: ...

    def assigned(self, partitions: tuple[TP, ...], generation: int) -> None: ...


class Faults:
    """What a test asked to go wrong, and every call the edges made (`calls`)."""

    # Operations at which `kill_at(..., after=True)` can strike: once they took effect.
    # produce: after its first record.
    CHECKED_AFTER = frozenset({"poll", "produce", "send_offsets", "commit_transaction"})

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._hooks: list[tuple[str, Callable[[], None]]] = []
        self.calls: list[str] = []

    def fail(self, operation: str, kind: str, *, times: int = 1) -> None:
        """The next `times` calls of `operation` (by any edge) raise an error of `kind` (see ERROR_KINDS)."""
        error = injected_error(kind, operation)
        self._faults.extend(_Fault(operation, error) for _ in range(times))

    def kill_at(self, operation: str, *, nth: int = 1, after: bool = False) -> None:
        """Kills the edge making the `nth` call of `operation` ("*": any) from now, before it takes effect or after."""
        self._faults.append(_Fault(operation, None, after, nth - 1))

    def clear(self) -> None:
        """Drops the errors and kills not yet used up."""
        self._faults.clear()

    def when(self, operation: str, action: Callable[[], None]) -> None:
        """Runs `action` once, just before the next call of `operation` (a rebalance mid-batch, say)."""
        self._hooks.append((operation, action))

    def check(self, edge: _Edge, operation: str, *, after: bool = False) -> None:
        """Runs what was set for this call of `operation`; raises Killed or the injected error."""
        if edge.dead:
            raise Killed(operation)
        if not after:
            self.calls.append(operation)
            for index, (name, action) in enumerate(self._hooks):
                if name == operation:
                    del self._hooks[index]
                    action()
                    break
        for index, fault in enumerate(self._faults):
            if fault.operation not in (operation, "*") or fault.after != after:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                break
            del self._faults[index]
            if fault.error is not None:
                raise fault.error
            edge.dead = True
            raise Killed(operation)
