"""The consumer's Kafka edge: the few operations it needs, as a protocol, and the data that crosses it.

Everything the consumer does with Kafka goes through one `KafkaEdge`: first its
start-up questions and topic creation (an admin client's), then, once `finish_setup`
was called, its group consumer (poll, assignment events, pause, resume, seek,
committed offsets, watermarks, in-sync replicas), its producer (transactions with
offsets, or produce-then-commit) and its reader of the stats topic. Two
implementations keep each other honest, the way httpx puts its real transport beside
`MockTransport`:

* `orderpipe.kafka.edge`: confluent-kafka, for real brokers (and librdkafka's
  in-process mock cluster in unit tests);
* `orderpipe.kafka.twin`: an in-memory twin with partitions, transactions that really
  abort, read_committed visibility, rebalances on demand, injected errors and kills,
  so that unit tests drive the whole consumer loop in milliseconds.

Nothing here imports Kafka. Failed calls raise `KafkaCallError` (orderpipe/errors.py), which
says whether the call may be repeated, whether the transaction must be aborted and
whether the client is finished.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeVar

from orderpipe.config.settings import Settings
from orderpipe.model.records import Headers, Incoming, Run

__all__ = [
    "BEGINNING",
    "TP",
    "Assigned",
    "EdgeOpener",
    "EdgeOptions",
    "Event",
    "InSync",
    "KafkaEdge",
    "Marks",
    "Outgoing",
    "Pending",
    "Polled",
    "Revoked",
    "StatsTail",
    "TopicSpec",
]

# A partition: (topic, partition number).
TP = tuple[str, int]
# An offset that means "the partition's first record" (Kafka's OFFSET_BEGINNING).
BEGINNING = -2

T_co = TypeVar("T_co", covariant=True)


class Assigned(NamedTuple):
    """The group gave this consumer these partitions (all of them: the protocol is eager).

    The edge assigns nothing yet: the consumer restores their state first, then calls
    `KafkaEdge.assign` with the offset each partition starts at.
    """

    partitions: tuple[TP, ...]


class Revoked(NamedTuple):
    """The group took these partitions away (or this consumer lost them)."""

    partitions: tuple[TP, ...]


Event = Assigned | Revoked


class Polled(NamedTuple):
    """What one poll brought: assignment changes, then records.

    The events happened during the poll; runs of partitions revoked by them may
    still be among `runs` and must be dropped.
    """

    events: tuple[Event, ...]
    runs: list[Run]


class Outgoing(NamedTuple):
    """A record to produce; without a partition, the key chooses one."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    partition: int | None = None


class TopicSpec(NamedTuple):
    """A topic to create."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = {}


class InSync(NamedTuple):
    """The cluster's answer about replicas.

    Attributes:
        counts: each partition's number of in-sync replicas.
        replicas: each partition's number of replicas.
        minimums: each topic's min.insync.replicas, where its configuration could be
            read (DescribeConfigs may be denied).
    """

    counts: dict[TP, int]
    replicas: dict[TP, int]
    minimums: dict[str, int]


class Marks(NamedTuple):
    """Where a partition stands.

    Attributes:
        first: its first offset (the log start).
        end: the offset its next record will take (the high watermark).
        read: the consumer's position in it: past the records handed over, and past
            transaction markers that follow them (not moved by a seek while paused).
    """

    first: int
    end: int
    read: int


class Pending(Protocol[T_co]):
    """An answer that is on its way: the loop checks `done` while it keeps polling."""

    def done(self) -> bool: ...

    def result(self) -> T_co:
        """The answer once done; raises KafkaCallError if the request failed."""
        ...


class StatsTail(Protocol):
    """A reader of the stats topic's one partition, from the beginning, read_committed."""

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Incoming]: ...

    def end_offset(self) -> Pending[int]:
        """The partition's end including open transactions (its high watermark)."""
        ...

    def position(self) -> int:
        """The offset of the next record to read (past markers and aborted records)."""
        ...


class KafkaEdge(Protocol):
    """One consumer process's connection to Kafka."""

    @property
    def stats(self) -> StatsTail:
        """The stats topic's reader, once the set-up is finished."""
        ...

    # The set-up: start-up checks and topic creation, before `finish_setup`.
    def partition_counts(self) -> dict[str, int]: ...

    def create_topics(self, specs: Sequence[TopicSpec]) -> None: ...

    def replication_factors(self) -> dict[str, int]:
        """Each topic's replication factor (the fewest replicas of any of its partitions)."""
        ...

    def topic_configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each existing topic's configuration (every setting, defaults included)."""
        ...

    def permissions(self, topics: Sequence[str], group: str) -> dict[tuple[str, str], frozenset[str] | None]:
        """The operations this principal may perform on the topics and the group (see orderpipe.core.acls)."""
        ...

    def finish_setup(self) -> None:
        """The start-up questions are answered: closes the admin client and opens the running path's clients.

        The set-up calls above are not to be made any more.
        """
        ...

    # The running path: the group consumer ...
    def in_sync_replicas(self, topics: Sequence[str]) -> Pending[InSync]:
        """Each partition's in-sync and all replicas, from metadata (orderpipe.core.replicas); no minimums."""
        ...

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def poll(self, max_records: int, timeout_s: float) -> Polled: ...

    def assign(self, starts: Mapping[TP, int]) -> None: ...

    def pause(self, partitions: Collection[TP]) -> None: ...

    def resume(self, partitions: Collection[TP]) -> None: ...

    def seek(self, offsets: Mapping[TP, int]) -> None: ...

    def committed(self, partitions: Collection[TP]) -> Pending[dict[TP, int | None]]:
        """The group's stable committed offsets (None: nothing committed)."""
        ...

    def watermarks(self) -> dict[TP, Marks] | None:
        """Each assigned partition's offsets as last fetched, where known; None when the client cannot say."""
        ...

    def unread(self, partitions: Collection[TP]) -> dict[TP, int] | None:
        """Each partition's records past the consumer's position, asked of its leader now (read_committed: up to
        the last stable offset); None when it cannot say (a leader away, say). Blocks briefly: asked rarely.
        """
        ...

    # ... the producer: transactions (exactly-once) ...
    def init_transactions(self) -> None: ...

    def renew_producer(self) -> None:
        """Replaces the producer, failed for good (fenced, say), with a new one with the same transactional id.

        `init_transactions` is to be called next; the old producer's open transaction is aborted by it.
        """
        ...

    def begin_transaction(self) -> None: ...

    def produce(self, records: Sequence[Outgoing]) -> None: ...

    def send_offsets(self, offsets: Mapping[TP, int]) -> None: ...

    def commit_transaction(self) -> None: ...

    def abort_transaction(self) -> None:
        """Aborts the open transaction; with none open, does nothing."""
        ...

    # ... or produce, flush, then commit offsets (at-least-once).
    def flush(self) -> None:
        """Waits for every produced record's acknowledgement; raises DeliveryError for any that failed."""
        ...

    def commit_offsets(self, offsets: Mapping[TP, int]) -> None: ...


class EdgeOptions(NamedTuple):
    """How a consumer's clients are set up.

    Attributes:
        transactional_id: the producer's transactional id; None for no transactions
            (at-least-once).
        session_timeout_ms: how soon the group notices a consumer that died without
            leaving, and gives its partitions to the others.
        transaction_timeout_ms: how long the broker keeps a dead consumer's open
            transaction before aborting it (a restart on the same machine aborts it
            at once; see `orderpipe.consumer.instance`).
        stats_cb: given (metrics on), the group consumer hands librdkafka's
            statistics JSON to it every health.STATS_INTERVAL_MS, from poll.
    """

    transactional_id: str | None = None
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    transaction_timeout_ms: int = 10_000
    stats_cb: Callable[[str], None] | None = None


# Opens an edge for the settings; closing the context closes its clients.
EdgeOpener = Callable[[Settings, EdgeOptions], AbstractContextManager[KafkaEdge]]
