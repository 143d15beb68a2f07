"""Unit tests of the DLQ replay: the ledger (honest and forged entries), the record put back, the tally, and
a replay on librdkafka's mock cluster (transactions, the ledger read before replaying, a second run)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from orderpipe.config.settings import build_settings
from orderpipe.core.dead_letters import DlqEntry, DlqFilter
from orderpipe.core.replay import Ledger, ledger_topic, provenance, replayed_record
from orderpipe.errors import ConfigError
from orderpipe.kafka.reader import read_to_end
from orderpipe.model.order import Order
from orderpipe.model.records import Incoming
from orderpipe.programs import dlq_app
from orderpipe.programs.dlq_app import ReplayTally, replay_dead_letters, replay_transactional_id
from orderpipe.serde.codec import OrderDecoder
from orderpipe.serde.schemas import load_order_schema
from tests.unit.mock_cluster import MockCluster

SCHEMA = load_order_schema()


def dead(offset: int, headers: tuple[tuple[str, bytes], ...] = (), timestamp: int = 1000) -> Incoming:
    return Incoming("orders-dlq", 1, offset, timestamp, b"O-1", b"value", headers)


def test_the_ledger_holds_what_it_was_told_for_that_record_only() -> None:
    ledger = Ledger()
    ledger.read(*Ledger.entry(dead(5)))
    assert ledger.holds(dead(5))
    assert not ledger.holds(dead(6))
    assert not ledger.holds(dead(5, timestamp=2000)), "a DLQ topic created again reuses offsets"
    assert Ledger.entry(dead(5)) == (b"orders-dlq:1:5", b"1000")


def test_a_tombstone_forgets_nothing_and_a_later_entry_takes_nothing_back() -> None:
    ledger = Ledger()
    ledger.read(b"orders-dlq:1:5", b"1000")
    ledger.read(b"orders-dlq:1:5", None)
    ledger.read(b"orders-dlq:1:5", b"999")
    assert ledger.holds(dead(5)), "a forged entry or a tombstone never makes a record replayable again"
    assert ledger.holds(dead(5, timestamp=999))


@pytest.mark.parametrize(
    "key",
    [None, b"", b"\xff\xfe", b"orders-dlq:1", b"orders-dlq:x:5", b"a b:1:5", b"t:1:" + b"9" * 20, b"k" * 100_000],
)
def test_keys_that_are_not_a_provenance_are_ignored(key: bytes | None) -> None:
    ledger = Ledger()
    ledger.read(key, b"1000")
    assert ledger.ignored == 1
    assert ledger.unreadable == 0


@pytest.mark.parametrize("value", [b"", b"soon", b"\xff", b"1" * 40, b"12.5", b"9" * 25])
def test_an_unreadable_value_marks_its_record_replayed_whatever_its_time(value: bytes) -> None:
    ledger = Ledger()
    ledger.read(b"orders-dlq:1:5", value)
    assert ledger.unreadable == 1
    assert ledger.holds(dead(5)), "a damaged entry never makes a record replayed twice"
    assert not ledger.holds(dead(6))


def test_the_replayed_record_keeps_key_value_and_the_producers_headers_only() -> None:
    headers = (
        ("trace-id", b"abc"),
        ("dlq.reason", b"validation"),
        ("retry.attempt", b"3"),
        ("original.partition", b"2"),
        ("error.message", b"no"),
        ("dlq.replayed-from", b"orders-dlq:0:1"),
        ("tenant", b"\xff"),
    )
    again = replayed_record(dead(9, headers), orders_partitions=3)
    assert (again.key, again.value) == (b"O-1", b"value")
    assert again.headers == (("trace-id", b"abc"), ("tenant", b"\xff"), ("dlq.replayed-from", b"orders-dlq:1:9"))
    assert again.partition == 2


@pytest.mark.parametrize("partition", [b"3", b"-1", b"x", b"\xef\xbc\x94", b"1" * 30, None])
def test_a_missing_or_forged_original_partition_leaves_the_partition_to_the_key(partition: bytes | None) -> None:
    headers = () if partition is None else (("original.partition", partition),)
    assert replayed_record(dead(9, headers), orders_partitions=3).partition is None


def test_the_tally_ends_with_the_count_and_names_what_it_skipped() -> None:
    assert ReplayTally(replayed=4).lines(dry_run=False) == ["replayed 4 records"]
    lines = ReplayTally(replayed=0, already=2, truncated=1, ledger_unreadable=3).lines(dry_run=True)
    assert lines[-1] == "would replay 0 records"
    assert "2 matching records were replayed before" in lines[0]
    assert "dlq.truncated" in lines[1]
    assert "3 ledger entries were unreadable" in lines[2]


def test_names() -> None:
    assert ledger_topic("orders-dlq") == "orders-dlq-replayed"
    assert provenance("orders-dlq", 0, 17) == "orders-dlq:0:17"


def _fill_dlq(mock_cluster: MockCluster, topic: str) -> None:
    producer = Producer({"bootstrap.servers": mock_cluster.bootstrap})
    for n in range(6):
        reason = b"validation" if n % 2 else b"retries-exhausted"
        headers: list[tuple[str, str | bytes | None]] = [
            ("dlq.reason", reason),
            ("original.partition", b"0"),
            ("trace", str(n).encode()),
        ]
        if n == 4:
            headers.append(("dlq.truncated", b"value"))
        value = SCHEMA.encode_single_object(Order(f"O-{n}", "Lamp", 5.0))
        producer.produce(topic, value, f"O-{n}".encode(), partition=0, headers=headers)
    assert producer.flush(10) == 0


@pytest.mark.slow
def test_a_replay_on_the_mock_cluster_writes_records_and_ledger_once(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings()
    mock_cluster.create_topic(ledger_topic(settings.dlq_topic))  # the mock creates no topic through the admin API
    _fill_dlq(mock_cluster, settings.dlq_topic)
    shown: list[DlqEntry] = []

    dry = replay_dead_letters(settings, DlqFilter(reason="retries-exhausted"), dry_run=True, show=shown.append)
    assert (dry.replayed, dry.truncated) == (2, 1)
    assert list(read_to_end(settings, settings.orders_topic, "t")) == []

    first = replay_dead_letters(
        settings, DlqFilter(reason="retries-exhausted"), dry_run=False, show=shown.append, batch_size=1
    )
    second = replay_dead_letters(settings, DlqFilter(), dry_run=False, show=shown.append)
    again = replay_dead_letters(settings, DlqFilter(), dry_run=False, show=shown.append)

    assert (first.replayed, first.truncated) == (2, 1)
    assert (second.replayed, second.already, second.truncated) == (3, 2, 1)
    assert (again.replayed, again.already) == (0, 5)
    orders = list(read_to_end(settings, settings.orders_topic, "t"))
    origins = sorted(dict(r.headers)["dlq.replayed-from"].decode() for r in orders)
    assert origins == [f"{settings.dlq_topic}:0:{n}" for n in (0, 1, 2, 3, 5)]
    assert all(r.partition == 0 for r in orders)
    decode = OrderDecoder(SCHEMA).decode
    assert sorted(decode(r.value).order_id for r in orders) == ["O-0", "O-1", "O-2", "O-3", "O-5"]
    ledger = list(read_to_end(settings, ledger_topic(settings.dlq_topic), "t"))
    assert len(ledger) == 5
    assert [line.order_id for line in shown[:2]] == ["O-0", "O-2"]


def test_a_missing_ledger_is_created_only_where_topics_may_be_created(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings(CREATE_TOPICS="false")
    with pytest.raises(ConfigError, match=f"topic {settings.dlq_topic}-replayed does not exist"):
        replay_dead_letters(settings, DlqFilter(), dry_run=False, show=lambda _letter: None)
    assert replay_dead_letters(settings, DlqFilter(), dry_run=True, show=lambda _letter: None).replayed == 0


def test_the_transactional_id_is_the_ledgers() -> None:
    settings = build_settings({"CONSUMER_GROUP": "g", "DLQ_TOPIC": "d"})
    assert replay_transactional_id(settings) == "d-replayed", "one per DLQ topic, whatever the group"


def test_a_record_too_large_to_send_with_its_provenance_is_skipped_not_stuck(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = mock_cluster.settings()
    mock_cluster.create_topic(ledger_topic(settings.dlq_topic))
    _fill_dlq(mock_cluster, settings.dlq_topic)
    monkeypatch.setattr(dlq_app, "PRODUCER_MESSAGE_MAX_BYTES", 1000)
    big = Producer({"bootstrap.servers": mock_cluster.bootstrap})
    big.produce(settings.dlq_topic, b"v" * 1000, b"K-big", partition=0, headers=[("dlq.reason", b"validation")])
    assert big.flush(10) == 0

    tally = replay_dead_letters(settings, DlqFilter(reason="validation"), dry_run=False, show=lambda _letter: None)

    assert (tally.replayed, tally.too_large) == (3, 1)
    assert "would be larger than the 1000 bytes a producer may send" in tally.lines(dry_run=False)[0]


def test_an_existing_ledger_that_is_not_compacted_is_refused(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = mock_cluster.settings()
    mock_cluster.create_topic(ledger_topic(settings.dlq_topic))
    monkeypatch.setattr(
        dlq_app, "topic_configs", lambda _admin, names: {n: {"cleanup.policy": "delete"} for n in names}
    )
    with pytest.raises(ConfigError, match=r"cleanup\.policy=delete but needs compact"):
        replay_dead_letters(settings, DlqFilter(), dry_run=False, show=lambda _letter: None)
