"""The producer's value encoding with a schema registry, and its writer schema's choice (registry stood in for)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from orderpipe.config.settings import Settings, build_settings
from orderpipe.errors import ConfigError, RegistryUnavailableError
from orderpipe.model.order import Order
from orderpipe.programs import producer_encoding
from orderpipe.programs.producer_encoding import value_encoding, writer_schema
from orderpipe.serde.codec import CONFLUENT_MAGIC
from orderpipe.serde.schemas import load_order_schema

ORDER = Order("O-1", "Keyboard", 45.5, 2, "C-42")
REGISTRY = {"SCHEMA_REGISTRY_URL": "http://registry.invalid:8081", "AVRO_WIRE_FORMAT": "confluent"}


class Refusal(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.http_status_code = status


def _registry(monkeypatch: pytest.MonkeyPatch, answer: int | Exception) -> list[str]:
    asked: list[str] = []

    @contextmanager
    def connect(_settings: Settings) -> Iterator[object]:
        yield object()

    def registered(_client: object, subject: str, _text: str, **_: Any) -> int:
        asked.append(subject)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(producer_encoding, "connect_registry", connect)
    monkeypatch.setattr(producer_encoding, "registered_id", registered)
    return asked


def test_values_are_framed_with_the_registered_schema_id(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _registry(monkeypatch, 7)
    schema = load_order_schema()
    with ExitStack() as stack:
        encoding = value_encoding(build_settings(REGISTRY), schema, stack)
    header = CONFLUENT_MAGIC + struct.pack(">I", 7)
    assert asked == ["orders-value"]
    assert encoding.prefix == header
    assert encoding.encode(ORDER) == header + schema.encode_body(ORDER)


def test_a_registry_that_refuses_the_schema_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _registry(monkeypatch, RuntimeError("connection reset"))
    with ExitStack() as stack, pytest.raises(RegistryUnavailableError, match="refused the order schema"):
        value_encoding(build_settings(REGISTRY), load_order_schema(), stack)
    _registry(monkeypatch, Refusal(401))
    with ExitStack() as stack, pytest.raises(ConfigError, match="refused the credentials"):
        value_encoding(build_settings(REGISTRY), load_order_schema(), stack)


def test_a_schema_version_does_not_apply_to_bare_bodies() -> None:
    settings = build_settings({"AVRO_WIRE_FORMAT": "raw", "AVRO_WRITER_SCHEMA": "order.avsc"})
    with pytest.raises(ConfigError, match="--schema-version does not apply"):
        writer_schema(settings, 1)
    assert writer_schema(build_settings({}), 1) == load_order_schema(1)
