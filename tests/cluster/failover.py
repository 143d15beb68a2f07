"""The broker-failure scenarios, run on the three-node cluster with the programs as a user runs them.

One run: consumer.py starts (no supervisor), producer.py sends ORDERS at RATE, and
after a few seconds a scenario SIGKILLs nodes and starts them again with their data.
Every exit of a program other than 0, and every death by a signal, is the run's
failure (tests/cluster/programs.py tells them with backtraces). When the consumer
did end early, a second consumer.py drains the topics, so that the audit after
still says whether anything was lost or written twice. The figures: the audit, and
each order's latency from its record's timestamp to the commit of its batch, for
orders sent before the failures and while a node was down.

tests/cluster/test_broker_failures.py asserts on a run; bench/failover.py repeats
runs and counts.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from orderpipe.config.settings import Settings
from tests.audit import Audit, pipeline_env
from tests.cluster.helpers import (
    BOOTSTRAP,
    active_controller,
    audit_when_closed,
    cluster_script,
    commit_latencies,
    coverage,
    describe_latencies,
    leaders,
    stats_commits,
    transaction_coordinator,
    wait_until_in_sync,
)
from tests.cluster.programs import Program
from tests.integration.helpers import PRODUCER_SUMMARY, Pipeline

__all__ = [
    "ORDERS",
    "SCENARIOS",
    "Ending",
    "FailoverRun",
    "Outages",
    "bounce",
    "cluster_pipeline",
    "run_scenario",
    "started",
]

ORDERS = 20_000
RATE = 800  # orders per second: the run lasts about 25 s
DOWN_S = 4.0  # how long a killed node stays down
WARM_UP_S = 5.0  # the run gets going before the first failure
CONSUMER_ARGS = ("--idle-exit", "15", "--failure-rate", "0.05", "--quiet")
# librdkafka's consumer-group log, for a run whose consumer log is kept (run_scenario's `keep_log`).
GROUP_DEBUG = "debug=cgrp\n"
PRODUCER_WAIT_S = 300
CONSUMER_WAIT_S = 300
LOG_TAIL = 20_000  # characters of the consumer's error output kept for a run whose audit is not exact

# When nodes were down: (killed, answering again), epoch ms, as order timestamps are.
Outages = list[tuple[int, int]]
# A scenario: given the pipeline and the consumer's transactional id, kills and restarts nodes.
Scenario = Callable[[Pipeline, str, Outages], None]


def cluster_pipeline(partitions: int = 3) -> Pipeline:
    """Private topics and group on the cluster, replicated 3 (min ISR 2 follows)."""
    env = pipeline_env(BOOTSTRAP, f"cl-{uuid.uuid4().hex[:8]}")
    return Pipeline({**env, "REPLICATION_FACTOR": "3", "ORDERS_PARTITIONS": str(partitions)})


def bounce(node: int, outages: Outages) -> None:
    """SIGKILL a node, leave it down DOWN_S, start it again with its data."""
    cluster_script("kill", str(node))
    killed = time.time_ns() // 1_000_000
    try:
        time.sleep(DOWN_S)  # the outage itself, not a wait for a condition
    finally:
        cluster_script("start", str(node))
    outages.append((killed, time.time_ns() // 1_000_000))


def _leader(pipeline: Pipeline, _transactional_id: str, outages: Outages) -> None:
    bounce(leaders(pipeline.settings.orders_topic).most_common(1)[0][0], outages)


def _coordinator(_pipeline: Pipeline, transactional_id: str, outages: Outages) -> None:
    bounce(transaction_coordinator(transactional_id), outages)


def _controller(_pipeline: Pipeline, _transactional_id: str, outages: Outages) -> None:
    bounce(active_controller(), outages)


def _rolling(pipeline: Pipeline, _transactional_id: str, outages: Outages) -> None:
    for node in (1, 2, 3):
        bounce(node, outages)
        wait_until_in_sync([pipeline.settings.orders_topic])


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "leader": ("the leader of most orders partitions killed", _leader),
    "coordinator": ("the consumer's transaction coordinator killed", _coordinator),
    "controller": ("the active controller killed", _controller),
    "rolling": ("a rolling restart of all three nodes", _rolling),
}


class Ending(NamedTuple):
    """A program's exit other than 0, or its death by a signal (code < 0), told in full."""

    program: str  # "consumer", "producer", or "drain" (the consumer that drained after one ended early)
    code: int
    told: str


def ending(name: str, program: Program) -> list[Ending]:
    failure = program.failure()
    return [] if failure is None else [Ending(name, program.process.returncode, failure)]


@dataclass
class FailoverRun:
    """What one run showed."""

    scenario: str
    endings: list[Ending]
    audit: Audit
    delivered: int  # orders the producer says were acknowledged
    before: list[int] = field(default_factory=list)  # latency to commit (ms), orders sent before the failures
    during: list[int] = field(default_factory=list)  # the same, orders sent while a node was down
    drained: bool = False  # a second consumer.py drained the topics after the first ended early
    consumer_log: str = ""  # the end of the consumer's error output: its warnings, with their times
    # The written topics' partitions with a transaction open once the programs had ended, and how long
    # the audit waited for them to close.
    open: dict[str, tuple[int, int]] = field(default_factory=dict)
    closed_after_s: float = 0.0
    # For the first orders neither counted nor dead-lettered: whether a committed stats value passed them.
    missing: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"{ended.program}: {ended.told}" for ended in self.endings]

    @property
    def lost(self) -> int:
        """Orders acknowledged to the producer that are neither counted nor dead-lettered."""
        short = self.audit.expected.count - self.audit.stats.count
        return self.audit.missing + max(short, 0) + max(self.delivered - self.audit.orders, 0)

    @property
    def duplicated(self) -> int:
        """Orders written to `orders`, dead-lettered, retried or counted more than once.

        The consumer counts each record, so an order the producer wrote twice is counted
        twice too: that is one duplicate, the producer's, not two.
        """
        written_twice = self.audit.order_duplicates
        counted_twice = self.audit.stats.count - self.audit.expected.count - written_twice
        return self.audit.dlq_duplicates + self.audit.retry_duplicates + written_twice + max(counted_twice, 0)

    @property
    def longest_wait_ms(self) -> int | None:
        """The longest an order sent while a node was down waited for its commit."""
        return max(self.during) if self.during else None

    def figures(self) -> list[str]:
        return [
            f"audit: {self.audit.describe()}",
            f"lost {self.lost}, duplicated {self.duplicated}"
            + (" (drained by a second consumer)" if self.drained else ""),
            f"latency to commit, orders sent before the failures: {describe_latencies(self.before)}",
            f"latency to commit, orders sent while a node was down: {describe_latencies(self.during)}",
            f"program failures: {len(self.failures)}",
            f"transactions open once the programs ended: {self.describe_open()}",
        ] + ([] if self.audit.exact else [*self.missing, "the consumer's warnings (their end):", self.consumer_log])

    def describe_open(self) -> str:
        """The partitions with a transaction open when the programs had ended, and when they closed."""
        if not self.open:
            return "none"
        named = ", ".join(f"{name} (stable {stable}, end {end})" for name, (stable, end) in self.open.items())
        return f"{named}; all closed {self.closed_after_s:.1f}s later, before the audit read"


def _delivered(producer: Program) -> int:
    match = PRODUCER_SUMMARY.search("".join(producer.output.lines))
    return int(match["delivered"]) if match else 0


def started(program: Program, timeout: float = 60) -> None:
    """Waits for the consumer's "Consuming" line; if it ends first, fails with how it ended."""
    try:
        program.output.wait_for_line("Consuming", timeout)
    except AssertionError:
        program.finish(30)
        raise AssertionError(program.failure() or "".join(program.output.lines)) from None


def run_scenario(pipeline: Pipeline, scenario: str, keep_log: Path | None = None) -> FailoverRun:
    """One run of a scenario (a key of SCENARIOS); the cluster is left with every node up.

    With `keep_log`, the consumer runs with --verbose and librdkafka's consumer-group
    log (GROUP_DEBUG, through a KAFKA_CLIENT_CONFIG file beside it), and its whole
    stderr is written to `keep_log`: the evidence to attribute a run that went wrong.
    """
    _, failures = SCENARIOS[scenario]
    programs: list[Program] = []
    consumer_args: tuple[str, ...] = CONSUMER_ARGS
    if keep_log is not None:
        properties = keep_log.with_suffix(".properties")
        properties.write_text(GROUP_DEBUG)
        pipeline = pipeline.with_env(KAFKA_CLIENT_CONFIG=str(properties))
        consumer_args = (*(arg for arg in CONSUMER_ARGS if arg != "--quiet"), "--verbose")
    try:
        consumer = Program(pipeline, "consumer.py", *consumer_args)
        programs.append(consumer)
        started(consumer)
        transactional_id = re.search(r"transactional id (\S+)\)", "".join(consumer.output.lines))
        assert transactional_id is not None, "".join(consumer.output.lines)
        producer = Program(
            pipeline, "producer.py", "--count", str(ORDERS), "--rate", str(RATE), "--invalid-rate", "0.05", "--quiet"
        )
        programs.append(producer)
        time.sleep(WARM_UP_S)  # let the run get going before the first failure
        outages: Outages = []
        try:
            failures(pipeline, transactional_id.group(1), outages)
        finally:
            cluster_script("up")  # every node running, whatever happened
        producer.finish(PRODUCER_WAIT_S)
        consumer.finish(CONSUMER_WAIT_S)
        ended = ending("producer", producer) + ending("consumer", consumer)
        drained = consumer.process.returncode != 0
        if drained:  # what the first consumer left, so that the audit can judge loss and duplicates
            drain = Program(pipeline, "consumer.py", *consumer_args)
            programs.append(drain)
            drain.finish(CONSUMER_WAIT_S)
            ended += ending("drain", drain)
        wait_until_in_sync([pipeline.settings.orders_topic])
        settings = pipeline.settings
        audit, was_open, closed_after = audit_when_closed(settings)
        before, during = split_latencies(settings, outages)
        log = consumer.errors(LOG_TAIL)
        missing = coverage(stats_commits(settings), audit.missing_at, settings.orders_topic) if audit.missing else []
        return FailoverRun(
            scenario, ended, audit, _delivered(producer), before, during, drained, log, was_open, closed_after, missing
        )
    finally:
        for program in programs:
            program.stop_if_running()
        if keep_log is not None:
            consumers = [p for p in programs if p.label.startswith("consumer.py")]
            keep_log.write_text("".join(f"== {p.label}\n{''.join(p.output.errors)}" for p in consumers))


def split_latencies(settings: Settings, outages: Outages) -> tuple[list[int], list[int]]:
    """Latencies to commit (ms) of the orders sent before the first outage, and of those sent during one."""
    latencies = commit_latencies(settings)
    if not outages:
        return [latency for _, latency in latencies], []
    before = [latency for at, latency in latencies if at < outages[0][0]]
    during = [latency for at, latency in latencies if any(start <= at <= end for start, end in outages)]
    return before, during
