"""Start-up against services that are not there: one clear sentence, the right exit code, fast.

These point the programs at a closed port on purpose; the real broker fixture is still
required so that the error is known to come from the address given, not from a broker
that happens to be down.
"""

import time

import pytest

from tests.integration.helpers import Pipeline

CLOSED = "127.0.0.1:1"


@pytest.mark.parametrize(("script", "args"), [("producer.py", ["--count", "1"]), ("consumer.py", [])])
def test_an_unreachable_broker_is_named_with_how_to_start_one(pipeline: Pipeline, script: str, args: list[str]) -> None:
    started = time.monotonic()
    result = pipeline.with_env(KAFKA_BOOTSTRAP_SERVERS=CLOSED).run(script, *args, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 15, f"took {elapsed:.1f}s"
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: Cannot reach the Kafka broker at {CLOSED}")
    assert "scripts/broker.sh up" in error
    assert "docker compose up -d" in error


@pytest.mark.parametrize(("script", "args"), [("producer.py", ["--count", "1"]), ("consumer.py", [])])
def test_an_unreachable_registry_is_named_with_how_to_start_one(
    pipeline: Pipeline, script: str, args: list[str]
) -> None:
    started = time.monotonic()
    result = pipeline.with_env(SCHEMA_REGISTRY_URL=f"http://{CLOSED}").run(script, *args, timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: Cannot reach the schema registry at http://{CLOSED}")
    assert "scripts/broker.sh up" in error
