"""The whole consumer loop, driven through the in-memory twin of the Kafka edge (no broker, virtual time)."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from dataclasses import replace

import pytest

from orderpipe.consumer.loop import ConsumerLoop
from orderpipe.core.routing import DeadLetter, Processed, Retry
from orderpipe.errors import FatalKafkaError
from orderpipe.kafka.twin.cluster import Killed
from orderpipe.kafka.twin.edge import TwinEdge
from orderpipe.kafka.twin.parts import Faults
from orderpipe.model.generator import OrderFactory
from orderpipe.model.order import ValidOrder
from orderpipe.programs.consumer_app import AT_LEAST_ONCE, ConsumerOptions
from orderpipe.serde.schemas import load_order_schema
from tests.audit import audit_records
from tests.unit.twin_helpers import (
    SETTINGS,
    assert_exact,
    audit,
    encoded,
    new_cluster,
    processed,
    produce_orders,
    run,
    turn_until,
    turns,
    twin_consumer,
)


def test_every_order_is_processed_or_dead_lettered_exactly_once() -> None:
    cluster = new_cluster()
    made = produce_orders(cluster, 300, seed=3)
    twin = twin_consumer(cluster, failure_rate=0.2, seed=5)
    summary = run(twin)
    result = assert_exact(cluster)
    assert result.orders == len(made)
    assert summary.average == result.expected
    assert summary.retried > 0
    assert summary.dead_lettered["deserialization"] == result.poison
    assert cluster.transactions.open_count() == 0


def calls_of_a_run(orders: int, seed: int) -> list[str]:
    cluster = new_cluster()
    produce_orders(cluster, orders, seed=seed)
    run(twin_consumer(cluster, failure_rate=0.3, seed=seed))
    return cluster.faults.calls


def kill_points(calls: list[str]) -> list[tuple[str, int, bool]]:
    """Every call of a run, as (operation, which call of it, after it took effect?)."""
    seen: Counter[str] = Counter()
    points = []
    for operation in calls:
        seen[operation] += 1
        points.append((operation, seen[operation], False))
        if operation in Faults.CHECKED_AFTER:
            points.append((operation, seen[operation], True))
    return points


KILLS = kill_points(calls_of_a_run(40, seed=7))


@pytest.mark.parametrize(
    ("operation", "nth", "after"), KILLS, ids=[f"{op}-{n}{'-after' if after else ''}" for op, n, after in KILLS]
)
def test_a_consumer_killed_at_any_call_and_restarted_counts_every_order_once(
    operation: str, nth: int, after: bool
) -> None:
    cluster = new_cluster()
    produce_orders(cluster, 40, seed=7)
    cluster.faults.kill_at(operation, nth=nth, after=after)
    with pytest.raises(Killed):
        run(twin_consumer(cluster, failure_rate=0.3, seed=7))
    # The restart takes the same transactional id, so its start aborts what the kill left open.
    run(twin_consumer(cluster, failure_rate=0.3, seed=8))
    assert_exact(cluster)


def test_a_rebalance_beginning_mid_batch_lets_the_batch_commit_and_restores_after() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 60, seed=9)
    # Until every member rejoined, the group's generation is still the batch's: Kafka takes its offsets.
    cluster.faults.when("send_offsets", lambda: cluster.rebalance(SETTINGS.consumer_group))
    summary = run(twin_consumer(cluster, failure_rate=0.2, seed=9))
    assert summary.aborted == 0
    assert cluster.faults.calls.count("assign") == 2, "the partitions were restored again after the rebalance"
    assert_exact(cluster)


def test_offsets_of_a_batch_whose_group_moved_on_while_its_commit_waited_are_refused() -> None:
    """A commit step waits, a second consumer joins meanwhile and the rebalance completes: the first
    consumer's offsets carry the generation its batch was read in, so they are refused and the batch
    aborted, and the second consumer, which now owns some of its partitions, counts those once."""
    cluster = new_cluster(partitions=4)
    produce_orders(cluster, 80, seed=24)
    first = twin_consumer(cluster, seed=24)
    second = twin_consumer(cluster, seed=25, transactional_id="order-pipeline.twin.1")
    cluster.faults.when("send_offsets", lambda: cluster.faults.fail("send_offsets", "retriable", times=5))
    with first.consumer.open() as loop_a:
        turn_until(loop_a, lambda: "send_offsets" in cluster.faults.calls)
        with second.consumer.open() as loop_b:
            turns(loop_a, 100, loop_b)
            assert loop_a.group_total() == loop_b.group_total()
        while loop_a.turn():
            pass
    assert first.consumer.summary.aborted == 1
    assert second.decisions, "the second consumer took over partitions"
    assert_exact(cluster)


def test_a_rebalance_while_a_commit_waits_resumes_the_partitions_it_held_back() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 60, seed=26)
    cluster.faults.when("commit_transaction", lambda: cluster.faults.fail("commit_transaction", "retriable", times=3))
    twin = twin_consumer(cluster, seed=26)
    with twin.consumer.open() as loop:
        turn_until(loop, lambda: "pause" in cluster.faults.calls)  # the hold paused the input
        cluster.rebalance(SETTINGS.consumer_group)  # and gives the same partitions back
        while loop.turn():
            pass
    result = assert_exact(cluster)
    assert twin.consumer.summary.processed == result.expected.count


def test_a_second_consumer_joining_and_leaving_shares_the_work_exactly_once() -> None:
    cluster = new_cluster(partitions=4)
    produce_orders(cluster, 200, seed=10)
    first = twin_consumer(cluster, failure_rate=0.2, seed=1)
    second = twin_consumer(cluster, failure_rate=0.2, seed=2, transactional_id="order-pipeline.twin.1")
    with first.consumer.open() as loop_a:
        turns(loop_a, 3)
        with second.consumer.open() as loop_b:
            turns(loop_a, 20, loop_b)
            produce_orders(cluster, 100, seed=11)
            turns(loop_a, 20, loop_b)
            assert loop_a.group_total() == loop_b.group_total()
        while loop_a.turn():
            pass
    assert first.decisions
    assert second.decisions
    assert_exact(cluster)


def test_an_aborted_transaction_is_read_again_from_the_last_commit() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 50, seed=12)
    cluster.faults.fail("commit_transaction", "abortable")
    summary = run(twin_consumer(cluster, failure_rate=0.2, seed=12))
    assert summary.aborted == 1
    assert_exact(cluster)


def test_a_retriable_step_is_tried_again_while_the_loop_keeps_polling() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 50, seed=13)
    cluster.faults.when("send_offsets", lambda: cluster.faults.fail("send_offsets", "retriable", times=3))
    summary = run(twin_consumer(cluster, seed=13))
    assert summary.aborted == 0
    calls = cluster.faults.calls
    first = calls.index("send_offsets")
    waiting = calls[first : first + calls[first:].index("commit_transaction")]
    assert waiting.count("send_offsets") == 4
    assert waiting.count("poll") >= 3, "the loop polled while the step waited"
    assert "pause" in waiting, "input was held back while the commit waited"
    assert_exact(cluster)


def test_a_commit_whose_outcome_stays_unknown_is_settled_by_a_new_producer_in_the_same_process() -> None:
    cluster = new_cluster()
    cluster.transactions.timeout_s = 600  # longer than the commit is tried: only the new producer ends it
    produce_orders(cluster, 30, seed=14)
    cluster.faults.fail("commit_transaction", "retriable", times=70)  # more than the 60 s retry window
    twin = twin_consumer(cluster, seed=14)
    summary = run(twin)
    assert "a new producer with transactional id" in twin.log.getvalue()
    assert cluster.faults.calls.count("renew_producer") == 1
    assert cluster.faults.calls.count("init_transactions") == 2
    assert summary.aborted == 1
    assert cluster.transactions.open_count() == 0
    assert_exact(cluster)


def test_transactions_lost_again_and_again_stop_the_consumer_and_a_restart_settles_the_last() -> None:
    cluster = new_cluster()
    cluster.transactions.timeout_s = 10_000
    produce_orders(cluster, 30, seed=14)
    cluster.faults.fail("commit_transaction", "retriable", times=400)  # four 60 s retry windows and more
    with pytest.raises(FatalKafkaError, match=r"3 lost transactions were recovered within 300s"):
        run(twin_consumer(cluster, seed=14))
    assert cluster.faults.calls.count("renew_producer") == 3
    assert cluster.transactions.open_count() == 1
    cluster.faults.clear()
    run(twin_consumer(cluster, seed=14))
    assert_exact(cluster)


def test_a_fenced_producer_is_replaced_and_every_partition_restored_from_the_last_commit() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 60, seed=21)
    twin = twin_consumer(cluster, failure_rate=0.3, seed=21)
    with twin.consumer.open() as loop:
        turn_until(loop, lambda: twin.consumer.summary.processed >= 5)  # mid-run, with retries paused
        # As the transaction coordinator does with a transaction that outlived its timeout.
        cluster.faults.fail("commit_transaction", "fenced")
        produce_orders(cluster, 20, seed=22)
        while loop.turn():
            pass
    assert "was fenced" in twin.log.getvalue()
    assert cluster.faults.calls.count("renew_producer") == 1
    assert_exact(cluster)


@pytest.mark.parametrize("fenced", [True, False])
def test_a_consumer_that_lost_its_partitions_waits_for_the_group_however_long(
    fenced: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling restart, as the cluster tests saw it lose orders.

    The group session times out while a commit waits (the partitions are lost), the
    transaction is then fenced (or not), and the group coordinator loads for two
    minutes, far longer than the idle limit and the 30 s of grace a rejoin used to get.
    The consumer, owning nothing, waits for the group's next assignment. After a fenced
    transaction it used to make up an empty assignment, which ended that wait at once.
    Either way it exited 0 with the records unread.
    """
    caplog.set_level(logging.DEBUG, logger="orderpipe.consumer.rebalances")
    cluster = new_cluster()
    cluster.transactions.timeout_s = 600
    produce_orders(cluster, 60, seed=43)
    twin = twin_consumer(cluster, seed=43)
    with twin.consumer.open() as loop:
        turn_until(loop, lambda: twin.consumer.summary.processed >= 5)
        edge = cluster.groups[SETTINGS.consumer_group].members[0]

        def lose_the_session() -> None:
            cluster.expire(edge)
            cluster.joins_held_until = cluster.clock.now + 120

        cluster.faults.when("commit_transaction", lose_the_session)
        cluster.faults.fail("commit_transaction", "retriable", times=3)
        if fenced:
            cluster.faults.fail("commit_transaction", "fenced")
        produce_orders(cluster, 20, seed=44)
        while loop.turn():
            pass
    assert ("was fenced" in twin.log.getvalue()) == fenced
    assert cluster.faults.calls.count("renew_producer") == fenced
    assert ("owning nothing: going on waiting for an assignment" in caplog.text) == fenced
    assert cluster.clock.now > cluster.joins_held_until
    assert_exact(cluster)


def test_a_commit_waiting_while_the_cluster_is_below_min_isr_is_waited_out_and_reported() -> None:
    cluster = new_cluster()
    cluster.transactions.timeout_s = 600
    produce_orders(cluster, 30, seed=17)
    cluster.in_sync[(SETTINGS.stats_topic, 0)] = 0  # fewer than MIN_INSYNC_REPLICAS (1 with one replica)
    cluster.faults.fail("commit_transaction", "retriable", times=1_000)  # more than 125 s of backoffs
    twin = twin_consumer(cluster, seed=17)
    with twin.consumer.open() as loop:
        start = cluster.clock.monotonic()
        turn_until(loop, lambda: cluster.clock.monotonic() > start + 125)  # twice the 60 s retry window
        reports = twin.log.getvalue().count(
            "fewer in-sync replicas than min.insync.replicas for orders-stats-0 (0 of 1)"
        )
        assert 1 <= reports <= 5, twin.log.getvalue()  # one line at most every 30 s
        assert "in_sync_replicas" in cluster.faults.calls
        cluster.faults.clear()
        cluster.in_sync.clear()
        while loop.turn():
            pass
    assert_exact(cluster)


def test_five_aborted_batches_in_a_row_stop_the_consumer() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 10, seed=15)
    cluster.faults.fail("send_offsets", "abortable", times=5)
    with pytest.raises(FatalKafkaError, match="5 batches in a row were aborted"):
        run(twin_consumer(cluster, seed=15))
    run(twin_consumer(cluster, seed=15))
    assert_exact(cluster)


def test_two_loops_with_one_transactional_id_fence_each_other_and_count_every_order_once() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 40, seed=16)
    old = twin_consumer(cluster, seed=16)
    contexts = [old.consumer.open()]
    loops = [contexts[0].__enter__()]
    turns(loops[0], 3)
    newer = twin_consumer(cluster, seed=16)  # the same transactional id: a second process on one slot
    contexts.append(newer.consumer.open())
    loops.append(contexts[1].__enter__())
    produce_orders(cluster, 20, seed=17)
    # Each recovery fences the other: whichever reaches the recovery limit stops (and leaves the group).
    stopped: list[int] = []
    reasons: list[str] = []
    while len(stopped) < 2:
        for index, loop in enumerate(loops):
            if index in stopped:
                continue
            try:
                going = loop.turn()
            except FatalKafkaError as exc:
                reasons.append(str(exc))
                contexts[index].__exit__(FatalKafkaError, exc, None)
                stopped.append(index)
                continue
            if not going:
                contexts[index].__exit__(None, None, None)
                stopped.append(index)
    assert "was fenced" in old.log.getvalue()
    assert all("was fenced" in reason for reason in reasons), reasons
    assert_exact(cluster)


def test_a_fatal_consumer_error_stops_the_loop() -> None:
    cluster = new_cluster()
    cluster.faults.fail("poll", "fatal")
    with pytest.raises(FatalKafkaError, match="fatal"):
        run(twin_consumer(cluster))


def test_a_zombie_past_max_poll_interval_cannot_commit_and_rejoins_from_the_commit() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 80, seed=18)
    zombie = twin_consumer(cluster, failure_rate=0.2, seed=18)
    with zombie.consumer.open() as loop:
        edge = cluster.groups[SETTINGS.consumer_group].members[0]
        cluster.faults.when("send_offsets", lambda: cluster.expire(edge))
        while loop.turn():
            pass
    assert zombie.consumer.summary.aborted == 1
    assert_exact(cluster)


POISON_VALUES = [
    b"",
    None,
    b"\xde\xad\xbe\xef",
    b"\xc3\x01",  # a truncated single-object header
    b"\xc3\x01" + bytes(8) + b"\x02a",  # a fingerprint nobody knows
    encoded("O-X")[:-3],  # a truncated body
    encoded("O-X") + b"\x00",  # trailing bytes
    b"\x00\x00\x00\x00\x07\x02a",  # the registry format, with no registry configured
]


def test_poison_on_the_orders_topic_is_dead_lettered_byte_for_byte_and_the_rest_goes_on() -> None:
    cluster = new_cluster()
    for index, value in enumerate(POISON_VALUES):
        cluster.produce(SETTINGS.orders_topic, f"P-{index}".encode(), value)
    cluster.produce(SETTINGS.orders_topic, None, encoded("O-NO-KEY"))
    produce_orders(cluster, 20, seed=19, invalid_rate=0, poison_rate=0)
    summary = run(twin_consumer(cluster))
    dead = {record.key: record for record in cluster.records(SETTINGS.dlq_topic)}
    for index, value in enumerate(POISON_VALUES):
        record = dead[f"P-{index}".encode()]
        assert record.value == value
        assert (record.header("dlq.reason"), record.header("error.class")) == (
            "deserialization",
            "DeserializationError",
        )
    assert summary.processed == 21
    assert_exact(cluster)


FORGED_RETRY_HEADERS = [
    (),  # none of the pipeline's headers
    (("retry.attempt", b"abc"),),
    (("retry.attempt", b"-3"),),
    (("retry.attempt", b"\xff\xfe"),),
    (("retry.not-before", b"soon"),),
    (("original.topic", b"\xff"), ("original.offset", b"x")),
]


def test_records_on_the_retry_topic_with_missing_or_malformed_headers_neither_crash_nor_stall() -> None:
    cluster = new_cluster()
    for index, headers in enumerate(FORGED_RETRY_HEADERS):
        cluster.produce(SETTINGS.retry_topic, f"R-{index}".encode(), encoded(f"R-{index}"), headers)

    def always_down(_order: ValidOrder) -> None:
        raise TimeoutError("inventory service timed out")

    run(twin_consumer(cluster, downstream=always_down))
    dead = {record.key: record for record in cluster.records(SETTINGS.dlq_topic)}
    assert set(dead) == {f"R-{index}".encode() for index in range(len(FORGED_RETRY_HEADERS))}
    for record in dead.values():
        assert (record.header("dlq.reason"), record.header("retry.attempt")) == ("retries-exhausted", "3")


def test_bad_values_on_the_stats_topic_are_ignored_and_other_keys_do_not_count() -> None:
    cluster = new_cluster()
    group = SETTINGS.consumer_group
    for key, value in [
        (f"{group}/orders-0".encode(), b"not json"),
        (f"{group}/orders-1".encode(), b'{"count": -1, "sum_cents": 5}'),
        (f"{group}/orders-2".encode(), b"[1, 2]"),
        (f"{group}/orders-2".encode(), b'{"count": 1, "sum_cents": ' + b"9" * 900 + b"}"),
        (f"{group}/orders-2".encode(), b"[" * 600 + b"]" * 600),
        (f"{group}/another-topic-0".encode(), b'{"count": 5, "sum_cents": 500}'),
        (f"{group}/orders-7".encode(), b'{"count": 5, "sum_cents": 500, "next_offset": 1}'),  # no such partition
        (b"orders-0", b'{"count": 5, "sum_cents": 500, "next_offset": 1}'),  # the key of no group
        (b"other-group/orders-0", b'{"count": 5, "sum_cents": 500, "next_offset": 1}'),  # another pipeline's
        (None, b"{}"),
        (f"{group}/orders-retry-0".encode(), None),
    ]:
        cluster.produce(SETTINGS.stats_topic, key, value)
    produce_orders(cluster, 30, seed=20)
    twin = twin_consumer(cluster)
    summary = run(twin)
    expected = audit_records(
        cluster.records(SETTINGS.orders_topic),
        cluster.records(SETTINGS.dlq_topic),
        [],
        [],
        SETTINGS.max_order_price_cents,
    ).expected
    assert summary.average == expected
    assert summary.stats_ignored == 8, "all but the key of no group, read as one of before keys named the group"
    assert twin.log.getvalue().count("Ignoring") == 1, "warnings are rate-limited"
    assert "8 more ignored" not in twin.log.getvalue()


def test_a_retry_not_yet_due_does_not_hold_up_fresh_orders() -> None:
    settings = replace(SETTINGS, retry_backoff_ms=4000, retry_backoff_max_ms=4000)
    cluster = new_cluster(settings)
    failed: set[str] = set()

    def fails_first_try_of_a(order: ValidOrder) -> None:
        if order.order_id == "O-A" and "O-A" not in failed:
            failed.add("O-A")
            raise TimeoutError("inventory service timed out")

    twin = twin_consumer(cluster, settings=settings, downstream=fails_first_try_of_a)
    cluster.produce(settings.orders_topic, b"O-A", encoded("O-A", "Monitor", 120.0))
    with twin.consumer.open() as loop:
        retry = turn_until(loop, lambda: next((d for d in twin.decisions if isinstance(d, Retry)), None))
        cluster.produce(settings.orders_topic, b"O-B", encoded("O-B"))
        turn_until(loop, lambda: processed(twin, "O-B"))
        assert cluster.clock.now * 1000 < retry.not_before, "the fresh order waited for the retry"
        turn_until(loop, lambda: processed(twin, "O-A"))
        assert cluster.clock.now * 1000 >= retry.not_before, "the retry ran before it was due"


def test_a_paused_retry_partition_taken_away_and_given_back_is_read_again() -> None:
    """librdkafka (and the twin) keep an application's pause across reassignment."""
    settings = replace(SETTINGS, retry_backoff_ms=8000, retry_backoff_max_ms=8000)
    cluster = new_cluster(settings, partitions=1)
    failed: set[str] = set()

    def fails_first_try(order: ValidOrder) -> None:
        if order.order_id not in failed:
            failed.add(order.order_id)
            raise TimeoutError("inventory service timed out")

    twin = twin_consumer(cluster, settings=settings, downstream=fails_first_try)
    cluster.produce(settings.orders_topic, b"O-A", encoded("O-A"))
    with twin.consumer.open() as loop:
        turn_until(loop, lambda: any(isinstance(d, Retry) for d in twin.decisions))
        turns(loop, 3)  # the retry is read and deferred: its partition is paused
        cluster.rebalance(settings.consumer_group)
        cluster.rebalance(settings.consumer_group)
        turn_until(loop, lambda: processed(twin, "O-A"))
    assert [type(d).__name__ for d in twin.decisions] == ["Retry", "Processed"]


def test_at_least_once_delivery_is_exact_when_nothing_fails() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 100, seed=21)
    twin = twin_consumer(
        cluster, failure_rate=0.2, seed=21, options=ConsumerOptions(idle_exit_s=5, delivery=AT_LEAST_ONCE)
    )
    run(twin)
    assert "at-least-once" in twin.out.getvalue()
    assert_exact(cluster)


def test_a_restore_waits_for_an_open_transaction_while_it_keeps_polling() -> None:
    cluster = new_cluster()
    cluster.transactions.timeout_s = 30  # longer than the session timeout after which the group moves on
    produce_orders(cluster, 40, seed=22)
    cluster.faults.kill_at("commit_transaction")
    with pytest.raises(Killed):
        run(twin_consumer(cluster, seed=22))
    killed_at = cluster.clock.now
    # Another machine: another transactional id, so the open transaction waits for its timeout.
    calls_before = len(cluster.faults.calls)
    run(twin_consumer(cluster, seed=22, transactional_id="order-pipeline.elsewhere.0"))
    waiting = cluster.faults.calls[calls_before : cluster.faults.calls.index("assign", calls_before)]
    assert waiting.count("committed") > 1, "the committed offsets were asked for again"
    assert waiting.count("poll") > 10, "the loop kept polling meanwhile"
    assert cluster.clock.now - killed_at >= cluster.transactions.timeout_s
    assert_exact(cluster)


def test_a_stop_while_a_commit_waits_finishes_that_commit_first() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 20, seed=23)
    stop = threading.Event()

    def stop_and_fail() -> None:
        stop.set()
        cluster.faults.fail("commit_transaction", "retriable", times=2)

    cluster.faults.when("commit_transaction", stop_and_fail)
    summary = twin_consumer(cluster, seed=23).consumer.run(stop)
    assert summary.handled == 20
    assert cluster.transactions.open_count() == 0
    assert audit(cluster).counted_exactly


def test_committed_offsets_moved_outside_the_pipeline_are_followed_and_named() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 30, seed=27, invalid_rate=0, poison_rate=0)
    run(twin_consumer(cluster))
    committed = cluster.groups[SETTINGS.consumer_group].committed
    tp = next(tp for tp, offset in committed.items() if tp[0] == SETTINGS.orders_topic and offset > 0)
    committed[tp] = 0  # an operator reset the group's offset of one partition
    again = twin_consumer(cluster)
    run(again)
    assert f"{tp[0]}-{tp[1]}: no value in the stats topic reaches the committed offset 0" in again.log.getvalue()
    assert again.consumer.summary.processed > 0, "the partition was read again from the reset offset"


def test_aborts_caused_by_a_coordinator_timing_out_are_waited_out_not_counted_as_failing_batches() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 30, seed=28)
    # librdkafka aborts the transaction when the second step of send_offsets times out.
    cluster.faults.fail("send_offsets", "abortable-timeout", times=7)
    summary = run(twin_consumer(cluster, seed=28))
    assert summary.aborted == 7
    assert_exact(cluster)


def test_a_member_killed_during_a_rebalance_is_evicted_after_the_session_timeout() -> None:
    cluster = new_cluster(partitions=4)
    produce_orders(cluster, 60, seed=29)
    options = ConsumerOptions(idle_exit_s=30)
    first = twin_consumer(cluster, seed=29, options=options)
    second = twin_consumer(cluster, seed=30, transactional_id="order-pipeline.twin.1", options=options)

    def join_then_die_in_a_rebalance(loop_a: ConsumerLoop) -> None:
        with second.consumer.open() as loop_b:
            turns(loop_a, 20, loop_b)
            cluster.rebalance(SETTINGS.consumer_group)
            turns(loop_a, 1)  # the first rejoins; the rebalance waits for the second
            cluster.faults.kill_at("poll")
            turns(loop_b, 1)

    with first.consumer.open() as loop_a:
        with pytest.raises(Killed):
            join_then_die_in_a_rebalance(loop_a)
        produce_orders(cluster, 40, seed=31)  # for every partition, the dead member's among them
        while loop_a.turn():  # the rebalance waits for the dead member until its session times out
            pass
    assert second.decisions, "the second consumer had partitions before it died"
    assert_exact(cluster)


def test_the_idle_limit_counts_from_the_end_of_a_commit_that_waited() -> None:
    """Waiting for a coordinator or a leader that is away is not idleness.

    After a long wait, the partitions read again (a seek, a rejoin) may take a while
    to deliver: the idle limit gives them its whole length from the end of the wait.
    """
    cluster = new_cluster()
    produce_orders(cluster, 40, seed=42)
    cluster.faults.fail("commit_transaction", "retriable", times=8)
    twin = twin_consumer(cluster, seed=42, options=ConsumerOptions(idle_exit_s=2.0))
    with twin.consumer.open() as loop:
        while loop.turn() and twin.consumer.summary.processed == 0:
            pass
        committed_at = cluster.clock.now
        while loop.turn():
            pass
    assert committed_at > 2.0, "the commit waited longer than the idle limit"
    assert cluster.clock.now >= committed_at + 2.0
    assert_exact(cluster)


def test_a_stream_of_both_schema_versions_is_read_and_counted_exactly() -> None:
    """Version 1 records (an older producer's) read as quantity 1; a bad quantity is a validation error."""
    cluster = new_cluster()
    v1, v2 = load_order_schema(1), load_order_schema(2)
    older = OrderFactory(random.Random(7), "OLD", 0.1, 0.05, version_2_fields=False)
    newer = OrderFactory(random.Random(8), "NEW", 0.1, 0.05)
    made = [older.make(v1.encode_single_object) for _ in range(100)]
    made += [newer.make(v2.encode_single_object) for _ in range(100)]
    made.append(newer.make(lambda order: v2.encode_single_object(order._replace(quantity=1001))))
    for generated in made:
        cluster.produce(SETTINGS.orders_topic, generated.key.encode(), generated.value)
    twin = twin_consumer(cluster)
    summary = run(twin)
    result = assert_exact(cluster)
    assert result.orders == len(made)
    assert summary.average == result.expected
    quantities: dict[str, set[int]] = {"O-OLD": set(), "O-NEW": set()}
    for decision in twin.decisions:
        if isinstance(decision, Processed):
            quantities[decision.order.order_id[:5]].add(decision.order.quantity)
    assert quantities == {"O-OLD": {1}, "O-NEW": {1, 2, 3, 4, 5}}
    assert "quantity must be from 1 to 1000, got 1001" in {
        str(d.error) for d in twin.decisions if isinstance(d, DeadLetter) and d.reason == "validation"
    }


SET_UP_CALLS = {"permissions", "partition_counts", "create_topics", "topic_configs", "replication_factors"}


def test_the_running_path_asks_no_set_up_question_through_rebalances_recoveries_and_replica_checks() -> None:
    cluster = new_cluster()
    cluster.transactions.timeout_s = 600
    produce_orders(cluster, 60, seed=23)
    twin = twin_consumer(cluster, failure_rate=0.2, seed=23)
    with twin.consumer.open() as loop:
        calls = cluster.faults.calls
        running_from = calls.index("finish_setup")
        turn_until(loop, lambda: twin.consumer.summary.processed >= 10)
        cluster.rebalance(SETTINGS.consumer_group)
        cluster.in_sync[(SETTINGS.stats_topic, 0)] = 0  # below min ISR: the replica watch asks
        cluster.faults.fail("commit_transaction", "retriable", times=10)
        turn_until(loop, lambda: "in_sync_replicas" in calls[running_from:])
        cluster.in_sync.clear()
        cluster.faults.fail("commit_transaction", "fenced")
        while loop.turn():
            pass
    running = calls[running_from:]
    assert {"committed", "in_sync_replicas", "renew_producer"} <= set(running)
    assert not SET_UP_CALLS & set(running), [call for call in running if call in SET_UP_CALLS]
    assert SET_UP_CALLS - {"create_topics"} <= set(calls[:running_from])
    assert_exact(cluster)


def test_lag_counts_the_records_waiting_on_paused_retry_partitions() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 30, seed=24)
    twin = twin_consumer(cluster, failure_rate=1.0, seed=24)  # every order retried, with backoffs of seconds
    with twin.consumer.open() as loop:
        waiting = turn_until(loop, lambda: loop._scheduler.paused)  # a retry partition paused, its record not due
        lags = loop.lags()
        assert lags is not None
        for tp in waiting:
            offset = loop._ownership.offset(tp)
            assert offset is not None
            end = len(cluster.logs[tp[0]][tp[1]])
            assert lags[tp] == end - max(offset, 0) > 0, (tp, lags)
        assert sum(lag for (topic, _), lag in lags.items() if topic == SETTINGS.retry_topic) > 0


def test_idle_exit_waits_while_the_leaders_cannot_say_that_nothing_is_left_to_read() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 20, seed=25)
    cluster.faults.fail("unread", "retriable", times=3)  # leaders away: no answer
    twin = twin_consumer(cluster, seed=25)
    started = cluster.clock.monotonic()
    run(twin)
    asked = cluster.faults.calls.count("unread")
    assert asked == 4, "asked again after each unanswered question, then idle once the answer is 'nothing'"
    assert cluster.clock.monotonic() - started >= 4 * 5.0  # each unanswered question restarts the 5 s idle limit
    assert_exact(cluster)


def test_idle_exit_waits_for_records_a_leader_reports_that_have_not_arrived() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 10, seed=26, invalid_rate=0, poison_rate=0)
    twin = twin_consumer(cluster, seed=26)
    with twin.consumer.open() as loop:
        turn_until(loop, lambda: twin.consumer.summary.processed == 10)
        edge = cluster.groups[SETTINGS.consumer_group].members[0]
        assert isinstance(edge, TwinEdge)

        # The fetches stop (a broker failing), while the leader knows of more records.
        def more() -> None:
            produce_orders(cluster, 5, seed=27, invalid_rate=0, poison_rate=0)

        cluster.faults.when("unread", more)
        edge.pause(list(edge.assignment))
        for _ in range(200):
            assert loop.turn(), "not idle while records wait to be read"
            if "unread" in cluster.faults.calls:
                break
        edge.resume(list(edge.assignment))
        while loop.turn():
            pass
    assert twin.consumer.summary.processed == 15
    assert_exact(cluster)
