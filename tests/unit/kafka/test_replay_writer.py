"""The replay's transactional producer, from a stand-in producer: Kafka's errors as the project's own sentences."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from orderpipe.config.settings import build_settings
from orderpipe.core.replay import Replayed
from orderpipe.errors import BrokerUnavailableError, ConfigError, FatalKafkaError
from orderpipe.kafka.replay_writer import ReplayWriter
from orderpipe.model.records import Incoming
from tests.audit import pipeline_env

SETTINGS = build_settings(pipeline_env("localhost:9092", "replay-writer"))
LEDGER = "orders-dlq.replay-ledger"
RECORD = (Incoming(SETTINGS.dlq_topic, 0, 7, 1000, b"O-1", b"value", ()), Replayed(b"O-1", b"value", (), 0))


def _failure(code: int, *, fatal: bool = False, retriable: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, fatal=fatal, retriable=retriable))


class FakeProducer:
    """Fails each transactional call named in `failures` with its errors in turn, then succeeds."""

    def __init__(self, **failures: list[KafkaException]) -> None:
        self.failures, self.polled = failures, 0.0
        self.calls: list[str] = []
        self.produced: list[tuple[str, bytes | None]] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failures.get(name):
            raise self.failures[name].pop(0)

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def produce(self, topic: str, key: bytes | None = None, **_: Any) -> None:
        self.produced.append((topic, key))

    def poll(self, timeout: float) -> int:
        self.polled += timeout
        return 0


def _writer(producer: FakeProducer) -> ReplayWriter:
    return ReplayWriter(producer, SETTINGS, LEDGER, "replay-id")  # type: ignore[arg-type]


def test_a_retriable_failure_is_tried_again_polling_the_producer_in_between() -> None:
    producer = FakeProducer(begin=[_failure(KafkaError._TRANSPORT, retriable=True)])
    writer = _writer(producer)
    writer.write([RECORD])
    writer.write([])
    assert producer.calls == ["begin", "begin", "commit"]
    assert producer.polled == pytest.approx(0.1)
    assert producer.produced == [(SETTINGS.orders_topic, b"O-1"), (LEDGER, f"{SETTINGS.dlq_topic}:0:7".encode())]


def test_a_refusal_names_what_the_replay_needs() -> None:
    writer = _writer(FakeProducer(init=[_failure(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)]))
    with pytest.raises(ConfigError, match="Kafka refused to start transactions") as caught:
        writer.start()
    assert f"WRITE on transactional id replay-id, WRITE on topics {SETTINGS.orders_topic} and {LEDGER}" in str(
        caught.value
    )


def test_a_fenced_replay_says_another_one_started() -> None:
    writer = _writer(FakeProducer(init=[_failure(KafkaError._FENCED, fatal=True)]))
    with pytest.raises(FatalKafkaError, match=f"another dlq.py replay of {SETTINGS.dlq_topic} started"):
        writer.start()


def test_a_failed_commit_aborts_and_a_failed_abort_is_named() -> None:
    producer = FakeProducer(commit=[_failure(KafkaError.INVALID_CONFIG)])
    with pytest.raises(BrokerUnavailableError, match=r"^the replay stopped: could not commit the transaction"):
        _writer(producer).write([RECORD])
    assert producer.calls == ["begin", "commit", "abort"]
    producer = FakeProducer(commit=[_failure(KafkaError.INVALID_CONFIG)], abort=[_failure(KafkaError._TRANSPORT)])
    with pytest.raises(BrokerUnavailableError, match=r"^the replay stopped and could not abort its transaction"):
        _writer(producer).write([RECORD])
