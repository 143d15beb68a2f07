"""The confluent-kafka edge itself, against librdkafka's in-process mock cluster (no broker)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from orderpipe.config.settings import Settings, build_settings
from orderpipe.core.ports import BEGINNING, Assigned, EdgeOptions, InSync, Marks, Outgoing, Pending, TopicSpec
from orderpipe.core.stats import encode_stats, stats_key
from orderpipe.errors import BrokerUnavailableError, ConfigError, DeliveryError, FatalKafkaError, KafkaCallError
from orderpipe.kafka import admin as kafka_admin
from orderpipe.kafka import clients as kafka_clients
from orderpipe.kafka import edge_producer, stats_tail
from orderpipe.kafka.admin import create_topics, ensure_topics, in_sync_replicas, partition_counts, topic_configs
from orderpipe.kafka.clients import call_error, connect_admin, create_client
from orderpipe.kafka.edge import ConfluentEdge, open_kafka_edge
from orderpipe.kafka.messages import incoming
from orderpipe.kafka.stats_tail import read_group_stats
from orderpipe.model.money import RunningAverage
from orderpipe.model.records import UNREADABLE_HEADERS, Incoming
from tests.unit.mock_cluster import MockCluster

T = TypeVar("T")


def eventually(condition: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Polls `condition` until it is truthy (the mock cluster answers within milliseconds to seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
    raise AssertionError(f"not reached within {timeout}s")


def answer(pending: Pending[T]) -> T:
    eventually(pending.done)
    return pending.result()


def gather(poll: Callable[[], list[T]], count: int) -> list[T]:
    """What `poll` brings, until there are at least `count`."""
    found: list[T] = []

    def enough() -> bool:
        found.extend(poll())
        return len(found) >= count

    eventually(enough)
    return found


def read(edge: ConfluentEdge, count: int) -> list[Incoming]:
    return gather(lambda: [record for run in edge.poll(100, 0.1).runs for record in run.records()], count)


@contextmanager
def edge_of(settings: Settings, transactional_id: str | None = None) -> Iterator[ConfluentEdge]:
    """An edge past its set-up: its running path's clients open, its admin client gone."""
    with open_kafka_edge(settings, EdgeOptions(transactional_id)) as edge:
        edge.finish_setup()
        yield edge


def test_the_admin_client_serves_the_set_up_only(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    with open_kafka_edge(settings, EdgeOptions()) as edge:
        assert edge.partition_counts()[settings.orders_topic] == 4
        edge.finish_setup()
        for question in (edge.partition_counts, edge.replication_factors, lambda: edge.topic_configs(["x"])):
            with pytest.raises(AssertionError, match="start-up checks only"):
                question()
        # The running path's questions are answered by the group consumer.
        assert answer(edge.committed([(settings.orders_topic, 0)])) == {(settings.orders_topic, 0): None}
        assert edge.in_sync_replicas([settings.orders_topic]).result().counts[(settings.orders_topic, 0)] >= 1


def test_the_orders_producer_has_one_request_in_flight_and_the_transactional_one_the_default(
    mock_cluster: MockCluster,
) -> None:
    # More than one lets librdkafka 2.16 bump an idempotent producer's epoch and write records twice
    # (see producer_config); a transaction aborts what that would duplicate.
    settings = mock_cluster.settings()
    assert kafka_clients.producer_config(settings)["max.in.flight.requests.per.connection"] == 1
    with open_kafka_edge(settings, EdgeOptions("t-1")) as edge:
        assert edge._producer_conf()["max.in.flight.requests.per.connection"] == 5
        assert edge._producer_conf()["transactional.id"] == "t-1"


def test_records_go_out_and_come_back_with_keys_headers_and_their_topic(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    with edge_of(settings) as edge:
        edge.produce(
            [
                Outgoing(settings.retry_topic, b"O-1", b"one", (("retry.attempt", b"1"),)),
                Outgoing(settings.retry_topic, b"O-1", b"two"),
            ]
        )
        edge.flush()
        edge.assign({(settings.retry_topic, p): BEGINNING for p in range(4)})
        first, second = sorted(read(edge, 2), key=lambda r: r.offset)
    assert (first.key, first.value, first.headers, first.from_retry_topic) == (
        b"O-1",
        b"one",
        (("retry.attempt", b"1"),),
        True,
    )
    assert (second.value, second.headers, second.partition) == (b"two", (), first.partition)


def test_a_paused_partition_delivers_nothing_until_resumed_and_seek_reads_again(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    tp = (settings.orders_topic, 0)
    with edge_of(settings) as edge:
        mock_cluster.produce(settings.orders_topic, 0, [f"v{n}".encode() for n in range(5)])
        edge.assign({tp: BEGINNING})
        assert [r.value for r in read(edge, 5)] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
        assert edge.watermarks() == {tp: Marks(0, 5, 5)}
        edge.pause([tp])
        edge.seek({tp: 3})
        mock_cluster.produce(settings.orders_topic, 0, [b"v5"])
        assert all(not edge.poll(100, 0.05).runs for _ in range(5))
        edge.resume([tp])
        assert [r.value for r in read(edge, 3)] == [b"v3", b"v4", b"v5"]


def test_committed_offsets_are_read_without_waiting_on_the_poll_thread(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    tps = [(settings.orders_topic, 0), (settings.orders_topic, 1)]
    with edge_of(settings) as edge:
        edge.assign(dict.fromkeys(tps, BEGINNING))
        assert answer(edge.committed(tps)) == {tps[0]: None, tps[1]: None}
        edge.commit_offsets({tps[0]: 7})
        assert answer(edge.committed(tps)) == {tps[0]: 7, tps[1]: None}


def test_a_transaction_shows_its_records_only_once_committed(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    tp = (settings.dlq_topic, 0)
    with edge_of(settings, f"{settings.consumer_group}.mock.0") as edge:
        edge.init_transactions()
        edge.abort_transaction()  # with nothing open, nothing happens
        edge.begin_transaction()
        edge.produce([Outgoing(settings.dlq_topic, b"K", b"aborted")] * 3)
        edge.abort_transaction()
        edge.begin_transaction()
        edge.produce([Outgoing(settings.dlq_topic, b"K", b"committed")])
        edge.send_offsets({(settings.orders_topic, 0): 1})
        edge.commit_transaction()
        partition = next(p for p in range(4) if mock_cluster.end(settings.dlq_topic, p) > 0)
        edge.assign({(settings.dlq_topic, partition): BEGINNING})
        assert [r.value for r in read(edge, 1)] == [b"committed"]
        assert tp[0] == settings.dlq_topic


def test_a_renewed_producer_registers_the_same_id_and_the_old_transaction_never_shows(
    mock_cluster: MockCluster,
) -> None:
    settings = mock_cluster.settings()
    with edge_of(settings, f"{settings.consumer_group}.mock.renew") as edge:
        edge.init_transactions()
        edge.begin_transaction()
        edge.produce([Outgoing(settings.dlq_topic, b"K", b"lost")])
        edge.renew_producer()
        edge.init_transactions()
        edge.begin_transaction()
        edge.produce([Outgoing(settings.dlq_topic, b"K", b"kept")])
        edge.commit_transaction()
        partition = next(p for p in range(4) if mock_cluster.end(settings.dlq_topic, p) > 0)
        edge.assign({(settings.dlq_topic, partition): BEGINNING})
        assert [r.value for r in read(edge, 1)] == [b"kept"]
        assert all(not edge.poll(100, 0.05).runs for _ in range(3))


def test_the_stats_tail_reads_the_stats_topic_to_its_end(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    values = [encode_stats(RunningAverage(2, 300), 5), encode_stats(RunningAverage(3, 700), 9)]
    ours = stats_key(settings.consumer_group, settings.orders_topic, 0).encode()
    mock_cluster.produce(settings.stats_topic, 0, values, keys=[ours, b"another-group/orders-0"])
    with edge_of(settings) as edge:
        assert answer(edge.stats.end_offset()) == 2
        got = read_stats(edge, 2)
        assert [r.value for r in got] == values
        assert edge.stats.position() == 2
    assert read_group_stats(settings) == {(settings.orders_topic, 0): RunningAverage(2, 300)}


def read_stats(edge: ConfluentEdge, count: int) -> list[Incoming]:
    return gather(lambda: edge.stats.poll(100, 0.1), count)


def test_topics_that_exist_are_counted_and_left_alone(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    with open_kafka_edge(settings, EdgeOptions()) as edge:
        counts = edge.partition_counts()
        edge.create_topics([])
    assert counts[settings.orders_topic] == counts[settings.stats_topic] == 4
    ensure_topics(connect_admin(settings), settings)  # all exist: nothing to create
    assert partition_counts(connect_admin(settings))[settings.dlq_topic] == 4


def test_the_in_sync_replicas_of_every_partition_are_counted_from_a_clients_metadata() -> None:
    class Client:
        """list_topics with fixed answers (librdkafka's mock cluster keeps every replica in sync)."""

        def __init__(self, answers: dict[str, Any]) -> None:
            self.answers = answers

        def list_topics(self, topic: str, timeout: float) -> Any:
            found = self.answers[topic]
            if isinstance(found, Exception):
                raise found
            return SimpleNamespace(topics={} if found is None else {topic: found})

    orders = SimpleNamespace(
        error=None,
        partitions={
            0: SimpleNamespace(id=0, isrs=[1, 2], replicas=[1, 2, 3]),
            1: SimpleNamespace(id=1, isrs=[3], replicas=[1, 2, 3]),
        },
    )
    assert in_sync_replicas(Client({"orders": orders}), ["orders"]).result() == InSync(
        {("orders", 0): 2, ("orders", 1): 1}, {("orders", 0): 3, ("orders", 1): 3}, {}
    )
    failing = KafkaException(KafkaError(KafkaError._TRANSPORT))
    for answers, error in (
        ({"orders": orders, "other": failing}, "could not read the metadata of other"),
        ({"orders": None}, "no metadata for orders"),
        ({"orders": SimpleNamespace(error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))}, "no metadata for orders"),
    ):
        pending = in_sync_replicas(Client(answers), list(answers))
        assert pending.done()
        with pytest.raises(KafkaCallError, match=error):
            pending.result()


def test_a_subscription_reports_the_assignment_and_assigns_nothing_by_itself(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    mock_cluster.produce(settings.orders_topic, 0, [b"early"])
    with edge_of(settings) as edge:
        edge.subscribe([settings.orders_topic])
        events = gather(lambda: list(edge.poll(100, 0.1).events), 1)
        assert isinstance(events[0], Assigned)
        assert sorted(events[0].partitions) == [(settings.orders_topic, p) for p in range(4)]
        assert all(not edge.poll(100, 0.05).runs for _ in range(5)), "nothing is read before `assign`"
        edge.assign({(settings.orders_topic, 0): 0})
        assert [r.value for r in read(edge, 1)] == [b"early"]


def test_seeking_a_partition_that_is_not_assigned_is_an_error(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    with edge_of(settings) as edge, pytest.raises(KafkaCallError, match="could not seek"):
        edge.seek({(settings.orders_topic, 0): 1})


def test_a_record_larger_than_the_producer_allows_is_refused_by_name(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    with edge_of(settings) as edge, pytest.raises(DeliveryError, match=f"could not produce to {settings.dlq_topic}"):
        edge.produce([Outgoing(settings.dlq_topic, b"K", bytes(2_000_000))])


def test_kafka_errors_are_translated_with_their_kind() -> None:
    error = call_error(KafkaError(KafkaError.REQUEST_TIMED_OUT, "slow", retriable=True), "commit the transaction")
    assert (str(error), error.code, error.retriable, error.abortable, error.fatal) == (
        "could not commit the transaction: slow",
        "REQUEST_TIMED_OUT",
        True,
        False,
        False,
    )
    fenced = call_error(KafkaError(KafkaError._FENCED, "fenced", fatal=True), "begin")
    assert fenced.fatal
    assert fenced.fenced
    unknown = call_error(RuntimeError("odd"), "poll")  # type: ignore[arg-type]
    assert unknown.code == "_UNKNOWN"


def test_a_fatal_consumer_error_is_raised_by_the_next_poll(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    with edge_of(settings) as edge:
        edge._errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "down"))  # logged, not raised
        edge.poll(10, 0)
        edge._errors(KafkaError(KafkaError._FATAL, "gone for good", fatal=True))
        with pytest.raises(FatalKafkaError, match="gone for good"):
            edge.poll(10, 0)


def test_client_settings_librdkafka_rejects_are_named() -> None:
    conf = {"bootstrap.servers": "127.0.0.1:1", "security.protocol": "SSL", "ssl.ca.location": "/nonexistent"}
    with pytest.raises(ConfigError, match="KAFKA_SSL_CA_LOCATION"):
        create_client(Producer, conf)


def test_a_broker_that_does_not_answer_is_named_with_how_to_start_one() -> None:
    settings = build_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(
        BrokerUnavailableError, match=r"Cannot reach the Kafka broker at 127\.0\.0\.1:1 .*scripts/broker\.sh up"
    ):
        connect_admin(settings, timeout_s=0.5)


def test_a_topic_that_cannot_be_created_is_named(mock_cluster: MockCluster) -> None:
    # The mock cluster does not answer CreateTopics: the request times out.
    admin = connect_admin(mock_cluster.settings())
    with pytest.raises(BrokerUnavailableError, match="could not create topic never-made"):
        create_topics(admin, [TopicSpec("never-made", 1, 1, {"cleanup.policy": "compact"})], timeout_s=0.5)


def test_topic_configurations_that_do_not_come_are_named(mock_cluster: MockCluster) -> None:
    # The mock cluster does not answer DescribeConfigs: the request times out.
    admin = connect_admin(mock_cluster.settings())
    assert topic_configs(admin, []) == {}
    with pytest.raises(BrokerUnavailableError, match="could not read the configuration of topic some-topic"):
        topic_configs(admin, ["some-topic"], timeout_s=0.5)


class FakeMessage:
    """Stands in for a consumed message's headers() (pure logic; the live test writes the real thing)."""

    def __init__(self, headers: object) -> None:
        self._headers = headers

    def headers(self) -> object:
        if isinstance(self._headers, BaseException):
            raise self._headers
        return self._headers

    def __getattr__(self, name: str) -> Callable[[], object]:
        return {
            "topic": lambda: "orders",
            "partition": lambda: 0,
            "offset": lambda: 1,
            "timestamp": lambda: (1, 5),
        }.get(name, lambda: None)


def test_headers_are_read_or_the_record_is_marked_unreadable() -> None:
    read = incoming(FakeMessage([("trace", b"1"), ("empty", None)]))  # type: ignore[arg-type]
    assert (read.headers, read.unreadable) == ((("trace", b"1"), ("empty", b"")), "")
    assert incoming(FakeMessage(None)).headers == ()  # type: ignore[arg-type]
    # What confluent-kafka raises for a header name that is not UTF-8.
    broken = incoming(FakeMessage(SystemError("returned a result with an exception set")))  # type: ignore[arg-type]
    assert (broken.headers, broken.unreadable) == ((), UNREADABLE_HEADERS)


def test_a_send_offsets_librdkafka_never_returns_from_loses_the_transaction_and_the_producer_is_left_to_it(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stuck:
        """A producer whose send_offsets_to_transaction blocks until released, as librdkafka's can (issue 5456)."""

        def __init__(self) -> None:
            self.release = threading.Event()
            self.purged = False

        def send_offsets_to_transaction(self, *_: Any) -> None:
            self.release.wait(30)

        def purge(self) -> None:
            self.purged = True

    monkeypatch.setattr(edge_producer, "SEND_OFFSETS_LIMIT_S", 0.2)
    settings = mock_cluster.settings()
    with edge_of(settings, f"{settings.consumer_group}.mock.stuck") as edge:
        stuck = Stuck()
        edge._producer = stuck  # type: ignore[assignment]
        with pytest.raises(KafkaCallError, match=r"did not return within 0\.2s") as lost:
            edge.send_offsets({(settings.orders_topic, 0): 1})
        assert lost.value.fatal
        thread = edge._stuck
        assert thread is not None
        edge.renew_producer()
        assert not stuck.purged, "a producer a thread is inside is left alone"
        assert thread.is_alive()
        stuck.release.set()
        thread.join(5)
        assert not thread.is_alive()
        edge.init_transactions()  # the new producer works


def test_the_producers_in_sync_answer_reads_each_minimum_afresh_and_keeps_none_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Client:
        def list_topics(self, topic: str, timeout: float) -> Any:
            partition = SimpleNamespace(id=0, isrs=[1, 2], replicas=[1, 2, 3])
            return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: partition})})

    answers: list[Any] = [{"orders": {"min.insync.replicas": "3"}, "other": {"min.insync.replicas": "9" * 5000}}]

    def configs(_admin: Any, _names: Any, _timeout: float, **_: Any) -> Any:
        if isinstance(answers[0], Exception):
            raise answers[0]
        return answers[0]

    monkeypatch.setattr(kafka_admin, "topic_configs", configs)
    admin: Any = object()
    assert in_sync_replicas(Client(), ["orders", "other"], admin=admin).result().minimums == {"orders": 3}
    answers[0] = BrokerUnavailableError("could not read the configuration of topic orders within 5s")
    assert in_sync_replicas(Client(), ["orders"], admin=admin).result().minimums == {}


def test_the_stats_topics_end_is_asked_of_a_new_client_after_a_failed_question(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ends:
        """A reader of ends that cannot answer (its leader moved) or answers 7."""

        def __init__(self, answers: bool) -> None:
            self.answers, self.closed = answers, False

        def get_watermark_offsets(self, *_: Any, **__: Any) -> tuple[int, int]:
            if not self.answers:
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
            return 0, 7

        def close(self) -> None:
            self.closed = True

    made: list[Ends] = []
    real = kafka_clients.create_client

    def create(factory: Any, conf: dict[str, Any]) -> Any:
        if conf.get("isolation.level") != "read_uncommitted":
            return real(factory, conf)
        made.append(Ends(answers=len(made) > 0))
        return made[-1]

    monkeypatch.setattr(stats_tail, "create_client", create)
    tail = stats_tail.KafkaStatsTail(mock_cluster.settings())
    try:
        with pytest.raises(KafkaCallError, match="Unknown partition"):
            tail.end_offset().result()
        assert made[0].closed
        assert tail.end_offset().result() == 7
        assert len(made) == 2
        assert tail.end_offset().result() == 7
        assert len(made) == 2, "a client that answers is kept"
    finally:
        tail.close()
    assert made[1].closed
