"""Fixtures for tests against the real Kafka broker and schema registry.

A broker or registry that does not answer fails the test with the command that
starts one; nothing here skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_settings
from orderpipe.errors import OrderPipeError
from orderpipe.kafka.clients import connect_admin
from tests.integration.helpers import BOOTSTRAP, START_HINT, Pipeline, new_pipeline, require_registry


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> str:
    try:
        connect_admin(load_settings({"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP}, environ={}, env_file=None))
    except OrderPipeError as exc:
        pytest.fail(f"{exc} Integration tests need the real broker: {START_HINT}.")
    return BOOTSTRAP


@pytest.fixture(scope="session")
def registry_url() -> str:
    return require_registry("Integration tests need the real registry")


@pytest.fixture
def pipeline(broker: str) -> Pipeline:
    return new_pipeline(broker)
