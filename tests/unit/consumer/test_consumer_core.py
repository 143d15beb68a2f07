"""The consumer's pure core beyond routing: a batch's effects, ownership, retry scheduling, the hold, topics."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import cast

import pytest

from orderpipe.config.settings import Settings, build_settings
from orderpipe.consumer.assignment import Restorer
from orderpipe.core.batch_plan import BatchPlan, Deferred
from orderpipe.core.effects import OutputTopics, batch_effects
from orderpipe.core.hold import Hold
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import BEGINNING, Outgoing, TopicSpec
from orderpipe.core.retry_scheduler import RetryScheduler
from orderpipe.core.routing import DeadLetter, Processed, Retry
from orderpipe.core.stats import Latest, StatsKeys, StatsTable
from orderpipe.core.stats_view import CatchUp, StatsView
from orderpipe.core.topics import STATS_TOPIC_CONFIG, missing_sentence, missing_topics, partition_warning, weak_topics
from orderpipe.errors import BrokerUnavailableError, DeserializationError, KafkaCallError
from orderpipe.kafka import stats_tail
from orderpipe.kafka.twin.parts import VirtualClock
from orderpipe.model.money import RunningAverage
from orderpipe.model.order import ValidOrder
from orderpipe.model.records import Incoming, runs_of
from orderpipe.programs.consumer_app import simulated_outage

TOPICS = OutputTopics("orders-retry", "orders-dlq", "orders-stats", "g")
A, B, R = ("orders", 0), ("orders", 1), ("orders-retry", 0)


def record(tp: tuple[str, int], offset: int, key: bytes = b"K") -> Incoming:
    return Incoming(tp[0], tp[1], offset, 0, key, b"value", (), tp[0] == "orders-retry")


def test_a_batch_becomes_records_offsets_and_states_to_apply_after_its_commit() -> None:
    error = TimeoutError("down")
    plan = BatchPlan.of(
        (
            Processed(record(A, 4), ValidOrder("O-1", "Mouse", 1000)),
            Retry(record(A, 5, b"O-2"), 1, 99, error, (("retry.attempt", b"1"),)),
            DeadLetter(
                record(B, 7, b"O-3"), "validation", 0, error, (("dlq.reason", b"validation"),), b"O-3", b"value"
            ),
            Processed(record(A, 6), ValidOrder("O-4", "Mouse", 500)),
        ),
        {A: 7, B: 8, R: 3},
        (Deferred("orders-retry", 0, 3, 12345),),
    )
    effects = batch_effects(plan, {A: RunningAverage(10, 20000), B: RunningAverage(1, 100)}, TOPICS)
    retry, dead, *stats = effects.records
    assert retry == Outgoing("orders-retry", b"O-2", b"value", (("retry.attempt", b"1"),))
    assert dead == Outgoing("orders-dlq", b"O-3", b"value", (("dlq.reason", b"validation"),))
    assert [(s.topic, s.key, s.partition, json.loads(s.value or b"")) for s in stats] == [
        ("orders-stats", b"g/orders-0", 0, {"count": 12, "sum_cents": 21500, "next_offset": 7}),
        ("orders-stats", b"g/orders-1", 0, {"count": 1, "sum_cents": 100, "next_offset": 8}),
        ("orders-stats", b"g/orders-retry-0", 0, {"count": 0, "sum_cents": 0, "next_offset": 3}),
    ]
    assert effects.offsets == {A: 7, B: 8, R: 3}
    assert effects.states == {A: RunningAverage(12, 21500), B: RunningAverage(1, 100), R: RunningAverage()}
    assert (effects.deferred, effects.decisions, effects.processed) == (plan.deferred, plan.decisions, 2)


def test_restored_partitions_start_at_the_commit_or_where_their_state_ends_or_the_beginning() -> None:
    ownership = Ownership()
    ownership.assigned([A, B, R])
    table = table_of(
        stats_record(0, b"g/orders-0", stats_value(3, 30, 12)), stats_record(1, b"g/orders-1", stats_value(5, 50, 40))
    )
    starts, unmatched = ownership.restored({A: 12, B: None, R: None}, table)
    assert (starts, unmatched) == ({A: 12, B: 40, R: BEGINNING}, [])
    assert ownership.states == {A: RunningAverage(3, 30), B: RunningAverage(5, 50), R: RunningAverage()}
    assert ownership.restoring == ()


def test_only_owned_partitions_that_are_not_paused_are_read_and_moved_on() -> None:
    ownership = Ownership()
    ownership.assigned([A, B])
    ownership.restored({A: 1, B: 1}, table_of())
    ownership.assigned([R])  # a later assignment restoring: not read yet
    runs = runs_of([record(A, 1), record(B, 1), record(R, 0), record(("elsewhere", 0), 0)])
    assert ownership.accept(runs, {B}) == [runs[0]]
    ownership.revoked([B])
    plan = BatchPlan((), {A: 5, B: 9})
    ownership.committed(batch_effects(plan, ownership.states, TOPICS))
    assert ownership.rewind([A, B, R]) == {A: 5}


def test_a_revoked_partition_is_no_longer_restored() -> None:
    ownership = Ownership()
    ownership.assigned([A, B])
    ownership.revoked([A])
    assert ownership.restoring == (B,)
    assert ownership.restored({B: 2}, table_of()) == ({B: 2}, [B]), "committed, but no value: said so"


def test_retry_partitions_are_paused_until_due_and_forgotten_when_revoked() -> None:
    scheduler = RetryScheduler()
    seeks = scheduler.defer([Deferred("orders-retry", 0, 3, 1000), Deferred("orders-retry", 1, 8, 2000)])
    assert seeks == {("orders-retry", 0): 3, ("orders-retry", 1): 8}
    assert scheduler.due(999) == []
    assert scheduler.due(1000) == [("orders-retry", 0)]
    assert scheduler.forget([("orders-retry", 1), A]) == [("orders-retry", 1)]
    assert scheduler.paused == {}


def test_the_hold_pauses_what_is_read_and_seeks_back_to_what_it_dropped() -> None:
    hold = Hold()
    assert hold.begin([A, B, R]) == {A, B, R}
    was_active = hold.active
    hold.drop(runs_of([record(A, 7), record(A, 8), record(B, 2)]))
    assert hold.forget([B, ("elsewhere", 0)]) == [B]
    assert hold.end() == ({A, R}, {A: 7})
    assert (was_active, hold.active) == (True, False)
    assert hold.end() == (set(), {})


def test_missing_topics_keep_the_partition_count_orders_really_has() -> None:
    settings = Settings(orders_partitions=3, replication_factor=1)
    assert missing_topics(settings, {"orders": 6, "orders-dlq": 6}) == [
        TopicSpec("orders-retry", 6, 1, {"min.insync.replicas": "1"}),
        TopicSpec("orders-stats", 1, 1, {**STATS_TOPIC_CONFIG, "min.insync.replicas": "1"}),
    ]
    assert [spec.partitions for spec in missing_topics(settings, {})] == [3, 3, 3, 1]


def _specs(*names: str) -> list[TopicSpec]:
    return [TopicSpec(name, 3, 1, {}) for name in names]


def test_a_missing_topic_is_named_with_what_to_do_in_the_singular() -> None:
    assert missing_sentence(_specs("orders")) == (
        "topic orders does not exist, or this principal may not see it (any permission on a topic lets it see the "
        "topic), and it may not be created here (CREATE_TOPICS is false, or the principal lacks CREATE on it): "
        "create it with the partitions and settings in docs/wire-formats.md's Topics section, or grant the "
        "permissions 'scripts/acls.sh print' lists"
    )


@pytest.mark.parametrize(
    ("names", "listed"),
    [
        (("orders", "orders-dlq"), "topics orders and orders-dlq"),
        (
            ("orders", "orders-retry", "orders-dlq", "orders-stats"),
            "topics orders, orders-retry, orders-dlq and orders-stats",
        ),
    ],
)
def test_several_missing_topics_are_named_in_the_plural(names: tuple[str, ...], listed: str) -> None:
    assert missing_sentence(_specs(*names)) == (
        f"{listed} do not exist, or this principal may not see them (any permission on a topic lets it see the "
        "topic), and they may not be created here (CREATE_TOPICS is false, or the principal lacks CREATE on them): "
        "create them with the partitions and settings in docs/wire-formats.md's Topics section, or grant the "
        "permissions 'scripts/acls.sh print' lists"
    )


def stats_record(offset: int, key: bytes, value: bytes | None) -> Incoming:
    return Incoming("orders-stats", 0, offset, 0, key, value)


def stats_value(count: int, cents: int, next_offset: int) -> bytes:
    return json.dumps({"count": count, "sum_cents": cents, "next_offset": next_offset}).encode()


def test_the_stats_table_keeps_each_keys_latest_value() -> None:
    table = table_of(
        stats_record(0, b"g/orders-0", b'{"count": 1, "sum_cents": 5, "next_offset": 3}'),
        stats_record(1, b"g/orders-1", b'{"count": 2, "sum_cents": 9}'),
    )
    assert table.latest == {A: Latest(RunningAverage(1, 5), 3), B: Latest(RunningAverage(2, 9), None)}
    with pytest.raises(DeserializationError):
        table.take(stats_record(2, b"g/orders-0", b"{"))
    assert table.states[A] == RunningAverage(1, 5), "a bad value changes nothing"
    table.take(stats_record(3, b"g/orders-0", b'{"count": 4, "sum_cents": 8}'))
    assert table.latest[A] == Latest(RunningAverage(4, 8), None)
    table.take(stats_record(4, b"g/orders-1", None))
    assert table.states == {A: RunningAverage(4, 8)}


def table_of(*records: Incoming) -> StatsTable:
    table = StatsTable(StatsKeys("g", {"orders": 2, "orders-retry": 1}))
    for r in records:
        table.take(r)
    return table


@pytest.mark.parametrize(
    "key",
    [b"g/orders-x", b"g/unknown-0", b"g/orders-00000000001", b"g/orders-10000", b"g/orders--1", b"", b"\xff"],
)
def test_a_key_of_the_group_that_names_no_input_partition_is_refused(key: bytes) -> None:
    table = table_of()
    with pytest.raises(DeserializationError, match="stats key"):
        table.take(stats_record(0, key, stats_value(1, 5, 3)))
    assert table.latest == {}


def test_a_key_beyond_the_partition_count_is_kept_but_not_counted_until_assigned() -> None:
    table = table_of(stats_record(0, b"g/orders-2", stats_value(1, 5, 3)))
    assert (A[0], 2) in table.latest
    assert table.states == {}
    table.keys.extend([("orders", 2)])
    assert table.states == {("orders", 2): RunningAverage(1, 5)}


def test_a_key_of_before_keys_named_the_group_is_used_only_to_match_the_committed_offset() -> None:
    table = table_of(stats_record(0, b"orders-0", stats_value(3, 300, 20)))
    assert table.latest == {}
    ownership = Ownership()
    ownership.assigned([A, B])
    starts, unmatched = ownership.restored({A: 20, B: None}, table)
    assert (starts, unmatched) == ({A: 20, B: BEGINNING}, [])
    assert ownership.states == {A: RunningAverage(3, 300), B: RunningAverage()}


def test_keys_of_other_groups_are_skipped_silently() -> None:
    table = table_of(stats_record(0, b"other/orders-0", stats_value(1, 5, 3)), stats_record(1, b"g/x/orders-0", b"{"))
    assert table.latest == {}
    assert table.changed == set()


def test_the_value_that_reaches_the_committed_offset_is_restored_not_a_replayed_or_forged_one() -> None:
    table = table_of(
        stats_record(0, b"g/orders-0", stats_value(1, 100, 10)),
        stats_record(1, b"g/orders-0", stats_value(3, 300, 20)),  # the real latest: committed with offset 20
        stats_record(2, b"g/orders-0", stats_value(1, 100, 10)),  # an old value written again
        stats_record(3, b"g/orders-1", stats_value(5, 500, 7)),
        stats_record(4, b"g/orders-1", stats_value(9, 9_000, 99)),  # forged
        stats_record(5, b"g/orders-retry-0", stats_value(2, 20, 4)),
    )
    ownership = Ownership()
    ownership.assigned([A, B, R])
    starts, unmatched = ownership.restored({A: 20, B: 7, R: 5}, table)
    assert starts == {A: 20, B: 7, R: 5}
    assert ownership.states == {A: RunningAverage(3, 300), B: RunningAverage(5, 500), R: RunningAverage(2, 20)}
    assert unmatched == [R], "no value reaches offset 5: the latest is used, and said so"
    # The owner sees values it did not write, and writes its own over them.
    assert ownership.foreign(A, table.latest[A])
    assert ownership.foreign(B, table.latest[B])
    assert not ownership.foreign(R, Latest(RunningAverage(2, 20), 5))
    assert not ownership.foreign(("orders", 9), Latest(RunningAverage(), 1)), "not owned: not its business"
    assert not ownership.foreign(A, None), "no value: nothing to be wrong"


class Answered:
    """A `Pending` that is already answered."""

    def __init__(self, answer: object) -> None:
        self._answer = answer

    def done(self) -> bool:
        return True

    def result(self) -> object:
        return self._answer


class OneRecordAtATime:
    """A stats view of a long topic that reads one record per poll, until `stall_at` (our own pure stand-in)."""

    def __init__(self, length: int, stall_at: int | None = None) -> None:
        self.table = table_of()
        self._length, self._stall_at, self._position = length, stall_at, 0

    def poll(self) -> None:
        if self._position != self._stall_at:
            self._position = min(self._position + 1, self._length)

    def position(self) -> int:
        return self._position

    def catch_up(self) -> Answered:
        view = self

        class Reached(Answered):
            def reached(self) -> bool:
                return view.position() >= view._length

        return Reached(None)


class CommittedOffsets:
    """The two calls of the edge a restore makes."""

    def __init__(self) -> None:
        self.assigned: dict[tuple[str, int], int] = {}

    def committed(self, partitions: object) -> Answered:
        return Answered({A: 5})

    def assign(self, starts: dict[tuple[str, int], int]) -> None:
        self.assigned = starts


def restorer_of(stats: OneRecordAtATime, edge: CommittedOffsets, clock: VirtualClock) -> Restorer:
    ownership = Ownership()
    ownership.assigned([A])
    restorer = Restorer(edge, ownership, stats, clock, timeout_s=60)  # type: ignore[arg-type]
    restorer.start()
    return restorer


def test_a_long_stats_topic_is_caught_up_while_reading_progresses_however_long_it_takes() -> None:
    clock, edge = VirtualClock(), CommittedOffsets()
    stats = OneRecordAtATime(length=100)
    restorer = restorer_of(stats, edge, clock)
    for _ in range(100):  # 1000 s in all, far beyond the 60 s limit, but moving on every 10 s
        clock.advance(10)
        stats.poll()
        restorer.advance()
    assert edge.assigned == {A: 5}


def test_a_catch_up_that_stops_moving_fails_after_the_limit() -> None:
    clock, edge = VirtualClock(), CommittedOffsets()
    stats = OneRecordAtATime(length=100, stall_at=30)
    restorer = restorer_of(stats, edge, clock)

    def ten_seconds_on() -> None:
        clock.advance(10)
        stats.poll()
        restorer.advance()

    for _ in range(36):  # reading stops at the 30th record; 60 s later it still holds
        ten_seconds_on()
    with pytest.raises(BrokerUnavailableError, match="end of the stats topic"):
        ten_seconds_on()
    assert stats.position() == 30


class StatsTopic:
    """A stats view over a topic that grows while a restore runs; `catch_up` takes the end it has when asked."""

    def __init__(self, *records: Incoming) -> None:
        self.table = table_of()
        self.records = list(records)
        self._position = 0

    def poll(self) -> None:
        if self._position < len(self.records):
            self.table.take(self.records[self._position])
            self._position += 1

    def position(self) -> int:
        return self._position

    def catch_up(self) -> Answered:
        view, end = self, len(self.records)

        class Reached(Answered):
            def reached(self) -> bool:
                return view.position() >= end

        return Reached(end)


class CommittingLater:
    """Pending committed offsets: held back (a transaction is open on them) until the second look."""

    def __init__(self, on_commit: Callable[[], None]) -> None:
        self._on_commit = on_commit
        self._looks = 0

    def done(self) -> bool:
        self._looks += 1
        if self._looks == 2:
            self._on_commit()  # the transaction committed: offset 20 and its stats value are in
        return self._looks >= 2

    def result(self) -> object:
        return {A: 20}


class TransactionCommittingLater:
    """The edge of a restore whose committed offsets are answered once a transaction on them commits."""

    def __init__(self, on_commit: Callable[[], None]) -> None:
        self.assigned: dict[tuple[str, int], int] = {}
        self._on_commit = on_commit

    def committed(self, partitions: object) -> CommittingLater:
        return CommittingLater(self._on_commit)

    def assign(self, starts: dict[tuple[str, int], int]) -> None:
        self.assigned = starts


def test_a_restore_reads_the_stats_value_of_a_transaction_that_commits_while_it_waits_for_the_offsets() -> None:
    # Offset 10 was committed with the value (1, 100). A transaction is open with offset
    # 20 and the value (3, 300) when the restore starts; it commits before the offsets
    # are answered. The value restored must be the one that reaches 20, not the older one.
    stats = StatsTopic(stats_record(0, b"g/orders-0", stats_value(1, 100, 10)))
    edge = TransactionCommittingLater(
        lambda: stats.records.append(stats_record(1, b"g/orders-0", stats_value(3, 300, 20)))
    )
    ownership, clock = Ownership(), VirtualClock()
    ownership.assigned([A])
    restorer = Restorer(edge, ownership, stats, clock, timeout_s=60)  # type: ignore[arg-type]
    restorer.start()
    for _ in range(10):
        stats.poll()
        restorer.advance()
        clock.advance(1)
    assert edge.assigned == {A: 20}
    assert ownership.states == {A: RunningAverage(3, 300)}


def test_topics_less_durable_than_the_settings_ask_for_are_named() -> None:
    settings = Settings(replication_factor=3)
    replication = {"orders": 3, "orders-retry": 1, "orders-dlq": 3, "orders-stats": 3}
    configs = {"orders": {"min.insync.replicas": "1"}, "orders-dlq": {"min.insync.replicas": "2"}}
    warnings = weak_topics(settings, replication, configs)
    assert len(warnings) == 2
    assert warnings[0].startswith("topic orders has min.insync.replicas 1 (MIN_INSYNC_REPLICAS=2)")
    assert warnings[1].startswith("topic orders-retry has replication factor 1 (REPLICATION_FACTOR=3)")
    assert weak_topics(Settings(), {"orders": 1}, {}) == []
    for absurd in ("", "-1", "１", "9" * 5000, "2\n"):
        assert weak_topics(settings, {"orders": 3}, {"orders": {"min.insync.replicas": absurd}}) == [], absurd
    assert all(spec.config["min.insync.replicas"] == "2" for spec in missing_topics(settings, {}))


class Failing:
    """An answer about the end of orders-stats that failed (leadership moving, say)."""

    def done(self) -> bool:
        return True

    def result(self) -> int:
        raise KafkaCallError("could not find the end of orders-stats: no leader", "LEADER_NOT_AVAILABLE")


class AnEnd(Failing):
    def result(self) -> int:
        return 0


def test_the_stats_view_asks_again_for_an_end_that_could_not_be_found_until_its_deadline() -> None:
    answers: list[Failing] = [Failing(), Failing(), AnEnd()]
    view = cast("StatsView", SimpleNamespace(position=lambda: 0))
    catch_up = CatchUp(view, Failing(), lambda: answers.pop(0))
    far = time.monotonic() + 60
    assert not stats_tail._reached(catch_up, far)
    assert not stats_tail._reached(catch_up, far)
    assert not stats_tail._reached(catch_up, far)
    assert stats_tail._reached(catch_up, far)
    with pytest.raises(BrokerUnavailableError, match="no leader"):
        stats_tail._reached(CatchUp(view, Failing(), Failing), time.monotonic() - 1)


def test_an_orders_topic_with_another_partition_count_is_followed_with_a_warning_naming_both() -> None:
    settings = build_settings({"ORDERS_PARTITIONS": "3"})
    assert partition_warning(settings, {}) is None
    assert partition_warning(settings, {settings.orders_topic: 3}) is None
    warning = partition_warning(settings, {settings.orders_topic: 1})
    assert warning is not None
    assert f"topic {settings.orders_topic} has 1 partition, not ORDERS_PARTITIONS=3" in warning
    assert settings.retry_topic in warning
    assert settings.dlq_topic in warning
    specs = {spec.name: spec.partitions for spec in missing_topics(settings, {settings.orders_topic: 1})}
    assert specs == {settings.retry_topic: 1, settings.dlq_topic: 1, settings.stats_topic: 1}


def test_the_simulated_downstream_is_no_call_at_all_when_it_never_fails() -> None:
    assert simulated_outage(random.Random(1), 0.0) is None
    failing = simulated_outage(random.Random(1), 1.0)
    assert failing is not None
    with pytest.raises(TimeoutError):
        failing(ValidOrder("O-1", "Mouse", 1000))
