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
partitions, and `faults` makes calls fail (`fail`: the kinds of failure Kafka
reports, retriable, abortable, fatal, fenced), run an action first (`when`), or kill
a consumer at a call (`kill_at`), as SIGKILL would: it raises `Killed`, and the
process's open transaction and group membership are left behind for the next one.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

from orderpipe.config.settings import Settings
from orderpipe.core.ports import (
    BEGINNING,
    TP,
    Assigned,
    EdgeOptions,
    Event,
    InSync,
    Marks,
    Outgoing,
    Polled,
    Revoked,
    TopicSpec,
)
from orderpipe.core.topics import PRODUCER_MESSAGE_MAX_BYTES
from orderpipe.errors import DeliveryError, FatalKafkaError, KafkaCallError
from orderpipe.kafka.twin.parts import (
    ERROR_KINDS,
    Entry,
    Faults,
    Group,
    Killed,
    Later,
    Transaction,
    TransactionCoordinator,
    VirtualClock,
)
from orderpipe.model.records import UNREADABLE_HEADERS, Headers, Incoming, record_bytes

__all__ = ["ERROR_KINDS", "Killed", "TwinCluster", "TwinEdge", "VirtualClock"]


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
        self.groups: dict[str, Group[TwinEdge]] = {}
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

    def rejoined(self, edge: TwinEdge) -> None:
        """A member gave its partitions up and joined again; the last one completes the rebalance."""
        state = self.groups[edge.group]
        if edge in state.rejoining:
            state.rejoining.remove(edge)
            self._complete(state)

    def _complete(self, state: Group[TwinEdge]) -> None:
        """Once every member rejoined: a new generation, the partitions shared round-robin.

        A killed member never rejoins: the rebalance waits until its session times out
        (`evict_the_dead`), as Kafka's does.
        """
        members = state.members
        if state.rejoining or not members:
            return
        state.generation += 1
        partitions = sorted({(t, p) for m in members for t in m.topics for p in range(len(self.logs.get(t, [])))})
        for index, member in enumerate(members):
            state.assignment[id(member)] = tuple(partitions[index :: len(members)])
            member.assigned(state.assignment[id(member)], state.generation)

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

    def expire(self, edge: TwinEdge) -> None:
        """The group drops a member that stopped polling (max.poll.interval.ms): a zombie until it polls."""
        self.leave(edge)
        edge.expired = True

    def leave(self, edge: TwinEdge) -> None:
        group = self.groups.get(edge.group)
        if group is not None and edge in group.members:
            group.members.remove(edge)
            group.assignment.pop(id(edge), None)
            if edge in group.rejoining:
                group.rejoining.remove(edge)
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
                self.faults.check(edge, "close")
                self.leave(edge)


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


class _TwinProducer:
    """The producer half of a `TwinEdge`: transactions with offsets, or produce then commit."""

    _cluster: TwinCluster
    _transactional_id: str | None
    _epoch: int
    _transaction: Transaction | None
    group: str
    _generation: int
    _batch_generation: int
    dead: bool

    def _check(self, operation: str, *, after: bool = False) -> None:
        self._cluster.faults.check(self, operation, after=after)

    def init_transactions(self) -> None:
        self._check("init_transactions")
        assert self._transactional_id is not None
        self._epoch = self._cluster.transactions.init(self._transactional_id)

    def renew_producer(self) -> None:
        self._check("renew_producer")
        self._epoch, self._transaction = 0, None  # a new producer, with no epoch until init_transactions

    def _live_transaction(self) -> Transaction:
        """The open transaction; fenced if a newer instance took the id, abortable if the broker ended it."""
        assert self._transactional_id is not None
        if self._cluster.transactions.epoch(self._transactional_id) != self._epoch:
            raise KafkaCallError("producer fenced by a newer instance", "PRODUCER_FENCED", fatal=True)
        transaction = self._transaction
        if transaction is None or transaction.state != "open":
            raise KafkaCallError("the transaction was aborted by the broker", "INVALID_PRODUCER_EPOCH", abortable=True)
        return transaction

    def begin_transaction(self) -> None:
        self._check("begin_transaction")
        assert self._transactional_id is not None
        if self._cluster.transactions.epoch(self._transactional_id) != self._epoch:
            raise KafkaCallError("producer fenced by a newer instance", "PRODUCER_FENCED", fatal=True)
        self._transaction = self._cluster.transactions.begin(self._transactional_id)
        self._batch_generation = self._generation

    def produce(self, records: Sequence[Outgoing]) -> None:
        self._check("produce")
        transaction = self._live_transaction() if self._transactional_id is not None else None
        for index, record in enumerate(records):
            limit = min(PRODUCER_MESSAGE_MAX_BYTES, int(self._cluster.configs[record.topic]["max.message.bytes"]))
            if record_bytes(record.key, record.value, record.headers) > limit:
                # As librdkafka refuses it (or the broker, when the topic's limit is lower).
                raise DeliveryError(f"could not produce to {record.topic}: Broker: Message size too large")
            self._cluster.append(*record[:4], partition=record.partition, transaction=transaction)
            if index == 0:
                self._check("produce", after=True)

    def _member_of(self, generation: int) -> bool:
        """Whether the group takes offsets from this member sent with `generation`."""
        group = self._cluster.groups.get(self.group)
        return group is not None and self in group.members and generation == group.generation

    def send_offsets(self, offsets: Mapping[TP, int]) -> None:
        self._check("send_offsets")
        transaction = self._live_transaction()
        # Sent with the generation the batch was read in, as the confluent edge does.
        if not self._member_of(self._batch_generation):
            raise KafkaCallError("the group has moved on", "ILLEGAL_GENERATION", abortable=True)
        transaction.offsets.setdefault(self.group, {}).update(offsets)
        self._check("send_offsets", after=True)

    def commit_transaction(self) -> None:
        self._check("commit_transaction")
        self._cluster.transactions.commit(self._live_transaction().transactional_id)
        self._check("commit_transaction", after=True)

    def abort_transaction(self) -> None:
        self._check("abort_transaction")
        if self._transaction is not None and self._transaction.state == "open":
            self._live_transaction()  # a fenced producer cannot abort either
            self._cluster.transactions.abort(self._transaction.transactional_id)
        self._transaction = None

    def flush(self) -> None:
        self._check("flush")

    def commit_offsets(self, offsets: Mapping[TP, int]) -> None:
        self._check("commit_offsets")
        if not self._member_of(self._generation):
            raise KafkaCallError("the group has moved on", "ILLEGAL_GENERATION")
        self._cluster.groups[self.group].committed.update(offsets)


class TwinEdge(_TwinProducer):
    """One consumer process's `KafkaEdge` on a `TwinCluster`."""

    def __init__(self, cluster: TwinCluster, settings: Settings, options: EdgeOptions) -> None:
        self._cluster = cluster
        self.group = settings.consumer_group
        self._retry_topic = settings.retry_topic
        self._transactional_id = options.transactional_id
        self._epoch = 0
        self._transaction = None
        self.topics: tuple[str, ...] = ()
        self.assignment: tuple[TP, ...] = ()  # the partitions the group gave this member
        self.last_poll = cluster.clock.now
        self.dead = False
        self.expired = False
        self.set_up = False  # finish_setup was called
        # What the next poll reports; None: a rebalance began that revokes nothing here.
        self._events: list[Event | None] = []
        self._generation = 0  # the group generation this member is in
        self._batch_generation = 0  # the generation when the transaction began
        self._next_generation = 0
        self._positions: dict[TP, int] = {}  # the assignment, with the next offset of each partition
        self._paused: set[TP] = set()  # kept across assignments, as librdkafka does
        self.stats = _TwinStatsTail(cluster, self, (settings.stats_topic, 0))

    def partition_counts(self) -> dict[str, int]:
        self._setting_up("partition_counts")
        return {name: len(partitions) for name, partitions in self._cluster.logs.items()}

    def create_topics(self, specs: Sequence[TopicSpec]) -> None:
        self._setting_up("create_topics")
        for spec in specs:
            self._cluster.create_topic(spec.name, spec.partitions, spec.config)
            self._cluster.replication[spec.name] = spec.replication_factor

    def replication_factors(self) -> dict[str, int]:
        self._setting_up("replication_factors")
        return {name: self._cluster.replication.get(name, 1) for name in self._cluster.logs}

    def _setting_up(self, operation: str) -> None:
        """A set-up call: only before `finish_setup`, as the confluent edge has its admin client only then."""
        assert not self.set_up, f"{operation} after finish_setup: the admin client is for the start-up checks only"
        self._check(operation)

    def finish_setup(self) -> None:
        self._check("finish_setup")
        self.set_up = True

    def in_sync_replicas(self, topics: Sequence[str]) -> Later[InSync]:
        self._check("in_sync_replicas")
        cluster = self._cluster

        def answer() -> InSync:
            replicas = {
                (topic, p): cluster.replication.get(topic, 1)
                for topic in topics
                for p in range(len(cluster.logs.get(topic, [])))
            }
            counts = {tp: cluster.in_sync.get(tp, count) for tp, count in replicas.items()}
            return InSync(counts, replicas, {})  # metadata carries no minimums

        return Later(answer)

    def topic_configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        self._setting_up("topic_configs")
        return {name: dict(self._cluster.configs[name]) for name in names if name in self._cluster.configs}

    def permissions(self, topics: Sequence[str], group: str) -> dict[tuple[str, str], frozenset[str] | None]:
        self._setting_up("permissions")
        every = frozenset({"READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"})
        keys = [("TOPIC", name) for name in topics] + [("GROUP", group)]
        return {
            (kind, name): frozenset(op for op in every if (op, kind, name) not in self._cluster.denied)
            for kind, name in keys
        }

    def subscribe(self, topics: Sequence[str]) -> None:
        self._check("subscribe")
        self.topics = tuple(topics)
        self._cluster.groups.setdefault(self.group, Group()).members.append(self)
        self._cluster.rebalance(self.group)

    def revoke(self, partitions: tuple[TP, ...]) -> None:
        """Called by the cluster: a rebalance began; this member finds out at its next poll."""
        self._events.append(Revoked(partitions) if partitions else None)

    def assigned(self, partitions: tuple[TP, ...], generation: int) -> None:
        """Called by the cluster: the rebalance completed; this member's share, seen at its next poll."""
        self._events.append(Assigned(partitions))
        self._next_generation = generation

    def poll(self, max_records: int, timeout_s: float) -> Polled:
        cluster = self._cluster
        try:
            self._check("poll")
        except KafkaCallError as exc:  # the only errors a poll reports are fatal ones
            raise FatalKafkaError(f"Kafka reported a fatal error: {exc}") from exc
        # Records fetched before a rebalance come with it, as they can from librdkafka.
        records: list[Incoming] = []
        for tp in sorted(self._positions):
            if tp not in self._paused and len(records) < max_records:
                limit = max_records - len(records)
                found, self._positions[tp] = cluster.read(tp, self._positions[tp], limit, self._retry_topic)
                records.extend(found)
        self.last_poll = cluster.clock.now
        if self.topics:
            cluster.evict_the_dead(self.group)
        events = self._take_events()
        if not records and not events:
            cluster.clock.advance(timeout_s)
        self._check("poll", after=True)
        return Polled(events, records)

    def _take_events(self) -> tuple[Event, ...]:
        if self.expired:  # dropped by the group: it finds out now, then joins again
            self.expired = False
            self._events = [Revoked(self.assignment)]  # all of it, as librdkafka's on_lost does
            self._cluster.groups[self.group].members.append(self)
            self._cluster.rebalance(self.group)
        taken: list[Event] = []
        while self._events:
            event = self._events.pop(0)
            self._positions = {}  # eager: revoked, or assigned nothing until `assign`
            if event is None or isinstance(event, Revoked):
                self.assignment = ()
                if event is not None:
                    taken.append(event)
                self._cluster.rejoined(self)  # may complete the rebalance and queue Assigned
            else:
                self._generation = self._next_generation
                self.assignment = event.partitions
                taken.append(event)
        return tuple(taken)

    def assign(self, starts: Mapping[TP, int]) -> None:
        self._check("assign")
        self._positions = {tp: 0 if offset == BEGINNING else offset for tp, offset in starts.items()}

    def pause(self, partitions: Collection[TP]) -> None:
        self._check("pause")
        self._paused.update(partitions)

    def resume(self, partitions: Collection[TP]) -> None:
        self._check("resume")
        self._paused.difference_update(partitions)

    def seek(self, offsets: Mapping[TP, int]) -> None:
        self._check("seek")
        for tp, offset in offsets.items():
            if tp not in self._positions:
                raise KafkaCallError(f"could not seek {tp[0]}-{tp[1]}: not assigned", "_STATE")
            self._positions[tp] = 0 if offset == BEGINNING else offset

    def committed(self, partitions: Collection[TP]) -> Later[dict[TP, int | None]]:
        self._check("committed")
        cluster, group = self._cluster, self.group

        def answer() -> dict[TP, int | None]:
            if cluster.transactions.unstable(group, partitions):
                raise KafkaCallError("unstable offsets", "UNSTABLE_OFFSET_COMMIT", retriable=True)
            committed = cluster.groups.setdefault(group, Group()).committed
            return {tp: committed.get(tp) for tp in partitions}

        return Later(answer)

    def unread(self, partitions: Collection[TP]) -> dict[TP, int] | None:
        try:
            self._check("unread")
        except KafkaCallError:  # a leader away: the confluent edge cannot say either
            return None
        cluster = self._cluster
        return {tp: max(cluster.stable_end(tp) - self._positions.get(tp, 0), 0) for tp in partitions}

    def watermarks(self) -> dict[TP, Marks] | None:
        return {(t, p): Marks(0, len(self._cluster.logs[t][p]), read) for (t, p), read in self._positions.items()}


class _TwinStatsTail:
    """The edge's reader of the stats topic (a `StatsTail`)."""

    def __init__(self, cluster: TwinCluster, edge: TwinEdge, tp: TP) -> None:
        self._cluster, self._edge, self._tp = cluster, edge, tp
        self._position = 0

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Incoming]:
        self._cluster.faults.check(self._edge, "poll_stats")
        found, self._position = self._cluster.read(self._tp, self._position, max_records, "")
        return found

    def end_offset(self) -> Later[int]:
        self._cluster.faults.check(self._edge, "end_offset")
        topic, partition = self._tp
        return Later(lambda: len(self._cluster.logs[topic][partition]))

    def position(self) -> int:
        return self._position
