"""The pipeline on the local three-node cluster while its brokers are killed (`scripts/broker.sh cluster up`).

Replication 3 and min ISR 2. The producer sends at a steady rate while the
exactly-once consumer runs; nodes are killed with SIGKILL and started again with
their data; afterwards an independent audit of the topics (tests/audit.py) must find
every valid order counted once, every invalid one dead-lettered once and nothing
written twice. The consumer runs under a supervisor that starts it again when it
stops with exit code 1 (fenced) or 3 (a call stuck past its deadline), as a service
manager would. Marked `cluster`: run them with `pytest -m cluster`.

Each failure test prints its figures (the audit, the restarts, the consumer's
latency from record timestamp to commit): `pytest -m cluster -rP` shows them.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

from config import load_settings
from orderpipe.watchdog import EXIT_STUCK
from tests.audit import Audit, audit_topics, pipeline_env
from tests.cluster.helpers import (
    BOOTSTRAP,
    START_HINT,
    active_controller,
    admin,
    cluster_script,
    commit_latencies,
    describe_latencies,
    leaders,
    set_min_isr,
    transaction_coordinator,
    wait_until_in_sync,
)
from tests.integration.helpers import Output, Pipeline, read_topic, wait_for

pytestmark = pytest.mark.timeout(600)

ORDERS = 20_000
RATE = 800  # orders per second: the run lasts about 25 s
DOWN_S = 4.0  # how long a killed node stays down


@pytest.fixture(scope="module")
def cluster() -> str:
    nodes = admin().list_topics(timeout=10).brokers if _answers() else {}
    if len(nodes) < 3:
        pytest.fail(f"the three-node cluster does not answer on {BOOTSTRAP}: {START_HINT}")
    return BOOTSTRAP


def _answers() -> bool:
    try:
        admin().list_topics(timeout=10)
    except Exception:
        return False
    return True


def _pipeline(partitions: int = 3) -> Pipeline:
    env = pipeline_env(BOOTSTRAP, f"cl-{uuid.uuid4().hex[:8]}")
    return Pipeline({**env, "REPLICATION_FACTOR": "3", "ORDERS_PARTITIONS": str(partitions)})


def _audit(pipeline: Pipeline) -> Audit:
    return audit_topics(lambda topic: read_topic(BOOTSTRAP, topic), pipeline.settings)


def _assert_exact(pipeline: Pipeline, orders: int) -> Audit:
    """The audit of a drained pipeline, printed; every order counted or dead-lettered once, nothing twice."""
    audit = _audit(pipeline)
    print(f"audit: {audit.describe()}")
    assert audit.exact, audit.describe()
    assert audit.orders == orders
    return audit


def _errors(program: Output) -> str:
    return "".join(program.errors)[-5000:]


def _last_line(program: Output, prefix: str) -> str:
    return next((line.strip() for line in reversed(program.lines) if line.startswith(prefix)), "")


# When nodes were down: (killed, answering again), epoch ms, as order timestamps are.
Outages = list[tuple[int, int]]


def _bounce(node: int, outages: Outages) -> None:
    """SIGKILL a node, leave it down DOWN_S, start it again with its data."""
    cluster_script("kill", str(node))
    killed = time.time_ns() // 1_000_000
    time.sleep(DOWN_S)  # the outage itself, not a wait for a condition
    cluster_script("start", str(node))
    outages.append((killed, time.time_ns() // 1_000_000))


def _print_latencies(pipeline: Pipeline, outages: Outages) -> None:
    """The orders' latency to their commit: those sent before the first outage, and those sent during one."""
    latencies = commit_latencies(pipeline.settings)
    before = [latency for at, latency in latencies if at < outages[0][0]]
    during = [latency for at, latency in latencies if any(start <= at <= end for start, end in outages)]
    print(f"latency to commit, orders sent before the failures: {describe_latencies(before)}")
    print(f"latency to commit, orders sent while a node was down: {describe_latencies(during)}")


class Supervised:
    """The consumer under a supervisor, as systemd's Restart=on-failure runs it: started again after a failure.

    The consumer stops with a sentence and exit code 1 when Kafka fences its
    transactional id, and 3 when a call stays stuck past its deadline; a restart with
    the same id goes on from the last commit (DESIGN: exactly-once across restarts).
    A death by signal is restarted too, as systemd does: librdkafka itself was seen to
    crash (SIGSEGV, or an assertion's SIGABRT) in rolling restarts.
    `kill` ends the consumer for good, as a machine lost would.
    """

    MAX_RESTARTS = 5

    def __init__(self, pipeline: Pipeline, *args: str) -> None:
        self.failures: list[str] = []
        self.last: Output = Output(pipeline.popen("consumer.py", *args))
        self._pipeline, self._args = pipeline, args
        self._killed = False
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while True:
            self.last.text(timeout=600)
            code = self.last.process.returncode
            if code == 0 or self._killed or len(self.failures) >= self.MAX_RESTARTS:
                return
            said = _errors(self.last).strip().splitlines() or ["(nothing on stderr)"]
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            self.failures.append(f"{how}: {said[-1]}")
            self.last = Output(self._pipeline.popen("consumer.py", *self._args))

    def kill(self) -> None:
        """SIGKILLs the consumer and does not start it again."""
        self._killed = True
        self.last.process.send_signal(signal.SIGKILL)

    def wait(self, timeout: float) -> Output:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the supervised consumer did not finish"
        return self.last


def _run_under(pipeline: Pipeline, failures: Callable[[str, Outages], None]) -> tuple[Supervised, Audit]:
    """Consumer (supervised) and producer running while `failures(transactional_id, outages)` kills nodes.

    Returns the supervisor and the audit after; prints the figures.
    """
    consumer = Supervised(pipeline, "--idle-exit", "15", "--failure-rate", "0.05", "--quiet")
    consumer.last.wait_for_line("Consuming")
    transactional_id = re.search(r"transactional id (\S+)\)", "".join(consumer.last.lines))
    assert transactional_id is not None
    producer = Output(
        pipeline.popen("producer.py", "--count", str(ORDERS), "--rate", str(RATE), "--invalid-rate", "0.05", "--quiet")
    )
    time.sleep(5)  # let the run get going before the first failure
    outages: Outages = []
    failures(transactional_id.group(1), outages)
    produced = producer.text(timeout=300)
    assert producer.process.returncode == 0, produced + _errors(producer)
    assert f"delivered {ORDERS}, failed 0" in produced
    last = consumer.wait(timeout=600)
    assert last.process.returncode == 0, last.text() + _errors(last)
    wait_until_in_sync([pipeline.settings.orders_topic])
    audit = _audit(pipeline)
    print(f"audit: {audit.describe()}")
    print(f"producer: {_last_line(producer, 'Producer summary')}")
    print(f"consumer restarts: {len(consumer.failures)} {consumer.failures}")
    _print_latencies(pipeline, outages)
    return consumer, audit


def test_the_leader_of_most_orders_partitions_then_the_transaction_coordinator_killed(cluster: str) -> None:
    pipeline = _pipeline()

    def failures(transactional_id: str, outages: Outages) -> None:
        _bounce(leaders(pipeline.settings.orders_topic).most_common(1)[0][0], outages)
        _bounce(transaction_coordinator(transactional_id), outages)

    consumer, audit = _run_under(pipeline, failures)

    assert audit.exact, f"{audit.describe()}; restarts after: {consumer.failures}"
    assert audit.orders == ORDERS
    assert audit.dlq_by_reason.get("validation", 0) == audit.invalid


def test_a_rolling_restart_of_all_three_nodes(cluster: str) -> None:
    pipeline = _pipeline()

    def failures(_transactional_id: str, outages: Outages) -> None:
        for node in (1, 2, 3):
            _bounce(node, outages)
            wait_until_in_sync([pipeline.settings.orders_topic])

    consumer, audit = _run_under(pipeline, failures)

    assert audit.exact, f"{audit.describe()}; restarts after: {consumer.failures}"
    assert audit.orders == ORDERS


def test_the_active_controller_killed(cluster: str) -> None:
    pipeline = _pipeline()

    def failures(_transactional_id: str, outages: Outages) -> None:
        _bounce(active_controller(), outages)

    consumer, audit = _run_under(pipeline, failures)

    assert audit.exact, f"{audit.describe()}; restarts after: {consumer.failures}"
    assert audit.orders == ORDERS


GROUP_AVERAGE = re.compile(r"running average (\S+) over (\d+) orders")


def test_three_consumers_one_killed_mid_run_and_the_survivors_print_the_exact_group_average(cluster: str) -> None:
    pipeline = _pipeline(partitions=6)
    consumers = [Supervised(pipeline, "--idle-exit", "15", "--failure-rate", "0.05", "--quiet") for _ in range(3)]
    for consumer in consumers:
        consumer.last.wait_for_line("Consuming")
    producer = Output(
        pipeline.popen("producer.py", "--count", str(ORDERS), "--rate", str(RATE), "--invalid-rate", "0.05", "--quiet")
    )
    victim, survivors = consumers[1], (consumers[0], consumers[2])
    victim.last.wait_for_line("[consumer]")  # its first periodic summary: it is mid-run
    victim.kill()
    produced = producer.text(timeout=300)
    assert f"delivered {ORDERS}, failed 0" in produced, produced + _errors(producer)
    finals = [survivor.wait(timeout=600) for survivor in survivors]
    for final in finals:
        assert final.process.returncode == 0, final.text() + _errors(final)
    wait_until_in_sync([pipeline.settings.orders_topic])
    audit = _assert_exact(pipeline, ORDERS)
    for final in finals:
        summary = _last_line(final, "Consumer summary")
        print(f"survivor: {summary}")
        average = GROUP_AVERAGE.search(summary)
        assert average is not None, summary
        assert (average.group(1), int(average.group(2))) == (audit.expected.describe(), audit.expected.count)


def test_below_min_isr_both_programs_wait_and_say_so_then_finish_exactly(cluster: str) -> None:
    pipeline = _pipeline()
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
        consumer = Output(pipeline.popen("consumer.py", "--idle-exit", "20", "--quiet"))
        consumer.wait_for_line("Consuming")
        producer = Output(pipeline.popen("producer.py", "--count", "4000", "--rate", "200", "--quiet"))
        wait_for(lambda: any(line in text for text in consumer.errors), 60, "the consumer to report it")
        # ... then orders, while the producer is still sending.
        assert producer.process.poll() is None, "the producer sends for 20 s"
        set_min_isr([settings.orders_topic], 3)
        wait_for(lambda: any(line in text for text in producer.errors), 60, "the producer to report it")
        assert producer.process.poll() is None, f"the producer waits rather than fails: {_errors(producer)}"
        assert consumer.process.poll() is None, f"the consumer waits rather than fails: {_errors(consumer)}"
        down_s = time.monotonic()
    finally:
        cluster_script("start", "3")
    produced = producer.text(timeout=300)
    assert producer.process.returncode == 0, produced + _errors(producer)
    assert "delivered 4000, failed 0" in produced
    consumed = consumer.text(timeout=300)
    assert consumer.process.returncode == 0, consumed + _errors(consumer)
    waited_s = time.monotonic() - down_s
    for program in (producer, consumer):  # one line at most every 30 s
        reports = sum(line in text for text in program.errors)
        assert 1 <= reports <= waited_s / 30 + 2, _errors(program)
    wait_until_in_sync(written)
    _assert_exact(pipeline, 4000)


def test_sigterm_during_a_broker_failure_is_honoured_within_the_transaction_timeout(cluster: str) -> None:
    pipeline = _pipeline()
    consumer = Output(pipeline.popen("consumer.py", "--quiet"))
    consumer.wait_for_line("Consuming")
    transactional_id = re.search(r"transactional id (\S+)\)", "".join(consumer.lines))
    assert transactional_id is not None
    producer = Output(pipeline.popen("producer.py", "--count", "4000", "--rate", "400", "--quiet"))
    consumer.wait_for_line("[consumer]")  # mid-run
    node = transaction_coordinator(transactional_id.group(1))
    cluster_script("kill", str(node))
    sent = time.monotonic()
    consumer.process.send_signal(signal.SIGTERM)
    consumer.text(timeout=120)
    stopped_s = time.monotonic() - sent
    cluster_script("start", str(node))
    print(f"stopped {stopped_s:.1f}s after SIGTERM, exit code {consumer.process.returncode}")
    assert stopped_s < 10 + 5, _errors(consumer)  # the transaction timeout, and the process's own exit
    # 0: the batch in hand committed. 3: the watchdog ended a shutdown that overran.
    # 1: Kafka failed the last transaction for good (librdkafka reports INVALID_TXN_STATE
    # when an abort meets a new coordinator): one sentence, and the restart settles it.
    code = consumer.process.returncode
    assert code in {0, 1, EXIT_STUCK}, _errors(consumer)
    if code != 0:
        assert _errors(consumer).strip().splitlines()[-1].startswith("error: "), _errors(consumer)
    if code == EXIT_STUCK:
        assert "did not finish shutting down within 10s of the stop signal" in _errors(consumer)
    assert "delivered 4000, failed 0" in producer.text(timeout=300)
    again = Supervised(pipeline, "--idle-exit", "15", "--quiet").wait(timeout=600)
    assert again.process.returncode == 0, again.text() + _errors(again)
    _assert_exact(pipeline, 4000)


def test_topics_are_created_with_replication_3_and_min_isr_2(cluster: str) -> None:
    pipeline = _pipeline()
    run = pipeline.run("consumer.py", "--idle-exit", "1")
    assert run.returncode == 0, run.stderr
    settings = load_settings(environ=pipeline.env, env_file=None)
    topics = (settings.orders_topic, settings.retry_topic, settings.dlq_topic, settings.stats_topic)
    client = admin()  # kept: a client dropped before its answers arrive cancels them
    metadata = client.list_topics(timeout=10).topics
    for topic in topics:
        assert all(len(p.replicas) == 3 for p in metadata[topic].partitions.values()), topic
    configs = client.describe_configs([ConfigResource(ResourceType.TOPIC, topic) for topic in topics])
    for resource, future in configs.items():
        assert future.result(timeout=30)["min.insync.replicas"].value == "2", resource.name
