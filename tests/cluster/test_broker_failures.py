"""The pipeline on the local three-node cluster while its brokers are killed (`scripts/broker.sh cluster up`).

Replication 3 and min ISR 2. The producer sends at a steady rate while the
exactly-once consumer runs; nodes are killed with SIGKILL and started again with
their data; afterwards an independent audit of the topics (tests/audit.py) must find
every valid order counted once, every invalid one dead-lettered once and nothing
written twice. The consumer runs under a supervisor that starts it again when it
stops with exit code 1 (fenced, or a call stuck past its deadline), as a service
manager would. Marked `cluster`: run them with `pytest -m cluster`.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

from config import load_settings
from tests.audit import Audit, audit_topics, pipeline_env
from tests.cluster.helpers import (
    BOOTSTRAP,
    START_HINT,
    admin,
    cluster_script,
    leaders,
    transaction_coordinator,
    wait_until_in_sync,
)
from tests.integration.helpers import Output, Pipeline, read_topic

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


def _pipeline() -> Pipeline:
    return Pipeline({**pipeline_env(BOOTSTRAP, f"cl-{uuid.uuid4().hex[:8]}"), "REPLICATION_FACTOR": "3"})


def _audit(pipeline: Pipeline) -> Audit:
    return audit_topics(lambda topic: read_topic(BOOTSTRAP, topic), pipeline.settings)


def _errors(program: Output) -> str:
    assert program.process.stderr is not None
    return program.process.stderr.read()[-5000:]


def _bounce(node: int) -> None:
    """SIGKILL a node, leave it down DOWN_S, start it again with its data."""
    cluster_script("kill", str(node))
    time.sleep(DOWN_S)  # the outage itself, not a wait for a condition
    cluster_script("start", str(node))


class Supervised:
    """The consumer under a supervisor, as systemd's Restart=on-failure runs it: started again after a failure.

    The consumer stops with a sentence and exit code 1 when Kafka fences its
    transactional id or a call stays stuck past its deadline; a restart with the
    same id goes on from the last commit (DESIGN: exactly-once across restarts).
    """

    MAX_RESTARTS = 5

    def __init__(self, pipeline: Pipeline, *args: str) -> None:
        self.failures: list[str] = []
        self.last: Output = Output(pipeline.popen("consumer.py", *args))
        self._pipeline, self._args = pipeline, args
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while True:
            self.last.text(timeout=600)
            if self.last.process.returncode != 1 or len(self.failures) >= self.MAX_RESTARTS:
                return
            self.failures.append(_errors(self.last).strip().splitlines()[-1])
            self.last = Output(self._pipeline.popen("consumer.py", *self._args))

    def wait(self, timeout: float) -> Output:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the supervised consumer did not finish"
        return self.last


def _run_under(pipeline: Pipeline, failures: Callable[[str], None]) -> tuple[Supervised, Audit]:
    """Consumer (supervised) and producer running while `failures(transactional_id)` kills nodes; the audit after."""
    consumer = Supervised(pipeline, "--idle-exit", "15", "--failure-rate", "0.05", "--quiet")
    consumer.last.wait_for_line("Consuming")
    transactional_id = re.search(r"transactional id (\S+)\)", "".join(consumer.last.lines))
    assert transactional_id is not None
    producer = Output(
        pipeline.popen("producer.py", "--count", str(ORDERS), "--rate", str(RATE), "--invalid-rate", "0.05", "--quiet")
    )
    time.sleep(5)  # let the run get going before the first failure
    failures(transactional_id.group(1))
    produced = producer.text(timeout=300)
    assert producer.process.returncode == 0, produced + _errors(producer)
    assert f"delivered {ORDERS}, failed 0" in produced
    last = consumer.wait(timeout=600)
    assert last.process.returncode == 0, last.text() + _errors(last)
    wait_until_in_sync([pipeline.settings.orders_topic])
    return consumer, _audit(pipeline)


def test_the_leader_of_most_orders_partitions_then_the_transaction_coordinator_killed(cluster: str) -> None:
    pipeline = _pipeline()

    def failures(transactional_id: str) -> None:
        _bounce(leaders(pipeline.settings.orders_topic).most_common(1)[0][0])
        _bounce(transaction_coordinator(transactional_id))

    consumer, audit = _run_under(pipeline, failures)

    assert audit.exact, f"{audit.describe()}; restarts after: {consumer.failures}"
    assert audit.orders == ORDERS
    assert audit.dlq_by_reason.get("validation", 0) == audit.invalid


def test_a_rolling_restart_of_all_three_nodes(cluster: str) -> None:
    pipeline = _pipeline()

    def failures(_transactional_id: str) -> None:
        for node in (1, 2, 3):
            _bounce(node)
            wait_until_in_sync([pipeline.settings.orders_topic])

    consumer, audit = _run_under(pipeline, failures)

    assert audit.exact, f"{audit.describe()}; restarts after: {consumer.failures}"
    assert audit.orders == ORDERS


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
