"""Fixtures of the unit tests: nothing here reaches a real broker."""

from __future__ import annotations

import pytest

from orderpipe import consumer_app, kafka_edge
from tests.unit.mock_cluster import MockCluster


@pytest.fixture(scope="session")
def mock_cluster() -> MockCluster:
    return MockCluster()


@pytest.fixture(autouse=True)
def _no_topic_checks_on_the_mock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock answers no DescribeConfigs and gives every topic 4 partitions: the topic checks are off there.

    tests/integration checks them on a real broker.
    """
    if "mock_cluster" in request.fixturenames:
        monkeypatch.setattr(kafka_edge, "topic_configs", lambda _admin, _names: {})
        monkeypatch.setattr(consumer_app, "topic_problems", lambda _settings, _counts, _configs: [])
