"""Fixtures of the unit tests: nothing here reaches a real broker."""

from __future__ import annotations

import pytest

from orderpipe.kafka import admin as kafka_admin
from orderpipe.kafka import edge as kafka_edge
from orderpipe.programs import consumer_app, dlq_app
from tests.unit.mock_cluster import MockCluster


@pytest.fixture(scope="session")
def mock_cluster() -> MockCluster:
    return MockCluster()


@pytest.fixture(autouse=True)
def _no_topic_checks_on_the_mock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock answers no DescribeConfigs nor authorized operations, and gives every topic 4 partitions:
    the topic and permission checks are off there.

    tests/integration and tests/secured check them on real brokers.
    """
    if "mock_cluster" in request.fixturenames:
        for module in (kafka_edge, dlq_app):
            monkeypatch.setattr(module, "topic_configs", lambda _admin, _names, **_: {})
        for module in (kafka_admin, kafka_edge):
            monkeypatch.setattr(module, "permissions", lambda _admin, _topics, _group="": {})
        monkeypatch.setattr(consumer_app, "topic_problems", lambda _settings, _counts, _configs: [])
