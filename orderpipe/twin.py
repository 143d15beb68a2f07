"""An in-memory twin of the Kafka edge, so that unit tests drive the whole consumer without a broker.

`TwinCluster` keeps what a broker keeps, in memory: partitions with offsets,
transactions that really commit or abort (each leaves a marker that takes an
offset), read_committed visibility up to the last stable offset, consumer groups with
generations and eager rebalances, committed offsets (held back while a transaction
with offsets of the partition is open), transactional ids with epochs that fence
older producers, and transactions that time out. `TwinEdge` is one consumer
process's `KafkaEdge` on it. Time is virtual (`VirtualClock`): a poll that finds
nothing moves it on by its timeout, so backoffs and idle limits take no real time.

Tests steer it: `produce` writes input records, `rebalance` and `expire` move
partitions, `fail` makes the next calls of an operation raise the error given (the
kinds of DESIGN's failure handling: retriable, abortable, fatal, fenced) and
`kill_at` kills a consumer at a call, as SIGKILL would: it raises `Killed`, and the
process's open transaction and group membership are left behind for the next one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from orderpipe.edge import BEGINNING, TP, Assigned, EdgeOptions, Event, Outgoing, Polled, Revoked, TopicSpec
from orderpipe.errors import FatalKafkaError, KafkaCallError
from orderpipe.routing import Headers, Incoming
from orderpipe.settings import Settings

__all__ = ["ERROR_KINDS", "Killed", "TwinCluster", "TwinEdge", "VirtualClock", "injected_error"]

T = TypeVar("T")

ERROR_KINDS = ("retriable", "abortable", "fatal", "fenced")


def injected_error(kind: str, operation: str) -> KafkaCallError:
    """An error of one of ERROR_KINDS, as Kafka would report it for `operation`."""
    message = f"could not {operation}: injected {kind} error"
    if kind == "retriable":
        return KafkaCallError(message, "REQUEST_TIMED_OUT", retriable=True)
    if kind == "abortable":
        return KafkaCallError(message, "INVALID_TXN_STATE", abortable=True)
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


@dataclass
class _Fault:
    """An injected error (or, with none, a kill) for a call of `operation`, after `skip` calls went through."""

    operation: str
    error: KafkaCallError | None
    after: bool = False
    skip: int = 0


@dataclass(eq=False)
class _Transaction:
    transactional_id: str
    started: float
    state: str = "open"  # open, committed or aborted
    partitions: set[TP] = field(default_factory=set)
    offsets: dict[str, dict[TP, int]] = field(default_factory=dict)  # group -> offsets to commit


@dataclass
class _Entry:
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int
    transaction: _Transaction | None = None
    marker: bool = False

    @property
    def readable(self) -> bool:
        """Visible to read_committed readers: a record committed or outside any transaction."""
        return not self.marker and (self.transaction is None or self.transaction.state == "committed")


@dataclass
class _Group:
    members: list[TwinEdge] = field(default_factory=list)
    generation: int = 0
    assignment: dict[int, tuple[TP, ...]] = field(default_factory=dict)  # id(member) -> partitions
    committed: dict[TP, int] = field(default_factory=dict)


class _Ready(Generic[T]):
    """A `Pending` that is answered at once."""

    def __init__(self, value: T | None = None, error: KafkaCallError | None = None) -> None:
        self._value, self._error = value, error

    def done(self) -> bool:
        return True

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class TwinCluster:
    """The broker's side: topics, transactions and groups, for any number of `TwinEdge`s."""

    # Operations at which `kill_at(..., after=True)` can strike: once they took effect.
    # produce: after its first record.
    CHECKED_AFTER = frozenset({"poll", "produce", "send_offsets", "commit_transaction"})

    def __init__(self, clock: VirtualClock | None = None, *, transaction_timeout_s: float = 10.0) -> None:
        self.clock = clock or VirtualClock()
        self.transaction_timeout_s = transaction_timeout_s
        self.logs: dict[str, list[list[_Entry]]] = {}
        self.groups: dict[str, _Group] = {}
        self._epochs: dict[str, int] = {}
        self._open: dict[str, _Transaction] = {}
        self._faults: list[_Fault] = []
        self._hooks: list[tuple[str, Callable[[], None]]] = []
        self.calls: list[str] = []

    # What tests use.

    def create_topic(self, name: str, partitions: int) -> None:
        self.logs.setdefault(name, [[] for _ in range(partitions)])

    def produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = (), partition: int | None = None
    ) -> int:
        """Appends a record outside any transaction (as a plain producer would); returns its offset."""
        return self.append(topic, key, value, headers, partition=partition)

    def records(self, topic: str) -> list[Incoming]:
        """Every committed record of a topic, partition by partition (what a read_committed reader sees)."""
        return [
            Incoming(topic, p, offset, entry.timestamp, entry.key, entry.value, entry.headers)
            for p, log in enumerate(self.logs.get(topic, []))
            for offset, entry in enumerate(log)
            if entry.readable
        ]

    def open_transactions(self) -> int:
        return sum(1 for txn in self._open.values() if txn.state == "open")

    def fail(self, operation: str, kind: str, *, times: int = 1) -> None:
        """The next `times` calls of `operation` (by any edge) raise an error of `kind` (see ERROR_KINDS)."""
        error = injected_error(kind, operation)
        self._faults.extend(_Fault(operation, error) for _ in range(times))

    def kill_at(self, operation: str, *, nth: int = 1, after: bool = False) -> None:
        """Kills the edge making the `nth` call of `operation` ("*": any) from now, before it takes effect or after."""
        self._faults.append(_Fault(operation, None, after, nth - 1))

    def clear_faults(self) -> None:
        """Drops the errors and kills not yet used up."""
        self._faults.clear()

    def when(self, operation: str, action: Callable[[], None]) -> None:
        """Runs `action` once, just before the next call of `operation` (a rebalance mid-batch, say)."""
        self._hooks.append((operation, action))

    def rebalance(self, group: str) -> None:
        """A new generation: the live members share the subscribed partitions (eager: all revoked first)."""
        state = self.groups.setdefault(group, _Group())
        state.members = [m for m in state.members if not m.dead]
        state.generation += 1
        partitions = sorted({(t, p) for m in state.members for t in m.topics for p in range(len(self.logs.get(t, [])))})
        for index, member in enumerate(state.members):
            old = state.assignment.get(id(member), ())
            new = tuple(partitions[index :: len(state.members)])
            state.assignment[id(member)] = new
            member.rebalanced(old, new, state.generation)

    def expire(self, edge: TwinEdge) -> None:
        """The group drops a member that stopped polling (max.poll.interval.ms): a zombie until it polls."""
        group = self.groups[edge.group]
        group.members.remove(edge)
        group.assignment.pop(id(edge), None)
        edge.expired = True
        self.rebalance(edge.group)

    @contextmanager
    def open_edge(self, settings: Settings, options: EdgeOptions) -> Iterator[TwinEdge]:
        """An `EdgeOpener` for OrderConsumer: a new edge of this cluster, closed (leaving its group) at the end.

        A killed edge is not closed: it stays in its group until the next rebalance, and
        its open transaction stays open, as after SIGKILL.
        """
        edge = TwinEdge(self, settings, options)
        try:
            yield edge
        finally:
            if not edge.dead:
                edge.close()

    # What the edges use.

    def check(self, edge: TwinEdge, operation: str, *, after: bool = False) -> None:
        """Runs the faults set for `operation`; raises Killed or the injected error."""
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

    def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        partition: int | None = None,
        transaction: _Transaction | None = None,
    ) -> int:
        partitions = self.logs[topic]
        if partition is None:
            partition = zlib.crc32(key or b"") % len(partitions)
        log = partitions[partition]
        log.append(_Entry(key, value, tuple(headers), int(self.clock.now * 1000), transaction))
        if transaction is not None:
            transaction.partitions.add((topic, partition))
        return len(log) - 1

    def stable_end(self, tp: TP) -> int:
        """The last stable offset: the first record of a transaction still open, else the end."""
        self.time_out_transactions()
        log = self.logs[tp[0]][tp[1]]
        for offset, entry in enumerate(log):
            if entry.transaction is not None and entry.transaction.state == "open":
                return offset
        return len(log)

    def read(self, tp: TP, position: int, limit: int, retry_topic: str) -> tuple[list[Incoming], int]:
        """Up to `limit` readable records from `position`; returns them and the new position."""
        topic, partition = tp
        log, end = self.logs[topic][partition], self.stable_end(tp)
        records: list[Incoming] = []
        while position < end and len(records) < limit:
            entry = log[position]
            if entry.readable:
                records.append(
                    Incoming(
                        topic,
                        partition,
                        position,
                        entry.timestamp,
                        entry.key,
                        entry.value,
                        entry.headers,
                        topic == retry_topic,
                    )
                )
            position += 1
        return records, position

    def init_transactions(self, transactional_id: str) -> int:
        """Registers a transactional id: a new epoch, and whatever the last one left open is aborted."""
        self._end(transactional_id, "aborted")
        self._epochs[transactional_id] = self._epochs.get(transactional_id, 0) + 1
        return self._epochs[transactional_id]

    def current_epoch(self, transactional_id: str) -> int:
        return self._epochs.get(transactional_id, 0)

    def begin(self, transactional_id: str) -> _Transaction:
        transaction = _Transaction(transactional_id, self.clock.now)
        self._open[transactional_id] = transaction
        return transaction

    def _end(self, transactional_id: str, state: str) -> None:
        transaction = self._open.pop(transactional_id, None)
        if transaction is None or transaction.state != "open":
            return
        transaction.state = state
        for topic, partition in sorted(transaction.partitions):
            self.logs[topic][partition].append(_Entry(None, None, (), int(self.clock.now * 1000), transaction, True))
        if state == "committed":
            for group, offsets in transaction.offsets.items():
                self.groups.setdefault(group, _Group()).committed.update(offsets)

    def commit(self, transactional_id: str) -> None:
        self._end(transactional_id, "committed")

    def abort(self, transactional_id: str) -> None:
        self._end(transactional_id, "aborted")

    def time_out_transactions(self) -> None:
        """Aborts transactions open for longer than the transaction timeout, as the broker does."""
        for transactional_id, transaction in list(self._open.items()):
            if transaction.state == "open" and self.clock.now - transaction.started > self.transaction_timeout_s:
                self._end(transactional_id, "aborted")

    def unstable(self, group: str, partitions: Collection[TP]) -> bool:
        """Whether an open transaction holds offsets of these partitions for the group."""
        self.time_out_transactions()
        return any(
            transaction.state == "open" and set(transaction.offsets.get(group, {})) & set(partitions)
            for transaction in self._open.values()
        )


class TwinEdge:
    """One consumer process's `KafkaEdge` on a `TwinCluster`."""

    def __init__(self, cluster: TwinCluster, settings: Settings, options: EdgeOptions) -> None:
        self._cluster = cluster
        self.group = settings.consumer_group
        self._retry_topic = settings.retry_topic
        self._transactional_id = options.transactional_id
        self._epoch = 0
        self._transaction: _Transaction | None = None
        self.topics: tuple[str, ...] = ()
        self.dead = False
        self.expired = False
        self._events: list[Event] = []
        self._generation = 0
        self._positions: dict[TP, int] = {}  # the assignment, with the next offset of each partition
        self._paused: set[TP] = set()  # kept across assignments, as librdkafka does
        self._pending_generation = 0
        self.stats = _TwinStatsTail(cluster, self, (settings.stats_topic, 0))

    # Metadata.

    def partition_counts(self) -> dict[str, int]:
        self._cluster.check(self, "partition_counts")
        return {name: len(partitions) for name, partitions in self._cluster.logs.items()}

    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        self._cluster.check(self, "create_topics")
        for spec in specs:
            self._cluster.create_topic(spec.name, spec.partitions)

    # The group consumer.

    def subscribe(self, topics: Sequence[str]) -> None:
        self._cluster.check(self, "subscribe")
        self.topics = tuple(topics)
        self._cluster.groups.setdefault(self.group, _Group()).members.append(self)
        self._cluster.rebalance(self.group)

    def rebalanced(self, old: tuple[TP, ...], new: tuple[TP, ...], generation: int) -> None:
        """Called by the cluster: the events this member sees at its next poll."""
        if old:
            self._events.append(Revoked(old))
        self._events.append(Assigned(new))
        self._pending_generation = generation

    def poll(self, max_records: int, timeout_s: float) -> Polled:
        cluster = self._cluster
        try:
            cluster.check(self, "poll")
        except KafkaCallError as exc:  # the only errors a poll reports are fatal ones
            raise FatalKafkaError(f"Kafka reported a fatal error: {exc}") from exc
        events = self._take_events()
        records: list[Incoming] = []
        for tp in sorted(self._positions):
            if tp not in self._paused and len(records) < max_records:
                found, self._positions[tp] = cluster.read(
                    tp, self._positions[tp], max_records - len(records), self._retry_topic
                )
                records.extend(found)
        if not records and not events:
            cluster.clock.advance(timeout_s)
        cluster.check(self, "poll", after=True)
        return Polled(events, records)

    def _take_events(self) -> tuple[Event, ...]:
        if self.expired:  # dropped by the group: it finds out now, then joins again
            self.expired = False
            lost = tuple(self._positions)
            self._positions = {}
            self._cluster.groups[self.group].members.append(self)
            self._cluster.rebalance(self.group)
            self._events.insert(0, Revoked(lost))
        events, self._events = tuple(self._events), []
        for event in events:
            self._positions = {}  # eager: revoked, or assigned nothing until `assign`
            if isinstance(event, Assigned):
                self._generation = self._pending_generation
        return events

    def assign(self, starts: Mapping[TP, int]) -> None:
        self._cluster.check(self, "assign")
        self._positions = {tp: 0 if offset == BEGINNING else offset for tp, offset in starts.items()}

    def pause(self, partitions: Collection[TP]) -> None:
        self._cluster.check(self, "pause")
        self._paused.update(partitions)

    def resume(self, partitions: Collection[TP]) -> None:
        self._cluster.check(self, "resume")
        self._paused.difference_update(partitions)

    def seek(self, offsets: Mapping[TP, int]) -> None:
        self._cluster.check(self, "seek")
        for tp, offset in offsets.items():
            if tp not in self._positions:
                raise KafkaCallError(f"could not seek {tp[0]}-{tp[1]}: not assigned", "_STATE")
            self._positions[tp] = 0 if offset == BEGINNING else offset

    def committed(self, partitions: Collection[TP]) -> _Ready[dict[TP, int | None]]:
        cluster = self._cluster
        cluster.check(self, "committed")
        if cluster.unstable(self.group, partitions):
            return _Ready(error=KafkaCallError("unstable offsets", "UNSTABLE_OFFSET_COMMIT", retriable=True))
        committed = cluster.groups.setdefault(self.group, _Group()).committed
        return _Ready({tp: committed.get(tp) for tp in partitions})

    def lag(self) -> int | None:
        return sum(len(self._cluster.logs[t][p]) - position for (t, p), position in self._positions.items())

    # The producer.

    def init_transactions(self) -> None:
        self._cluster.check(self, "init_transactions")
        assert self._transactional_id is not None
        self._epoch = self._cluster.init_transactions(self._transactional_id)

    def _fence(self) -> None:
        assert self._transactional_id is not None
        if self._cluster.current_epoch(self._transactional_id) != self._epoch:
            raise KafkaCallError("producer fenced by a newer instance", "PRODUCER_FENCED", fatal=True)

    def begin_transaction(self) -> None:
        self._cluster.check(self, "begin_transaction")
        self._fence()
        assert self._transactional_id is not None
        self._transaction = self._cluster.begin(self._transactional_id)

    def _live_transaction(self) -> _Transaction:
        self._fence()
        transaction = self._transaction
        if transaction is None or transaction.state != "open":
            raise KafkaCallError("the transaction was aborted by the broker", "INVALID_PRODUCER_EPOCH", abortable=True)
        return transaction

    def produce(self, records: Sequence[Outgoing]) -> None:
        self._cluster.check(self, "produce")
        transaction = self._live_transaction() if self._transactional_id is not None else None
        for index, record in enumerate(records):
            self._cluster.append(*record[:4], partition=record.partition, transaction=transaction)
            if index == 0:
                self._cluster.check(self, "produce", after=True)

    def send_offsets(self, offsets: Mapping[TP, int]) -> None:
        self._cluster.check(self, "send_offsets")
        transaction = self._live_transaction()
        group = self._cluster.groups.get(self.group)
        if group is None or self not in group.members or self._generation != group.generation:
            raise KafkaCallError("the group has moved on", "ILLEGAL_GENERATION", abortable=True)
        transaction.offsets.setdefault(self.group, {}).update(offsets)
        self._cluster.check(self, "send_offsets", after=True)

    def commit_transaction(self) -> None:
        self._cluster.check(self, "commit_transaction")
        transaction = self._live_transaction()
        self._cluster.commit(transaction.transactional_id)
        self._cluster.check(self, "commit_transaction", after=True)

    def abort_transaction(self) -> None:
        self._cluster.check(self, "abort_transaction")
        if self._transaction is not None:
            self._fence()
            self._cluster.abort(self._transaction.transactional_id)
            self._transaction = None

    def flush(self) -> None:
        self._cluster.check(self, "flush")

    def commit_offsets(self, offsets: Mapping[TP, int]) -> None:
        self._cluster.check(self, "commit_offsets")
        group = self._cluster.groups[self.group]
        if self not in group.members or self._generation != group.generation:
            raise KafkaCallError("the group has moved on", "ILLEGAL_GENERATION")
        group.committed.update(offsets)

    def close(self) -> None:
        """Leaves the group, as a consumer closing cleanly does."""
        self._cluster.check(self, "close")
        group = self._cluster.groups.get(self.group)
        if group is not None and self in group.members:
            group.members.remove(self)
            group.assignment.pop(id(self), None)
            if group.members:
                self._cluster.rebalance(self.group)


class _TwinStatsTail:
    """The edge's reader of the stats topic (a `StatsTail`)."""

    def __init__(self, cluster: TwinCluster, edge: TwinEdge, tp: TP) -> None:
        self._cluster, self._edge, self._tp = cluster, edge, tp
        self._position = 0

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Incoming]:
        self._cluster.check(self._edge, "poll_stats")
        found, self._position = self._cluster.read(self._tp, self._position, max_records, "")
        return found

    def end_offset(self) -> _Ready[int]:
        self._cluster.check(self._edge, "end_offset")
        topic, partition = self._tp
        return _Ready(len(self._cluster.logs[topic][partition]))

    def position(self) -> int:
        return self._position
