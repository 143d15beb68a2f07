"""One consumer process's `KafkaEdge` on a `TwinCluster` (orderpipe/kafka/twin/cluster.py): `TwinEdge`.

It makes the calls the confluent edge makes, as the cluster answers them: the set-up
questions, the group consumer (poll, assignment events, pause, resume, seek), the
producer (transactions with offsets, or produce then commit) and the stats topic's
reader. Each call first asks the cluster's `faults` whether it fails or kills.
"""

from __future__ import annotations

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
from orderpipe.kafka.twin.cluster import TwinCluster
from orderpipe.kafka.twin.parts import Group, Later, Transaction
from orderpipe.model.records import Incoming, record_bytes, runs_of

__all__ = ["TwinEdge", "open_twin_edge"]


@contextmanager
def open_twin_edge(cluster: TwinCluster, settings: Settings, options: EdgeOptions) -> Iterator[TwinEdge]:
    """A new edge of `cluster`, closed (leaving its group) at the end; with the cluster bound, an `EdgeOpener`.

    A killed edge is not closed: it stays in its group until the next rebalance, and
    its open transaction stays open, as after SIGKILL.
    """
    edge = TwinEdge(cluster, settings, options)
    try:
        yield edge
    finally:
        if not edge.dead:
            cluster.faults.check(edge, "close")
            cluster.leave(edge)


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
        me: object = self  # a group's member is the whole `TwinEdge`, of which this is the producer half
        return group is not None and me in group.members and generation == group.generation

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
            cluster.complete_held(self.group)
        events = self._take_events()
        if not records and not events:
            cluster.clock.advance(timeout_s)
        self._check("poll", after=True)
        return Polled(events, runs_of(records))

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
