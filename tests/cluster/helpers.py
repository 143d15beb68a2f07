"""The local three-node cluster as the failure tests see it (`scripts/broker.sh cluster up`).

Nodes are killed with SIGKILL and started again with their data through the same
script a person would use. Which node to kill is found as Kafka finds it: the leader
of most `orders` partitions from the metadata, a transaction coordinator as the
leader of the `__transaction_state` partition its transactional id hashes to, and
the active controller as the KRaft quorum's leader (`scripts/broker.sh cluster controller`).
"""

from __future__ import annotations

import bisect
import json
import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    OffsetSpec,
    ResourceType,
)

from orderpipe.config.settings import Settings
from tests.audit import Audit, audit_topics
from tests.clients import client_config
from tests.integration.helpers import Record, read_topic

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = "127.0.0.1:29091,127.0.0.1:29092,127.0.0.1:29093"
START_HINT = "start it with 'scripts/broker.sh cluster up' (scripts/test.sh does it for you)"
TRANSACTION_STATE_PARTITIONS = 50  # the broker's transaction.state.log.num.partitions


def cluster_script(*args: str) -> str:
    """scripts/broker.sh cluster ARGS, failing the test if it fails; its output."""
    script = [str(ROOT / "scripts" / "broker.sh"), "cluster", *args]
    result = subprocess.run(script, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def active_controller() -> int:
    return int(cluster_script("controller").strip())


def set_min_isr(topics: list[str], value: int) -> None:
    """Sets min.insync.replicas on `topics`, as kafka-configs.sh --alter would."""
    entry = [ConfigEntry("min.insync.replicas", str(value), incremental_operation=AlterConfigOpType.SET)]
    resources = [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entry) for topic in topics]
    client = admin()
    for future in client.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def admin() -> AdminClient:
    return AdminClient(client_config(BOOTSTRAP))


def leaders(topic: str) -> Counter[int]:
    """How many partitions of `topic` each node leads."""
    metadata = admin().list_topics(topic, timeout=10).topics[topic]
    return Counter(p.leader for p in metadata.partitions.values() if p.leader >= 0)


def _java_hash(text: str) -> int:
    h = 0
    for char in text:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    return h


def transaction_coordinator(transactional_id: str) -> int:
    """The node that coordinates a transactional id's transactions (Kafka: abs(hashCode) % partitions)."""
    partition = (_java_hash(transactional_id) & 0x7FFFFFFF) % TRANSACTION_STATE_PARTITIONS
    metadata = admin().list_topics("__transaction_state", timeout=10).topics["__transaction_state"]
    return int(metadata.partitions[partition].leader)


def wait_until_in_sync(topics: list[str], replicas: int = 3, timeout: float = 120) -> None:
    """Waits until every partition of `topics` has a leader and `replicas` replicas in sync (by default all)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin().list_topics(timeout=10).topics
        others = [
            f"{t}-{p}"
            for t in topics
            for p, m in metadata[t].partitions.items()
            if len(m.isrs) != replicas or m.leader < 0
        ]
        if not others:
            return
        assert time.monotonic() < deadline, f"not {replicas} replicas in sync within {timeout}s: {others}"
        time.sleep(0.5)


def open_transactions(topics: list[str]) -> dict[str, tuple[int, int]]:
    """Partitions whose last stable offset is behind their end: a transaction on them is still open.

    Read_committed readers (the audit among them) see nothing past the last stable
    offset, so an audit that finds records missing names these first. Keyed
    "topic-partition": (last stable offset, end offset).
    """
    client = admin()
    metadata = client.list_topics(timeout=10).topics
    partitions = [TopicPartition(t, p) for t in topics if t in metadata for p in metadata[t].partitions]
    if not partitions:
        return {}

    def ends(isolation: IsolationLevel) -> dict[tuple[str, int], int]:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        asked = client.list_offsets(dict.fromkeys(partitions, latest), isolation_level=isolation)
        return {(tp.topic, tp.partition): future.result(timeout=30).offset for tp, future in asked.items()}

    stable, end = ends(IsolationLevel.READ_COMMITTED), ends(IsolationLevel.READ_UNCOMMITTED)
    return {f"{t}-{p}": (stable[t, p], end[t, p]) for (t, p) in sorted(end) if stable[t, p] < end[t, p]}


def wait_until_closed(topics: list[str], timeout: float = 120) -> tuple[dict[str, tuple[int, int]], float]:
    """Waits until no partition of `topics` has a transaction open, as an audit must before it reads.

    A transaction's commit returns to its producer once the coordinator has logged
    the decision; the markers that make its records readable reach each partition
    after that. Returns what was open at the first look and the seconds until all
    closed; fails if some stay open past `timeout`.
    """
    began = time.monotonic()
    first = still_open = open_transactions(topics)
    while still_open:
        assert time.monotonic() - began < timeout, f"transactions still open after {timeout}s: {still_open}"
        time.sleep(0.5)
        still_open = open_transactions(topics)
    return first, time.monotonic() - began


def audit_when_closed(settings: Settings) -> tuple[Audit, dict[str, tuple[int, int]], float]:
    """The audit of a pipeline whose programs ended, read once no topic the consumer writes has a transaction open.

    The audit reads to the last stable offsets, so it waits for the markers of the
    consumer's last commits first, else it would miss what they committed. Returns
    the audit and what `wait_until_closed` saw.
    """
    was_open, closed_after = wait_until_closed([settings.stats_topic, settings.dlq_topic, settings.retry_topic])
    return audit_topics(lambda topic: read_topic(BOOTSTRAP, topic), settings), was_open, closed_after


# What commit_latencies and coverage read of `orders-stats`: per `orders` partition, each committed
# value in order, as (next_offset, the stats record).
Commits = dict[int, list[tuple[int, Record]]]


def stats_commits(settings: Settings) -> Commits:
    """The committed `orders-stats` values of each `orders` partition (retry partitions' keys aside)."""
    key_of_orders = re.compile(re.escape(f"{settings.consumer_group}/{settings.orders_topic}-") + r"([0-9]+)")
    commits: Commits = defaultdict(list)
    for record in read_topic(BOOTSTRAP, settings.stats_topic):
        key = key_of_orders.fullmatch((record.key or b"").decode(errors="replace"))
        if key is not None and record.value:
            commits[int(key.group(1))].append((int(json.loads(record.value)["next_offset"]), record))
    return commits


def commit_latencies(settings: Settings) -> list[tuple[int, int]]:
    """(timestamp, latency) in ms of every order: from its record's timestamp to the commit of its batch.

    A batch's commit is where the stats record of its partition was written, in the
    same transaction: the first committed `orders-stats` value of the partition whose
    `next_offset` is past the order's offset. Its timestamp is when the consumer
    produced it, a few milliseconds before the commit.
    """
    covered = stats_commits(settings)
    reaches = {partition: [next_offset for next_offset, _ in commits] for partition, commits in covered.items()}
    latencies = []
    for order in read_topic(BOOTSTRAP, settings.orders_topic):
        commits = covered.get(order.partition, [])
        index = bisect.bisect_right(reaches.get(order.partition, []), order.offset)
        if index < len(commits):
            latencies.append((order.timestamp, commits[index][1].timestamp - order.timestamp))
    return latencies


def coverage(commits: Commits, places: Sequence[tuple[int, int, int]], topic: str) -> list[str]:
    """For orders of `topic` at (partition, offset, records on the retry topic): the first commit past each.

    A missing order that a committed value covers was passed over by the consumer's
    position; one that none covers was not committed as far as the audit could read.
    """
    told = []
    for partition, offset, retried in places:
        ordered = commits.get(partition, [])
        index = bisect.bisect_right([next_offset for next_offset, _ in ordered], offset)
        where = f"{topic}-{partition}@{offset} ({retried} on the retry topic)"
        if index < len(ordered):
            next_offset, record = ordered[index]
            before = ordered[index - 1][0] if index else 0
            told.append(
                f"{where}: committed past by the stats value at offset {record.offset} (next_offset {before} -> "
                f"{next_offset}, written at {record.timestamp} ms)"
            )
        else:
            last = ordered[-1][0] if ordered else None
            told.append(f"{where}: no committed stats value reaches it (the last reaches {last})")
    return told


def describe_latencies(latencies: list[int]) -> str:
    """p50, p99 and max of some latencies, in ms."""
    if not latencies:
        return "none"
    ordered = sorted(latencies)

    def at(fraction: float) -> int:
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]

    return f"p50 {at(0.5)} ms, p99 {at(0.99)} ms, max {ordered[-1]} ms over {len(ordered)} orders"
