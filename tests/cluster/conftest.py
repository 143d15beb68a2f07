"""Marks every test here `cluster`: they need the three-node cluster (scripts/broker.sh cluster up).

The `cluster` fixture fails a test when the cluster does not answer, and sends the
core dumps of programs killed by a signal to .cache/cores/ for the session
(tests/cluster/programs.py), restoring kernel.core_pattern afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.helpers import BOOTSTRAP, START_HINT, admin
from tests.cluster.programs import core_dumps_in
from tests.integration.helpers import require_registry


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def core_dumps() -> Iterator[str]:
    """kernel.core_pattern pointed at .cache/cores/ while the session runs (where root may set it)."""
    with core_dumps_in() as where:
        print(where)
        yield where


def _nodes() -> int:
    try:
        return len(admin().list_topics(timeout=10).brokers)
    except Exception:
        return 0


@pytest.fixture(scope="session")
def cluster(core_dumps: str) -> str:
    if _nodes() < 3:
        pytest.fail(f"the three-node cluster does not answer on {BOOTSTRAP}: {START_HINT}")
    return BOOTSTRAP


@pytest.fixture(scope="session")
def registry_url() -> str:
    """The schema registry of scripts/broker.sh up (the cluster has none of its own)."""
    return require_registry("The Confluent wire format needs the registry")
