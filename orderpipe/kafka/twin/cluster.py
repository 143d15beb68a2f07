"""An in-memory twin of the Kafka edge, so that unit tests drive the whole consumer without a broker.

`TwinCluster` keeps what a broker keeps, in memory: partitions with offsets,
transactions that really commit or abort (each leaves a marker that takes an
offset), read_committed visibility up to the last stable offset, consumer groups with
generations and eager rebalances, committed offsets (held back while a transaction
with offsets of the partition is open), transactional ids with epochs that fence
older producers, and transactions that time out. `TwinEdge` (orderpipe/kafka/twin/edge.py)
is one consumer process's `KafkaEdge` on it. Time is virtual (`VirtualClock`): a poll that finds
nothing moves it on by its timeout, so backoffs and idle limits take no real time.

Tests steer it: `produce` writes input records, `rebalance` and `expire` move
partitions, `joins_held_until` keeps a rebalance from completing (a group coordinator
loading after a failover), and `faults` makes calls fail (`fail`: the kinds of failure Kafka
reports, retriable, abortable, fatal, fenced), run an action first (`when`), or kill
a consumer at a call (`kill_at`), as SIGKILL would: it raises `Killed`, and the
process's open transaction and group membership are left behind for the next one.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from orderpipe.core.ports import TP
from orderpipe.kafka.twin.parts import (
    ERROR_KINDS,
    Entry,
    Faults,
    Group,
    Killed,
    Member,
    Transaction,
    TransactionCoordinator,
    VirtualClock,
)
from orderpipe.model.records import UNREADABLE_HEADERS, Headers, Incoming

__all__ = ["ERROR_KINDS", "Killed", "TwinCluster", "VirtualClock"]


# A topic's configuration where its creator gave none, as a broker's defaults.
DEFAULT_TOPIC_CONFIG = {"cleanup.policy": "delete", "max.message.bytes": "1048588"}


class TwinCluster:
    """The broker's side: topics, groups and transactions, for any number of `TwinEdge`s."""

    def __init__(
        self, clock: VirtualClock | None = None, *, transaction_timeout_s: float = 10.0, session_timeout_s: float = 10.0
    ) -> None:
        self.clock = clock or VirtualClock()
        self.session_timeout_s = session_timeout_s
        self.logs: dict[str, list[list[Entry]]] = {}
        self.configs: dict[str, dict[str, str]] = {}
        self.replication: dict[str, int] = {}  # topics not listed have one replica
        # Partitions with fewer replicas in sync than the topic has (a broker away); the others are all in sync.
        self.in_sync: dict[TP, int] = {}
        self.groups: dict[str, Group[Member]] = {}
        # A rebalance completes no sooner than this (virtual seconds, `clock.now`), at a
        # member's poll: the group coordinator is loading after a failover and answers joins
        # with COORDINATOR_LOAD_IN_PROGRESS until then.
        self.joins_held_until = 0.0
        self.transactions = TransactionCoordinator(self.clock, self.logs, self.groups, transaction_timeout_s)
        self.faults = Faults()
        # The principal's permissions: every operation on every resource, except these
        # (operation, resource type, name) triples, e.g. ("READ", "TOPIC", "orders").
        self.denied: set[tuple[str, str, str]] = set()

    def create_topic(self, name: str, partitions: int, config: Mapping[str, str] | None = None) -> None:
        """Creates a topic (configured as given, else with the broker's defaults) unless it exists."""
        if name not in self.logs:
            self.logs[name] = [[] for _ in range(partitions)]
            self.configs[name] = {**DEFAULT_TOPIC_CONFIG, **(config or {})}

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers = (),
        *,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Appends a record outside any transaction (as a plain producer would); returns its offset.

        Any client may write any timestamp, and header names of any bytes: a name with
        surrogate escapes (`"\\udcff"`) stands for one that is not UTF-8.
        """
        return self.append(topic, key, value, headers, partition=partition, timestamp=timestamp)

    def records(self, topic: str) -> list[Incoming]:
        """Every committed record of a topic, partition by partition (what a read_committed reader sees)."""
        return [
            _incoming(topic, p, offset, entry, False)
            for p, log in enumerate(self.logs.get(topic, []))
            for offset, entry in enumerate(log)
            if entry.readable
        ]

    def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        partition: int | None = None,
        transaction: Transaction | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Appends a record (in a transaction, if given); without a partition, the key chooses one."""
        partitions = self.logs[topic]
        if partition is None:
            partition = zlib.crc32(key or b"") % len(partitions)
        log = partitions[partition]
        when = int(self.clock.now * 1000) if timestamp is None else timestamp
        log.append(Entry(key, value, tuple(headers), when, transaction))
        if transaction is not None:
            transaction.partitions.add((topic, partition))
        return len(log) - 1

    def read(self, tp: TP, position: int, limit: int, retry_topic: str) -> tuple[list[Incoming], int]:
        """Up to `limit` readable records from `position`, up to the last stable offset; and the new position."""
        topic, partition = tp
        log, end = self.logs[topic][partition], self.stable_end(tp)
        records: list[Incoming] = []
        while position < end and len(records) < limit:
            entry = log[position]
            if entry.readable:
                records.append(_incoming(topic, partition, position, entry, topic == retry_topic))
            position += 1
        return records, position

    def stable_end(self, tp: TP) -> int:
        """The first record of a transaction still open, else the end."""
        self.transactions.time_out()
        log = self.logs[tp[0]][tp[1]]
        for offset, entry in enumerate(log):
            if entry.transaction is not None and entry.transaction.state == "open":
                return offset
        return len(log)

    def rebalance(self, group: str) -> None:
        """Starts a rebalance: every member gives its partitions up at its next poll, then rejoins."""
        state = self.groups.setdefault(group, Group())
        for member in state.members:
            if member not in state.rejoining:
                state.rejoining.append(member)
                member.revoke(state.assignment.pop(id(member), ()))
        self._complete(state)

    def rejoined(self, edge: Member) -> None:
        """A member gave its partitions up and joined again; the last one completes the rebalance."""
        state = self.groups[edge.group]
        if edge in state.rejoining:
            state.rejoining.remove(edge)
            self._complete(state)

    def _complete(self, state: Group[Member]) -> None:
        """Once every member rejoined: a new generation, the partitions shared round-robin.

        A killed member never rejoins: the rebalance waits until its session times out
        (`evict_the_dead`), as Kafka's does.
        """
        members = state.members
        if state.rejoining or not members:
            return
        state.held = self.clock.now < self.joins_held_until
        if state.held:
            return
        state.generation += 1
        partitions = sorted({(t, p) for m in members for t in m.topics for p in range(len(self.logs.get(t, [])))})
        for index, member in enumerate(members):
            state.assignment[id(member)] = tuple(partitions[index :: len(members)])
            member.assigned(state.assignment[id(member)], state.generation)

    def complete_held(self, group: str) -> None:
        """Completes a rebalance `joins_held_until` held, once the clock passed it."""
        state = self.groups[group]
        if state.held:
            self._complete(state)

    def evict_the_dead(self, group: str) -> None:
        """Drops killed members that have not polled for a session timeout, as the coordinator does."""
        state = self.groups[group]
        gone = [m for m in state.members if m.dead and self.clock.now - m.last_poll > self.session_timeout_s]
        for member in gone:
            state.members.remove(member)
            state.assignment.pop(id(member), None)
            if member in state.rejoining:
                state.rejoining.remove(member)
        if gone:
            self.rebalance(group)

    def expire(self, edge: Member) -> None:
        """The group drops a member that stopped polling (max.poll.interval.ms): a zombie until it polls."""
        self.leave(edge)
        edge.expired = True

    def leave(self, edge: Member) -> None:
        group = self.groups.get(edge.group)
        if group is not None and edge in group.members:
            group.members.remove(edge)
            group.assignment.pop(id(edge), None)
            if edge in group.rejoining:
                group.rejoining.remove(edge)
            self.rebalance(edge.group)


def _incoming(topic: str, partition: int, offset: int, entry: Entry, from_retry_topic: bool) -> Incoming:
    """A record as the confluent edge hands it over: without headers when a name is not UTF-8."""
    headers, unreadable = entry.headers, ""
    try:
        for name, _ in headers:
            name.encode("utf-8")
    except UnicodeEncodeError:
        headers, unreadable = (), UNREADABLE_HEADERS
    return Incoming(
        topic, partition, offset, entry.timestamp, entry.key, entry.value, headers, from_retry_topic, unreadable
    )
