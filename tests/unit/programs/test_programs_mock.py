"""producer.py and consumer.py end to end on librdkafka's mock cluster: flags, output, exit codes.

The mock cluster keeps no offsets sent with a transaction, so these runs prove the
programs' paths, not exactly-once across restarts (the twin and the real broker do).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from confluent_kafka import KafkaError, Message

from orderpipe.config.settings import Settings, build_settings
from orderpipe.core import replicas
from orderpipe.core.ports import InSync
from orderpipe.observe.console import QUIET, Console
from orderpipe.programs import producer_app
from orderpipe.programs.cli import consumer_main, producer_main
from orderpipe.programs.runtime import LoadSettings
from tests.terminal import ESC, FakeTerminal, screen, terminal_env
from tests.unit.mock_cluster import MockCluster

PRODUCED = re.compile(
    r"Producer summary: sent (\d+) orders \(valid (\d+), invalid (\d+), poison (\d+)\), delivered (\d+)"
)
CONSUMED = re.compile(
    r"Consumer summary: processed (\d+), retried (\d+), dead-lettered (\d+) \(deserialization (\d+), "
    r"validation (\d+), retries-exhausted (\d+)\)"
)


def loader(env: Mapping[str, str]) -> LoadSettings:
    """What config.load_settings does, with `env` as the whole environment."""

    def load(overrides: Mapping[str, str | None]) -> Settings:
        return build_settings({**env, **{k: v for k, v in overrides.items() if v is not None}})

    return load


@pytest.mark.slow
def test_orders_produced_are_processed_or_dead_lettered(
    mock_cluster: MockCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    load = loader(mock_cluster.env())
    flags = ["--count", "60", "--rate", "0", "--invalid-rate", "0.1", "--poison-rate", "0.1", "--seed", "4"]
    assert producer_main(load, flags) == 0
    sent, valid, invalid, poison, delivered = map(int, PRODUCED.findall(capsys.readouterr().out)[0])
    assert (sent, delivered) == (60, 60)

    consumer_flags = ["--idle-exit", "1", "--failure-rate", "0.2", "--seed", "2"]
    assert consumer_main(load, [*consumer_flags, "--verbose", "--report-latency"]) == 0
    out = capsys.readouterr().out
    processed, retried, _, deserialization, validation, exhausted = map(int, CONSUMED.findall(out)[0])
    assert (deserialization, validation) == (poison, invalid)
    assert processed + exhausted == valid
    assert retried > 0
    assert "✓ Processed: Order" in out
    assert "Latency: p50" in out

    assert consumer_main(load, ["--stats", "--verbose"]) == 0
    assert f"count {processed}," in capsys.readouterr().out


def test_a_quiet_producer_counts_deliveries_from_the_failures_reported_and_what_still_waits(
    mock_cluster: MockCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # Quiet and without metrics, librdkafka reports failures only: delivered is sent less failed and pending.
    flags = ["--count", "3000", "--rate", "0", "--quiet", "--seed", "5"]
    assert producer_main(loader(mock_cluster.env()), flags) == 0
    sent, *_, delivered = map(int, PRODUCED.findall(capsys.readouterr().out)[0])
    assert (sent, delivered) == (3000, 3000)

    publisher = producer_app._Publisher(mock_cluster.settings(), Console(QUIET))
    assert publisher._failures_only
    publisher._producer = UnacknowledgedProducer(rounds=1)  # type: ignore[assignment]  # 3 records wait
    publisher.summary.sent = 10
    failure = KafkaError(KafkaError._MSG_TIMED_OUT)
    publisher._delivered(failure, cast(Message, SimpleNamespace(key=lambda: b"O-1")))
    publisher._settle()
    assert (publisher.summary.delivered, publisher.summary.failed) == (6, 1)
    assert not producer_app._Publisher(mock_cluster.settings(), Console())._failures_only, "lines need reports"


def test_the_producer_keeps_its_rate_and_prints_each_order(
    mock_cluster: MockCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    load = loader(mock_cluster.env())
    assert producer_main(load, ["--count", "10", "--rate", "100", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("✓ Sent: Order") == 10
    assert "Throughput: 10 orders" in out


def on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> FakeTerminal:
    """From now on, stdout is a terminal of 120 columns, with a terminal emulator's environment.

    Called by the test itself: pytest puts its own capture back in sys.stdout after the fixtures.
    """
    out = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", out)
    for name in set(os.environ) - set(terminal_env(os.environ)):
        monkeypatch.delenv(name)
    for name, value in terminal_env({}, COLUMNS="120", LINES="40").items():
        monkeypatch.setenv(name, value)
    return out


def test_on_a_terminal_the_producer_draws_its_progress_then_prints_its_summary(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = loader(mock_cluster.env())
    terminal = on_a_terminal(monkeypatch)
    assert producer_main(load, ["--count", "500", "--rate", "0", "--seed", "1"]) == 0
    output = terminal.getvalue()
    assert ESC in output.encode()
    lines = [line for line in screen(output) if line]
    at = next(i for i, line in enumerate(lines) if line.endswith("100%"))
    assert lines[at + 1].startswith("sent 500 · acknowledged 500 of 500 · failed 0 · ")
    below = "".join(lines[at + 2 :])  # the lines after the progress, joined where the screen wrapped them
    assert PRODUCED.search(below)
    assert "Throughput: 500 orders" in below


def test_on_a_terminal_the_plain_flag_prints_the_plain_lines(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = loader(mock_cluster.env())
    terminal = on_a_terminal(monkeypatch)
    assert producer_main(load, ["--count", "5", "--rate", "0", "--plain"]) == 0
    output = terminal.getvalue()
    assert ESC not in output.encode()
    assert output.count("✓ Sent: Order") == 5
    assert output.splitlines()[-1].startswith("Throughput: 5 orders")


@pytest.mark.slow
def test_on_a_terminal_the_consumer_draws_its_panel_then_prints_its_summary(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = loader(mock_cluster.env())
    terminal = on_a_terminal(monkeypatch)
    assert producer_main(load, ["--count", "40", "--rate", "0", "--invalid-rate", "0.2", "--seed", "3", "--plain"]) == 0
    terminal.seek(0)
    terminal.truncate()
    assert consumer_main(load, ["--idle-exit", "1"]) == 0
    lines = [line for line in screen(terminal.getvalue(), lines=60) if line]
    text = "\n".join(lines)
    processed, _, dead, _, validation, _ = map(int, CONSUMED.findall(text)[0])
    assert f"processed        {processed}" in text
    assert f"dead-lettered    {dead} (deserialization 0, validation {validation}, retries-exhausted 0)" in text
    assert processed + validation == 40
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("Consumer summary:"))
    assert lines[summary_at - 1].startswith("╰"), "the panel's last drawing stays above the summary"


class UnacknowledgedProducer:
    """Stands for a producer whose last records wait for acknowledgements (`rounds` flushes of them)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def flush(self, _timeout: float) -> int:
        self.rounds -= 1
        return 3 if self.rounds > 0 else 0

    def __len__(self) -> int:
        return 3 if self.rounds > 0 else 0


class Answered:
    def __init__(self, in_sync: dict[tuple[str, int], int]) -> None:
        self._in_sync = in_sync

    def done(self) -> bool:
        return True

    def result(self) -> InSync:
        return InSync(self._in_sync, dict.fromkeys(self._in_sync, 3), {})


def _publisher(mock_cluster: MockCluster, rounds: int, in_sync: int) -> producer_app._Publisher:
    settings = mock_cluster.settings()
    publisher = producer_app._Publisher(settings, Console(QUIET))
    publisher._producer = UnacknowledgedProducer(rounds)  # type: ignore[assignment]
    publisher._replicas = replicas.ReplicaWatch(
        lambda: Answered({(settings.orders_topic, 0): in_sync}),
        {},
        2,
        doing="the producer keeps its orders and waits",
        report=lambda line: producer_app.log.warning("⚠ %s", line),
        monotonic=time.monotonic,
    )
    return publisher


def test_the_final_flush_waits_on_while_the_cluster_is_below_min_isr(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(producer_app, "FLUSH_TIMEOUT_S", 0.05)  # time for the question and its answer
    monkeypatch.setattr(replicas, "WAITING_AFTER_S", 0.0)
    assert _publisher(mock_cluster, rounds=100_000, in_sync=1)._flush(threading.Event()) == 0
    assert "fewer in-sync replicas than min.insync.replicas" in caplog.text
    assert "the producer keeps its orders and waits" in caplog.text


def test_the_final_flush_gives_up_after_its_timeout_when_the_replicas_are_in_sync(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(producer_app, "FLUSH_TIMEOUT_S", 0.05)
    monkeypatch.setattr(replicas, "WAITING_AFTER_S", 0.0)
    assert _publisher(mock_cluster, rounds=10**9, in_sync=3)._flush(threading.Event()) == 3
    assert "in-sync replicas" not in caplog.text


def test_after_a_stop_signal_the_final_flush_keeps_to_its_timeout_even_below_min_isr(
    mock_cluster: MockCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(producer_app, "FLUSH_TIMEOUT_S", 0.05)
    monkeypatch.setattr(replicas, "WAITING_AFTER_S", 0.0)
    stop = threading.Event()
    stop.set()
    assert _publisher(mock_cluster, rounds=10**9, in_sync=1)._flush(stop) == 3


REFERENCE = str(Path(__file__).parents[2] / "data" / "reference-order.avsc")


@pytest.mark.slow
def test_the_wire_flags_write_and_read_bare_bodies(
    mock_cluster: MockCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    load = loader(mock_cluster.env())
    raw = ["--wire-format", "raw", "--writer-schema", REFERENCE]
    assert producer_main(load, ["--count", "12", "--rate", "0", "--seed", "6", *raw]) == 0
    assert "bare Avro bodies, reference-order.avsc" in capsys.readouterr().out

    assert consumer_main(load, ["--idle-exit", "1", *raw]) == 0
    processed, _, dead_lettered, *_ = map(int, CONSUMED.findall(capsys.readouterr().out)[0])
    assert (processed, dead_lettered) == (12, 0)

    # A consumer left at auto cannot recognise them: each is dead-lettered with a hint at raw.
    assert consumer_main(load, ["--idle-exit", "1", "--group", "left-at-auto"]) == 0
    out = capsys.readouterr().out
    _, _, dead_lettered, deserialization, *_ = map(int, CONSUMED.findall(out)[0])
    assert dead_lettered == deserialization == 12
    hint = "if the producer writes bare Avro bodies, set AVRO_WIRE_FORMAT=raw and AVRO_WRITER_SCHEMA"
    assert out.count(hint) == 12, out
