"""Schema-id lookups: parsed once, failures remembered briefly (a stand-in client, no network)."""

from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.codec import load_order_schema
from orderpipe.errors import DeserializationError
from orderpipe.registry import RegistryLookup

TEXT = load_order_schema().text


class StandInClient:
    """Answers get_schema from a dict; raises what it is told to for other ids."""

    def __init__(self, failure: Exception) -> None:
        self.calls: list[int] = []
        self.failure = failure

    def get_schema(self, schema_id: int) -> Schema:
        self.calls.append(schema_id)
        if schema_id == 1:
            return Schema(TEXT, "AVRO")
        raise self.failure


def lookup_with(failure: Exception, now: list[float]) -> tuple[RegistryLookup, StandInClient]:
    client = StandInClient(failure)
    lookup = RegistryLookup(client, failure_ttl_s=10.0, clock=lambda: now[0])  # type: ignore[arg-type]
    return lookup, client


def test_a_schema_is_fetched_and_parsed_once() -> None:
    lookup, client = lookup_with(RuntimeError(), [0.0])
    first: Any = lookup(1)
    assert lookup(1) is first
    assert client.calls == [1]


def test_an_unknown_id_is_a_deserialization_error_remembered_for_a_while() -> None:
    now = [0.0]
    lookup, client = lookup_with(SchemaRegistryError(404, 40403, "Schema not found"), now)
    for _ in range(3):
        with pytest.raises(DeserializationError, match="schema id 7 is unknown to the registry"):
            lookup(7)
    assert client.calls == [7]
    now[0] = 10.5
    with pytest.raises(DeserializationError):
        lookup(7)
    assert client.calls == [7, 7]


def test_an_unreachable_registry_is_a_deserialization_error_too() -> None:
    lookup, _ = lookup_with(ConnectionRefusedError("refused"), [0.0])
    with pytest.raises(DeserializationError, match="could not be fetched: ConnectionRefusedError"):
        lookup(9)
