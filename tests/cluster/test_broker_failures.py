"""The pipeline on the local three-node cluster while its brokers are killed (`scripts/broker.sh cluster up`).

Replication 3 and min ISR 2. The producer sends at a steady rate while the
exactly-once consumer runs; nodes are killed with SIGKILL and started again with
their data; afterwards an independent audit of the topics (tests/audit.py) must find
every valid order counted once, every invalid one dead-lettered once and nothing
written twice. The programs run as a user starts them, with no supervisor: the
consumer must ride out each failure, and any exit other than 0 or death by a signal
fails the test, a crash with gdb's backtrace of its core and Python's faulthandler
tracebacks (tests/cluster/programs.py). The scenarios themselves are in
tests/cluster/failover.py, which bench/failover.py repeats. Marked `cluster`: run
them with `pytest -m cluster`.

Each failure test prints its figures (the audit, the consumer's latency from record
timestamp to commit): `pytest -m cluster -rP` shows them.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from orderpipe.kafka.watchdog import EXIT_STUCK
from tests.audit import Audit
from tests.cluster.failover import CONSUMER_ARGS, ORDERS, RATE, SCENARIOS, cluster_pipeline, run_scenario, started
from tests.cluster.helpers import (
    audit_when_closed,
    cluster_script,
    set_min_isr,
    transaction_coordinator,
    wait_until_in_sync,
)
from tests.cluster.programs import Program
from tests.integration.helpers import Pipeline, wait_for

pytestmark = pytest.mark.timeout(600)


def _audit(pipeline: Pipeline) -> Audit:
    """The audit, once the markers of the consumers' last commits are on every partition they wrote."""
    audit, was_open, closed_after = audit_when_closed(pipeline.settings)
    if was_open:
        print(f"transactions open once the programs ended: {was_open}, all closed {closed_after:.1f}s later")
    return audit


def _assert_exact(pipeline: Pipeline, orders: int) -> Audit:
    """The audit of a drained pipeline, printed; every order counted or dead-lettered once, nothing twice."""
    audit = _audit(pipeline)
    print(f"audit: {audit.describe()}")
    assert audit.exact, audit.describe()
    assert audit.orders == orders
    return audit


def _last_line(program: Program, prefix: str) -> str:
    return next((line.strip() for line in reversed(program.output.lines) if line.startswith(prefix)), "")


Launch = Callable[..., Program]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """Starts programs (`launch(pipeline, script, *args)`); any still running when the test ends are killed."""
    programs: list[Program] = []

    def start(pipeline: Pipeline, script: str, *args: str) -> Program:
        programs.append(Program(pipeline, script, *args))
        return programs[-1]

    yield start
    for program in programs:
        program.stop_if_running()


def _assert_no_failure(*programs: Program) -> None:
    """Every program exited 0 (or was killed on purpose); else the failures, crashes with their backtraces."""
    failures = [failure for failure in (program.failure() for program in programs) if failure is not None]
    for failure in failures:
        print(failure)
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_consumer_rides_out_a_broker_failure_and_counts_exactly(cluster: str, scenario: str) -> None:
    pipeline = cluster_pipeline()
    print(f"scenario: {SCENARIOS[scenario][0]}")

    run = run_scenario(pipeline, scenario)

    for line in run.figures():
        print(line)
    for failure in run.failures:
        print(failure)
    if run.failures:
        pytest.fail(f"{len(run.failures)} program failures:\n\n" + "\n\n".join(run.failures), pytrace=False)
    assert run.audit.exact, run.audit.describe()
    assert run.audit.orders == ORDERS
    assert run.audit.dlq_by_reason.get("validation", 0) == run.audit.invalid


GROUP_AVERAGE = re.compile(r"running average (\S+) over (\d+) orders")


def test_three_consumers_one_killed_mid_run_and_the_survivors_print_the_exact_group_average(
    cluster: str, launch: Launch
) -> None:
    pipeline = cluster_pipeline(partitions=6)
    consumers = [launch(pipeline, "consumer.py", *CONSUMER_ARGS) for _ in range(3)]
    for consumer in consumers:
        started(consumer)
    producer = launch(
        pipeline, "producer.py", "--count", str(ORDERS), "--rate", str(RATE), "--invalid-rate", "0.05", "--quiet"
    )
    victim, survivors = consumers[1], (consumers[0], consumers[2])
    victim.output.wait_for_line("[consumer]")  # its first periodic summary: it is mid-run
    victim.kill()  # on purpose: not a failure; the survivors must take its partitions without one
    producer.finish(300)
    for survivor in survivors:
        survivor.finish(300)
    _assert_no_failure(producer, *consumers)
    assert f"delivered {ORDERS}, failed 0" in "".join(producer.output.lines)
    wait_until_in_sync([pipeline.settings.orders_topic])
    audit = _assert_exact(pipeline, ORDERS)
    for survivor in survivors:
        summary = _last_line(survivor, "Consumer summary")
        print(f"survivor: {summary}")
        average = GROUP_AVERAGE.search(summary)
        assert average is not None, summary
        assert (average.group(1), int(average.group(2))) == (audit.expected.describe(), audit.expected.count)


def test_below_min_isr_both_programs_wait_and_say_so_then_finish_exactly(cluster: str, launch: Launch) -> None:
    pipeline = cluster_pipeline()
    settings = pipeline.settings
    created = pipeline.run("consumer.py", "--idle-exit", "1")
    assert created.returncode == 0, created.stderr
    written = [settings.orders_topic, settings.stats_topic]
    line = "fewer in-sync replicas than min.insync.replicas"
    cluster_script("kill", "3")
    try:
        wait_until_in_sync(written, replicas=2)
        # Two in sync where three are needed: below min ISR, with the quorum alive. First
        # the stats topic, which the consumer's every commit writes to ...
        set_min_isr([settings.stats_topic], 3)
        consumer = launch(pipeline, "consumer.py", "--idle-exit", "20", "--quiet")
        started(consumer)
        producer = launch(pipeline, "producer.py", "--count", "4000", "--rate", "200", "--quiet")
        wait_for(lambda: any(line in text for text in consumer.output.errors), 60, "the consumer to report it")
        # ... then orders, while the producer is still sending.
        assert producer.process.poll() is None, "the producer sends for 20 s"
        set_min_isr([settings.orders_topic], 3)
        wait_for(lambda: any(line in text for text in producer.output.errors), 60, "the producer to report it")
        assert producer.process.poll() is None, f"the producer waits rather than fails: {producer.errors()}"
        assert consumer.process.poll() is None, f"the consumer waits rather than fails: {consumer.errors()}"
        down_s = time.monotonic()
    finally:
        cluster_script("start", "3")
    producer.finish(300)
    consumer.finish(300)
    _assert_no_failure(producer, consumer)
    assert "delivered 4000, failed 0" in "".join(producer.output.lines)
    waited_s = time.monotonic() - down_s
    for program in (producer, consumer):  # one line at most every 30 s
        reports = sum(line in text for text in program.output.errors)
        assert 1 <= reports <= waited_s / 30 + 2, program.errors()
    wait_until_in_sync(written)
    _assert_exact(pipeline, 4000)


def test_sigterm_during_a_broker_failure_is_honoured_within_the_transaction_timeout(
    cluster: str, launch: Launch
) -> None:
    pipeline = cluster_pipeline()
    consumer = launch(pipeline, "consumer.py", "--quiet")
    started(consumer)
    transactional_id = re.search(r"transactional id (\S+)\)", "".join(consumer.output.lines))
    assert transactional_id is not None
    producer = launch(pipeline, "producer.py", "--count", "4000", "--rate", "400", "--quiet")
    consumer.output.wait_for_line("[consumer]")  # mid-run
    node = transaction_coordinator(transactional_id.group(1))
    cluster_script("kill", str(node))
    sent = time.monotonic()
    consumer.process.send_signal(signal.SIGTERM)
    consumer.finish(120)
    stopped_s = time.monotonic() - sent
    cluster_script("start", str(node))
    code = consumer.process.returncode
    print(f"stopped {stopped_s:.1f}s after SIGTERM, exit code {code}")
    if code < 0:  # killed by a signal: the crash, told in full
        _assert_no_failure(consumer)
    assert stopped_s < 10 + 5, consumer.errors()  # the transaction timeout, and the process's own exit
    # 0: the batch in hand committed. 3: the watchdog ended a shutdown that overran.
    # 1: Kafka failed the last transaction for good (librdkafka reports INVALID_TXN_STATE
    # when an abort meets a new coordinator): one sentence, and the next start settles it.
    assert code in {0, 1, EXIT_STUCK}, consumer.errors()
    if code != 0:
        assert consumer.errors().strip().splitlines()[-1].startswith("error: "), consumer.errors()
    if code == EXIT_STUCK:
        assert "did not finish shutting down within 10s of the stop signal" in consumer.errors()
    producer.finish(300)
    _assert_no_failure(producer)
    assert "delivered 4000, failed 0" in "".join(producer.output.lines)
    again = launch(pipeline, "consumer.py", "--idle-exit", "15", "--quiet")
    again.finish(300)
    _assert_no_failure(again)
    _assert_exact(pipeline, 4000)
