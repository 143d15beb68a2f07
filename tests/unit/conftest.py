"""Fixtures of the unit tests: nothing here reaches a real broker."""

from __future__ import annotations

import pytest

from tests.unit.mock_cluster import MockCluster


@pytest.fixture(scope="session")
def mock_cluster() -> MockCluster:
    return MockCluster()
