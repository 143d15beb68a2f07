"""dlq.py end to end on librdkafka's mock cluster (list, replay, --dry-run, exit codes), and the whole-topic
reader's error paths with a stand-in consumer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from orderpipe.config.settings import build_settings
from orderpipe.core.replay import ledger_topic
from orderpipe.errors import BrokerUnavailableError, ConfigError
from orderpipe.kafka import reader as kafka_reader
from orderpipe.kafka.reader import read_to_end
from orderpipe.model.order import Order
from orderpipe.programs.cli import dlq_main
from orderpipe.serde.schemas import load_order_schema
from tests.terminal import ESC, screen
from tests.unit.mock_cluster import MockCluster
from tests.unit.programs.test_programs_mock import loader, on_a_terminal

SCHEMA = load_order_schema()


def _dead_letters(mock_cluster: MockCluster, env: Mapping[str, str]) -> None:
    producer = Producer({"bootstrap.servers": mock_cluster.bootstrap})
    for n, reason in enumerate((b"validation", b"retries-exhausted", b"retries-exhausted")):
        value = SCHEMA.encode_single_object(Order(f"O-{n}", "Lamp", 2.5))
        producer.produce(env["DLQ_TOPIC"], value, f"O-{n}".encode(), partition=0, headers=[("dlq.reason", reason)])
    assert producer.flush(10) == 0


def test_list_and_replay_from_the_command_line(mock_cluster: MockCluster, capsys: pytest.CaptureFixture[str]) -> None:
    env = mock_cluster.env()
    mock_cluster.create_topic(ledger_topic(env["DLQ_TOPIC"]))
    _dead_letters(mock_cluster, env)
    load = loader(env)

    assert dlq_main(load, ["list", "--json", "--reason", "retries-exhausted"]) == 0
    *entries, summary = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["order_id"] for line in entries] == ["O-1", "O-2"]
    assert summary == "2 dead letters (retries-exhausted 2)"

    assert dlq_main(load, ["replay", "--reason", "retries-exhausted", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "would replay 2 records"
    assert lines[0].startswith(f"would replay {env['DLQ_TOPIC']}-0@1 retries-exhausted order O-1")

    assert dlq_main(load, ["replay", "--since", "1h", "--batch-size", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "replayed 3 records"
    assert sum(line.startswith("↻ replayed ") for line in lines) == 3

    assert dlq_main(load, ["replay", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "3 matching records were replayed before and are skipped",
        "replayed 0 records",
    ]


def test_list_on_a_terminal_draws_a_table_with_the_count_under_it_and_json_stays_json(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = mock_cluster.env()
    _dead_letters(mock_cluster, env)
    load = loader(env)
    terminal = on_a_terminal(monkeypatch)
    assert dlq_main(load, ["list"]) == 0
    lines = [line for line in screen(terminal.getvalue()) if line]
    assert lines[0] == env["DLQ_TOPIC"]
    assert lines[1].split() == ["partition@offset", "reason", "order", "id", "failed", "at", "error"]
    assert [line.split()[:3] for line in lines[3:6]] == [
        ["0@0", "validation", "O-0"],
        ["0@1", "retries-exhausted", "O-1"],
        ["0@2", "retries-exhausted", "O-2"],
    ]
    assert lines[-1] == "3 dead letters (retries-exhausted 2, validation 1)"

    terminal.seek(0)
    terminal.truncate()
    assert dlq_main(load, ["list", "--json"]) == 0
    assert ESC not in terminal.getvalue().encode()
    assert [json.loads(line)["order_id"] for line in terminal.getvalue().splitlines()[:3]] == ["O-0", "O-1", "O-2"]


def test_a_bad_since_is_named_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert dlq_main(loader({}), ["replay", "--since", "soon"]) == 2
    assert "--since expects a duration" in capsys.readouterr().err


class _Message:
    def __init__(self, error: KafkaError | None, offset: int = 0) -> None:
        self._error, self._offset = error, offset

    def error(self) -> KafkaError | None:
        return self._error

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Partitions:
    def __init__(self) -> None:
        self.partitions = {0: None}
        self.error = None


class _Reader:
    """A consumer whose topic has one record at offset 0 and whose fetches bring the given errors."""

    def __init__(self, errors: list[KafkaError]) -> None:
        self._errors = errors
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        return type("Metadata", (), {"topics": {topic: _Partitions()}})()

    def get_watermark_offsets(self, _tp: Any, timeout: float) -> tuple[int, int]:
        return 0, 1

    def assign(self, _partitions: Any) -> None:
        pass

    def consume(self, _count: int, _timeout: float) -> list[_Message]:
        return [_Message(error) for error in self._errors]

    def position(self, partitions: list[Any]) -> list[Any]:
        return [type("Position", (), {"partition": 0, "offset": 0})() for _ in partitions]

    def close(self) -> None:
        self.closed = True


def _read_with(monkeypatch: pytest.MonkeyPatch, errors: list[KafkaError]) -> _Reader:
    reader = _Reader(errors)
    monkeypatch.setattr(kafka_reader, "create_client", lambda _factory, _conf: reader)
    monkeypatch.setattr(kafka_reader, "READ_TIMEOUT_S", 0.0)
    return reader


def test_the_reader_needs_no_group_and_names_a_refused_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build_settings({})
    reader = _read_with(monkeypatch, [KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)])
    with pytest.raises(BrokerUnavailableError, match=r"stopped before its end for 0s \(partitions \[0\]\)"):
        list(read_to_end(settings, "t", "r"))
    assert reader.closed
    _read_with(monkeypatch, [KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(ConfigError, match="READ on topic t"):
        list(read_to_end(settings, "t", "r"))
    _read_with(monkeypatch, [KafkaError(KafkaError._TRANSPORT)])
    with pytest.raises(BrokerUnavailableError, match="could not read t"):
        list(read_to_end(settings, "t", "r"))
