"""Helpers for tests against the real Kafka broker and schema registry (fixtures are in conftest.py).

Every test gets its own topics and consumer group (a random prefix), so tests never
see each other's records. Waits poll a condition until a deadline, never a bare sleep.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from config import Settings, load_settings
from orderpipe.core.routing import Decision
from orderpipe.errors import OrderPipeError
from orderpipe.kafka.messages import incoming
from orderpipe.kafka.registry import connect_registry
from orderpipe.model.order import ValidOrder
from orderpipe.observe.console import QUIET, Console
from orderpipe.programs.consumer_app import ConsumerOptions, OrderConsumer
from tests.audit import Audit, audit_topics, pipeline_env
from tests.clients import client_config

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REGISTRY_URL = os.environ.get("TEST_SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7")
START_HINT = "start them with 'scripts/broker.sh up' (scripts/test.sh does it for you)"


def new_pipeline(broker: str) -> Pipeline:
    """Private topics and a private group for one test."""
    return Pipeline(pipeline_env(broker, f"it-{uuid.uuid4().hex[:10]}"))


@dataclass(frozen=True)
class Record:
    """A record read back from a topic."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    header_names: tuple[str, ...]  # in order, with any repeats

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Pipeline:
    """One test's private topics and group, as environment variables and as Settings."""

    env: dict[str, str]
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = load_settings(environ=self.env, env_file=None)

    def with_env(self, **extra: str) -> Pipeline:
        return Pipeline({**self.env, **extra})

    def run(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs producer.py or consumer.py as a user would, with this test's settings."""
        return subprocess.run(
            [sys.executable, script, *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, script: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, script, *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def produce(self, records: list[tuple[bytes | None, bytes, list[tuple[str, str | bytes | None]]]]) -> list[Message]:
        """Produces (key, value, headers) records to the orders topic; returns the acknowledged messages."""
        producer = Producer(client_config(self.settings.bootstrap_servers, {"acks": "all"}))
        acked: list[Message] = []
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(error)
            else:
                acked.append(message)

        for key, value, headers in records:
            producer.produce(self.settings.orders_topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
        assert producer.flush(30) == 0
        assert not errors, errors
        return acked

    def committed(self) -> int:
        """The offsets the consumer group committed on the orders topic, summed over partitions."""
        reader = Consumer(client_config(self.settings.bootstrap_servers, {"group.id": self.settings.consumer_group}))
        try:
            topic = self.settings.orders_topic
            partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
            committed = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
            return sum(max(tp.offset, 0) for tp in committed)
        finally:
            reader.close()

    def read(self, topic: str, at_least: int = 0, timeout: float = 30.0) -> list[Record]:
        """Every committed record of a topic, waiting until there are at least `at_least`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                records = read_topic(self.settings.bootstrap_servers, topic)
            except KafkaException:  # a topic created a moment ago may have no leader yet
                records = []
            if len(records) >= at_least or time.monotonic() > deadline:
                return records
            time.sleep(0.2)


def read_topic(bootstrap: str, topic: str, login: dict[str, Any] | None = None) -> list[Record]:
    """Reads a topic from the beginning up to its last stable offset as of now (read_committed).

    Ends are judged by the reader's position, which moves past transaction markers
    and aborted records, not by the offsets of the records it returns. `login`: the
    client settings a secured broker needs.
    """
    reader = Consumer(
        client_config(
            bootstrap,
            {
                **(login or {}),
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    try:
        metadata = reader.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            return []
        # A read_committed client's watermark query answers the last stable offset.
        ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions}
        pending = {p for p, end in ends.items() if end > 0}
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        records: list[Record] = []
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for message in reader.consume(1000, 0.2):
                if message.error() is not None:
                    continue
                got = incoming(message)
                headers = {k: v.decode() for k, v in got.headers}
                names = tuple(k for k, _ in got.headers)
                records.append(
                    Record(topic, got.partition, got.offset, got.timestamp, got.key, got.value, headers, names)
                )
            for position in reader.position([TopicPartition(topic, p) for p in pending]):
                if position.offset >= ends[position.partition]:
                    pending.discard(position.partition)
        assert not pending, f"could not read {topic} to its end"
        return records
    finally:
        reader.close()


def read_until(process: subprocess.Popen[str], prefix: str, count: int) -> None:
    """Reads a program's output until `count` lines started with `prefix`.

    Bounded by the test timeout; fails at once if the program exits first.
    """
    assert process.stdout is not None
    seen = 0
    while seen < count:
        line = process.stdout.readline()
        assert line, f"{process.args!r} exited before {count} lines starting {prefix!r}"
        seen += line.startswith(prefix)


class Output:
    """A program's output (`lines`) and error output (`errors`), read in the background so it never blocks on a pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stdout, self.lines), daemon=True)
        self._thread.start()
        if process.stderr is not None:
            threading.Thread(target=self._read, args=(process.stderr, self.errors), daemon=True).start()

    @staticmethod
    def _read(stream: io.TextIOBase, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def count(self, prefix: str) -> int:
        """How many lines starting with `prefix` were printed so far."""
        return sum(1 for line in list(self.lines) if line.startswith(prefix))

    def wait_for_line(self, prefix: str, timeout: float = 60.0, at_least: int = 1) -> None:
        """Waits until `at_least` lines starting with `prefix` were printed; fails if the program exits first."""

        def seen() -> bool:
            if self.count(prefix) >= at_least:
                return True
            assert self.process.poll() is None or self._thread.is_alive(), (
                f"{self.process.args!r} exited before {at_least} lines starting {prefix!r}:\n{''.join(self.lines)}"
            )
            return False

        wait_for(seen, timeout, f"{at_least} lines starting {prefix!r}")

    def text(self, timeout: float = 240.0) -> str:
        """All of the output, once the program has exited."""
        self.process.wait(timeout)
        self._thread.join(timeout)
        return "".join(self.lines)


def holds_for(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition` stays true while it is polled for `seconds` (False as soon as it does not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.02)
    return bool(condition())


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Polls until `condition()` is truthy and returns it; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Running:
    """A consumer running in a thread of the test process, and what it decided."""

    consumer: OrderConsumer
    decisions: list[tuple[float, Decision]]


@contextmanager
def running_consumer(
    settings: Settings,
    downstream: Callable[[ValidOrder], None] = lambda _order: None,
    decisions: list[tuple[float, Decision]] | None = None,
) -> Iterator[Running]:
    """Runs the real consumer loop in a thread; stops it cleanly when the block ends.

    Several consumers may share one `decisions` list to see the group's decisions together.
    """
    decisions = [] if decisions is None else decisions
    consumer = OrderConsumer(
        settings,
        ConsumerOptions(),
        Console(QUIET, out=io.StringIO()),
        downstream,
        on_decision=lambda decision: decisions.append((time.time(), decision)),
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, name="order-consumer", daemon=True)
    thread.start()
    try:
        yield Running(consumer, decisions)
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the consumer did not stop within 30 s"
        assert not failures, failures


PRODUCER_SUMMARY = re.compile(
    r"Producer summary: sent (?P<sent>\d+) orders \(valid (?P<valid>\d+), invalid (?P<invalid>\d+), "
    r"poison (?P<poison>\d+)\), delivered (?P<delivered>\d+), failed (?P<failed>\d+); "
    r"valid orders total \$(?P<total>[\d,]+\.\d\d)"
)
CONSUMER_SUMMARY = re.compile(
    r"Consumer summary: processed (?P<processed>\d+), retried (?P<retried>\d+), dead-lettered (?P<dlq>\d+) "
    r"\(deserialization (?P<deserialization>\d+), validation (?P<validation>\d+), "
    r"retries-exhausted (?P<exhausted>\d+)\); running average (?P<average>\S+) over (?P<count>\d+) orders"
)


def summary(pattern: re.Pattern[str], output: str) -> dict[str, str]:
    match = pattern.search(output)
    assert match, f"no summary line in:\n{output}"
    return match.groupdict()


def audit(pipeline: Pipeline) -> Audit:
    """The independent account of the pipeline's topics (tests/audit.py)."""
    return audit_topics(pipeline.read, pipeline.settings)


# The wire formats of docs/wire-formats.md, as a user chooses each: with a registry, without
# one, and bare bodies (which need the writer schema named).
WIRE_FORMATS = ("single-object", "confluent", "raw")
RAW_WRITER_SCHEMA = "schemas/order-v2.avsc"


def wire_format_env(wire: str, registry_url: str) -> dict[str, str]:
    """The settings a user gives for one of WIRE_FORMATS."""
    return {
        "single-object": {},
        "confluent": {"SCHEMA_REGISTRY_URL": registry_url},
        "raw": {"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": RAW_WRITER_SCHEMA},
    }[wire]


def written_in(wire: str, value: bytes | None) -> bool:
    """Whether a record's value starts as the wire format says (bare bodies have no header)."""
    head = (value or b"")[:2]
    if wire == "single-object":
        return head == b"\xc3\x01"
    if wire == "confluent":
        return head[:1] == b"\x00"
    return head != b"\xc3\x01" and head[:1] != b"\x00"


def partition_counts(bootstrap: str, names: Collection[str]) -> dict[str, int]:
    """The partition counts of those of `names` that exist, from metadata that names no topic (so creates none)."""
    client = AdminClient(client_config(bootstrap))
    topics = client.list_topics(timeout=10).topics
    return {name: len(topics[name].partitions) for name in names if name in topics}


@dataclass(frozen=True)
class Drained:
    """A producer run and then a consumer run to idle, as a user runs them, and the audit after."""

    produced: dict[str, str]
    consumed: dict[str, str]
    audit: Audit


def produce_then_consume(pipeline: Pipeline, count: int, idle_exit_s: int, timeout: float = 180) -> Drained:
    """`producer.py --count N --rate 0`, then `consumer.py --idle-exit S`; both must exit 0 and deliver everything."""
    sent = pipeline.run("producer.py", "--count", str(count), "--rate", "0", "--quiet", timeout=timeout)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    produced = summary(PRODUCER_SUMMARY, sent.stdout)
    assert (produced["delivered"], produced["failed"]) == (str(count), "0"), sent.stdout
    drained = pipeline.run("consumer.py", "--idle-exit", str(idle_exit_s), "--quiet", timeout=timeout)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "Traceback" not in drained.stderr, drained.stderr
    return Drained(produced, summary(CONSUMER_SUMMARY, drained.stdout), audit(pipeline))


def require_registry(why: str) -> str:
    """The schema registry of scripts/broker.sh up, or the test fails saying `why` it is needed."""
    try:
        with connect_registry(load_settings({"SCHEMA_REGISTRY_URL": REGISTRY_URL}, environ={}, env_file=None)):
            pass
    except OrderPipeError as exc:
        pytest.fail(f"{exc} {why}: start it with 'scripts/broker.sh up'.")
    return REGISTRY_URL
