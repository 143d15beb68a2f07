"""producer.py and consumer.py end to end on librdkafka's mock cluster: flags, output, exit codes.

The mock cluster keeps no offsets sent with a transaction, so these runs prove the
programs' paths, not exactly-once across restarts (the twin and the real broker do).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from orderpipe.cli import LoadSettings, consumer_main, producer_main
from orderpipe.settings import Settings, build_settings
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


def test_the_producer_keeps_its_rate_and_prints_each_order(
    mock_cluster: MockCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    load = loader(mock_cluster.env())
    assert producer_main(load, ["--count", "10", "--rate", "100", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("✓ Sent: Order") == 10
    assert "Throughput: 10 orders" in out
