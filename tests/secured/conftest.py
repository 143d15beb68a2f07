"""Fixtures for tests against the secured broker (`scripts/broker.sh secure up`).

The broker, its certificates and its secrets are those scripts/secure_broker.sh
generated under .cache/secure/. A broker that does not answer fails the test with
the command that starts it; nothing here skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.secured.helpers import SecureCluster, connect_secure


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.secured)


@pytest.fixture(scope="session")
def secure() -> SecureCluster:
    return connect_secure()


@pytest.fixture
def prefix() -> str:
    """Private topic and group names for one test."""
    return f"sec-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def principal(secure: SecureCluster) -> Iterator[tuple[str, str]]:
    """A SCRAM user of its own for one test, with no ACLs: (name, password)."""
    user = secure.new_scram_user()
    yield user
    secure.delete_scram_user(user[0])
