"""Exactly-once under crashes, scale-out, zombies and restarts, on the real broker (docs/reliability.md)."""

from __future__ import annotations

import io
import random
import re
import signal
import subprocess
import threading
import time

import pytest
from confluent_kafka import IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from orderpipe.core.routing import Processed
from orderpipe.core.stats import stats_key
from orderpipe.model.order import ValidOrder
from orderpipe.observe.console import QUIET, Console
from orderpipe.programs.consumer_app import ConsumerOptions, OrderConsumer
from tests.audit import Audit
from tests.clients import client_config
from tests.integration.helpers import (
    CONSUMER_SUMMARY,
    PRODUCER_SUMMARY,
    Output,
    Pipeline,
    audit,
    holds_for,
    summary,
    wait_for,
)

STATS_LINE = re.compile(
    r"(?P<topic>\S+): count (?P<count>\d+), sum_cents (?P<sum>\d+), running average (?P<average>\S+)"
)


def produce_orders(pipeline: Pipeline, count: int, seed: int) -> dict[str, str]:
    sent = pipeline.run(
        "producer.py",
        *("--count", str(count), "--rate", "0", "--invalid-rate", "0.05", "--poison-rate", "0.01"),
        *("--seed", str(seed), "--quiet"),
    )
    assert sent.returncode == 0, sent.stderr
    produced = summary(PRODUCER_SUMMARY, sent.stdout)
    assert produced["delivered"] == str(count)
    return produced


def assert_exact(result: Audit, produced: dict[str, str]) -> None:
    """Every order counted or dead-lettered exactly once, and the stats say so to the cent."""
    assert result.orders == int(produced["sent"])
    assert (result.poison, result.invalid) == (int(produced["poison"]), int(produced["invalid"]))
    assert result.dlq_by_reason.get("deserialization", 0) == result.poison
    assert result.dlq_by_reason.get("validation", 0) == result.invalid
    assert result.dlq_duplicates == 0
    assert result.retry_duplicates == 0
    assert result.missing == 0
    assert result.stats == result.expected


def stats_view(pipeline: Pipeline) -> dict[str, str]:
    shown = pipeline.run("consumer.py", "--stats")
    assert shown.returncode == 0, shown.stderr
    match = STATS_LINE.search(shown.stdout)
    assert match, shown.stdout
    return match.groupdict()


def open_transaction(admin: AdminClient, topics: list[str]) -> bool:
    """Whether a transaction holds back the last stable offset of any partition of `topics`."""
    metadata = admin.list_topics(timeout=10).topics
    partitions = [TopicPartition(topic, p) for topic in topics for p in metadata[topic].partitions]
    ends = {
        level: {
            tp: future.result(timeout=10).offset
            for tp, future in admin.list_offsets(
                {tp: OffsetSpec.latest() for tp in partitions},  # type: ignore[no-untyped-call]
                isolation_level=level,
            ).items()
        }
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
    }
    return ends[IsolationLevel.READ_COMMITTED] != ends[IsolationLevel.READ_UNCOMMITTED]


def kill_mid_transaction(process: subprocess.Popen[str], admin: AdminClient, topics: list[str]) -> int:
    """SIGKILLs the consumer while one of its transactions is open on `topics`; returns the tries it took.

    The consumer is frozen first (SIGSTOP). A commit it had already sent may still
    complete at the broker, so the transaction must stay open for a moment while the
    process is frozen; then it is certainly left open by the kill.
    """
    deadline = time.monotonic() + 90
    tries = 0
    while time.monotonic() < deadline:
        wait_for(lambda: open_transaction(admin, topics), 30, "a transaction to be open")
        tries += 1
        process.send_signal(signal.SIGSTOP)
        if holds_for(lambda: open_transaction(admin, topics), 0.3):
            process.kill()
            process.wait()
            return tries
        process.send_signal(signal.SIGCONT)
    pytest.fail(f"never caught the consumer with a transaction open in {tries} tries")


def test_consumer_killed_at_five_random_moments_counts_every_order_exactly_once(pipeline: Pipeline) -> None:
    pipeline = pipeline.with_env(RETRY_BACKOFF_MS="200", RETRY_BACKOFF_MAX_MS="1000")
    # A live stream at 200 orders/s while the consumer is killed five times (each restart
    # takes about one session timeout, 10 s, to get its partitions back). The producer is
    # stopped with SIGTERM once the fifth consumer has committed a batch: the audit counts
    # what its summary says it sent.
    producer = pipeline.popen(
        "producer.py",
        *("--count", "40000", "--rate", "200", "--invalid-rate", "0.05", "--poison-rate", "0.01", "--seed", "11"),
        "--quiet",
    )
    admin = AdminClient(client_config(pipeline.settings.bootstrap_servers))
    written = [pipeline.settings.retry_topic, pipeline.settings.stats_topic]
    moments = random.Random(2026)
    output = Output(pipeline.popen("consumer.py", "--failure-rate", "0.2", "--seed", "0"))
    for kill in range(1, 6):
        started = time.monotonic()
        output.wait_for_line("✓ Processed")  # it has its partitions and committed a batch
        working = time.monotonic() - started
        # The kill moment: after a random number of further lines (up to about two seconds
        # at the console's 20 lines/s), then the next instant a transaction is open.
        output.wait_for_line("✓ Processed", at_least=output.count("✓ Processed") + moments.randint(1, 40))
        tries = kill_mid_transaction(output.process, admin, written)
        assert open_transaction(admin, written)
        restarted = time.monotonic()
        idle_exit = ["--idle-exit", "5"] if kill == 5 else []
        output = Output(pipeline.popen("consumer.py", "--failure-rate", "0.2", "--seed", str(kill), *idle_exit))
        # The new consumer takes its predecessor's transactional id and aborts the
        # transaction the kill left open, instead of waiting for it to time out.
        wait_for(lambda: not open_transaction(admin, written), 30, "the open transaction to be aborted")
        print(
            f"crash test: kill {kill}: working {working:.1f}s after its start, killed mid-transaction (try {tries}) at "
            f"{restarted - started:.1f}s, its transaction aborted {time.monotonic() - restarted:.1f}s after the restart"
        )
    output.wait_for_line("✓ Processed")
    assert producer.poll() is None, "the stream ended before the fifth restart had work"
    producer.send_signal(signal.SIGTERM)
    sent_out, sent_err = producer.communicate(timeout=60)
    assert producer.returncode == 0, sent_err
    produced = summary(PRODUCER_SUMMARY, sent_out)
    out = output.text()
    assert output.process.returncode == 0, out

    result = audit(pipeline)
    print("crash test:", result.describe())
    assert_exact(result, produced)
    final = summary(CONSUMER_SUMMARY, out)
    assert (final["average"], int(final["count"])) == (result.expected.describe(), result.expected.count)


def test_three_consumers_one_killed_agree_on_the_group_wide_average(pipeline: Pipeline) -> None:
    pipeline = pipeline.with_env(ORDERS_PARTITIONS="6", RETRY_BACKOFF_MS="200", RETRY_BACKOFF_MAX_MS="1000")
    # A live stream over 15 seconds, so that each of the three has work when it joins.
    producer = pipeline.popen(
        "producer.py",
        *("--count", "4500", "--rate", "300", "--invalid-rate", "0.05", "--poison-rate", "0.01", "--seed", "12"),
        "--quiet",
    )
    # Idle exit longer than the session timeout, so survivors wait for the dead one's partitions.
    consumers = [
        Output(pipeline.popen("consumer.py", "--failure-rate", "0.2", "--seed", str(n), "--idle-exit", "15"))
        for n in range(3)
    ]
    for output in consumers:
        output.wait_for_line("✓ Processed")
    victim, survivors = consumers[0], consumers[1:]
    victim.process.kill()
    victim.process.wait()
    sent_out, sent_err = producer.communicate(timeout=240)
    assert producer.returncode == 0, sent_err
    produced = summary(PRODUCER_SUMMARY, sent_out)
    outputs = [output.text() for output in survivors]
    assert [output.process.returncode for output in survivors] == [0, 0], outputs

    result = audit(pipeline)
    print("scale-out:", result.describe())
    assert_exact(result, produced)
    view = stats_view(pipeline)
    assert (int(view["count"]), int(view["sum"])) == (result.expected.count, result.expected.sum_cents)
    for out in outputs:
        final = summary(CONSUMER_SUMMARY, out)
        assert (final["average"], final["count"]) == (view["average"], view["count"])


def test_a_zombie_cannot_commit_after_its_partitions_moved(pipeline: Pipeline) -> None:
    pipeline = pipeline.with_env(ORDERS_PARTITIONS="2")
    produced = produce_orders(pipeline, 2000, seed=13)
    options = ConsumerOptions(session_timeout_ms=6000, max_poll_interval_ms=6000)
    stalled, release = threading.Event(), threading.Event()

    def stall_once(_order: ValidOrder) -> None:
        if not stalled.is_set():
            stalled.set()
            release.wait(60)  # the zombie: stuck past max.poll.interval.ms with a batch in hand

    zombie = OrderConsumer(pipeline.settings, options, Console(QUIET, out=io.StringIO()), stall_once)
    taker_processed: list[Processed] = []
    taker = OrderConsumer(
        pipeline.settings,
        options,
        Console(QUIET, out=io.StringIO()),
        lambda _order: None,
        on_decision=lambda d: taker_processed.append(d) if isinstance(d, Processed) else None,
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def run(consumer: OrderConsumer) -> threading.Thread:
        def target() -> None:
            try:
                consumer.run(stop)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    threads = [run(zombie)]
    wait_for(stalled.is_set, 60, "the first consumer to stall")
    threads.append(run(taker))
    # The group drops the stalled consumer; the other takes every partition and does all the work.
    valid = int(produced["valid"])
    wait_for(lambda: len(taker_processed) >= valid, 90, "the second consumer to process every order")
    release.set()
    wait_for(lambda: zombie.summary.aborted >= 1, 60, "the zombie's commit to be refused")
    assert zombie.summary.processed == 0
    assert len(taker_processed) == valid

    # The zombie rejoins and may get partitions back: it must resume from what the
    # other consumer committed, not from its own stale memory.
    more = produce_orders(pipeline, 500, seed=16)
    both = {name: str(int(produced[name]) + int(more[name])) for name in ("sent", "poison", "invalid")}
    wait_for(lambda: audit(pipeline).counted_exactly, 60, "the new orders to be counted")
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert_exact(audit(pipeline), both)


def test_a_restarted_consumer_shows_the_same_running_average(pipeline: Pipeline) -> None:
    produced = produce_orders(pipeline, 300, seed=14)
    first = pipeline.run("consumer.py", "--failure-rate", "0.2", "--seed", "1", "--idle-exit", "3")
    assert first.returncode == 0, first.stderr
    before = summary(CONSUMER_SUMMARY, first.stdout)
    assert int(before["processed"]) > 0

    again = pipeline.run("consumer.py", "--idle-exit", "3")
    assert again.returncode == 0, again.stderr
    after = summary(CONSUMER_SUMMARY, again.stdout)
    assert after["processed"] == "0"
    assert (after["average"], after["count"]) == (before["average"], before["count"])

    view = stats_view(pipeline)
    assert (view["average"], view["count"]) == (before["average"], before["count"])

    # Committed offsets can expire or be deleted; the state then still says where it ends.
    admin = AdminClient(client_config(pipeline.settings.bootstrap_servers))
    admin.delete_consumer_groups([pipeline.settings.consumer_group])[pipeline.settings.consumer_group].result(10)
    once_more = pipeline.run("consumer.py", "--idle-exit", "3")
    assert once_more.returncode == 0, once_more.stderr
    final = summary(CONSUMER_SUMMARY, once_more.stdout)
    assert final["processed"] == "0"
    assert (final["average"], final["count"]) == (before["average"], before["count"])
    assert_exact(audit(pipeline), produced)


def test_at_least_once_delivery_is_exact_when_nothing_crashes(pipeline: Pipeline) -> None:
    produced = produce_orders(pipeline, 300, seed=15)
    run = pipeline.run(
        "consumer.py", "--delivery", "at-least-once", "--failure-rate", "0.2", "--seed", "2", "--idle-exit", "3"
    )
    assert run.returncode == 0, run.stderr
    assert "at-least-once" in run.stdout
    assert_exact(audit(pipeline), produced)


def test_stats_values_no_reader_can_take_are_ignored_and_the_count_stays_exact(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    produced = produce_orders(pipeline, 300, seed=17)
    # The worst a client could write to the stats topic, under the keys of the orders partitions:
    # an integer Python refuses to convert, nesting deep enough to recurse out of json.loads, not UTF-8.
    poison = [b'{"count": ' + b"9" * 5000 + b', "sum_cents": 0}', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"]
    producer = Producer(client_config(settings.bootstrap_servers))
    for partition, value in enumerate(poison):
        key = stats_key(settings.consumer_group, settings.orders_topic, partition)
        producer.produce(settings.stats_topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0

    shown = pipeline.run("consumer.py", "--stats")
    assert shown.returncode == 0, shown.stderr
    run = pipeline.run("consumer.py", "--idle-exit", "3")
    assert run.returncode == 0, run.stderr
    assert f"ignored {len(poison)} unusable stats records" in run.stdout
    assert run.stderr.count("Ignoring") == 1, "warnings are rate-limited"
    assert_exact(audit(pipeline), produced)
    final = summary(CONSUMER_SUMMARY, run.stdout)
    assert int(final["count"]) == int(produced["valid"])
