"""Schema-id lookups: parsed once, failures remembered briefly (a stand-in client, no network)."""

import json
import threading
import time
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.errors import DeserializationError, NotReady
from orderpipe.kafka.registry import RegistryLookup
from orderpipe.serde.schemas import load_order_schema

TEXT = load_order_schema().text


class StandInClient:
    """Answers get_schema from a dict; raises what it is told to for other ids, after `gate` opens."""

    def __init__(self, failure: Exception, answers: dict[int, str] | None = None) -> None:
        self.calls: list[int] = []
        self.failure = failure
        self.answers = {1: TEXT} if answers is None else answers
        self.gate = threading.Event()
        self.gate.set()

    def get_schema(self, schema_id: int) -> Schema:
        self.calls.append(schema_id)
        self.gate.wait(10)
        if schema_id in self.answers:
            return Schema(self.answers[schema_id], "AVRO")
        raise self.failure


def lookup_with(failure: Exception, now: list[float], **options: Any) -> tuple[RegistryLookup, StandInClient]:
    client = StandInClient(failure, options.pop("answers", None))
    lookup = RegistryLookup(client, failure_ttl_s=10.0, clock=lambda: now[0], **options)  # type: ignore[arg-type]
    return lookup, client


def test_a_schema_is_fetched_and_parsed_once() -> None:
    lookup, client = lookup_with(RuntimeError(), [0.0])
    lookup.resolve([1, 1], wait_s=5)
    first: Any = lookup(1)
    assert lookup(1) is first
    lookup.resolve([1], wait_s=5)
    assert client.calls == [1]


def test_an_unknown_id_is_a_deserialization_error_remembered_for_a_while() -> None:
    now = [0.0]
    lookup, client = lookup_with(SchemaRegistryError(404, 40403, "Schema not found"), now)
    lookup.resolve([7], wait_s=5)
    for _ in range(3):
        with pytest.raises(DeserializationError, match="schema id 7 is unknown to the registry"):
            lookup(7)
    assert client.calls == [7]
    now[0] = 10.5
    lookup.resolve([7], wait_s=5)
    with pytest.raises(DeserializationError):
        lookup(7)
    assert client.calls == [7, 7]


def test_an_unreachable_registry_is_a_deserialization_error_without_its_credentials() -> None:
    refused = ConnectionRefusedError("refused by https://reader:s3cret@registry.example:8081/schemas/ids/9")
    lookup, _ = lookup_with(refused, [0.0])
    lookup.resolve([9], wait_s=5)
    with pytest.raises(DeserializationError, match="could not be fetched: ConnectionRefusedError") as caught:
        lookup(9)
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_a_slow_registry_makes_only_the_records_that_need_it_wait() -> None:
    lookup, client = lookup_with(RuntimeError(), [0.0])
    client.gate.clear()
    lookup.resolve([1], wait_s=0.05)  # waits no longer than that
    with pytest.raises(NotReady) as caught:
        lookup(1)
    assert caught.value.retry_after_ms > 0
    client.gate.set()
    lookup.resolve([1], wait_s=5)  # already asked: not waited for again
    assert ready(lambda: lookup(1)) is not None
    assert client.calls == [1]


def ready(call: Any) -> Any:
    """Calls until it stops raising NotReady (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return call()
        except NotReady:
            assert time.monotonic() < deadline, "still not ready after 5 s"
            time.sleep(0.01)


@pytest.mark.parametrize("answer", ["not json", '{"type": "record"}', '"nosuchtype"', "[" * 5000 + "]" * 5000])
def test_a_registry_answer_that_is_no_avro_schema_is_a_deserialization_error(answer: str) -> None:
    lookup, _ = lookup_with(RuntimeError(), [0.0], answers={3: answer})
    lookup.resolve([3], wait_s=5)
    with pytest.raises(DeserializationError, match="schema id 3 is not a usable Avro schema"):
        lookup(3)


def test_failures_are_remembered_in_a_bounded_table() -> None:
    lookup, client = lookup_with(SchemaRegistryError(404, 40403, "Schema not found"), [0.0], max_failures=3)
    ids = list(range(100, 110))
    for schema_id in ids:
        lookup.resolve([schema_id], wait_s=5)
        with pytest.raises(DeserializationError):
            lookup(schema_id)
    lookup.resolve(ids[-3:], wait_s=5)
    assert client.calls == ids, "the 3 latest failures are remembered"
    lookup.resolve(ids[:1], wait_s=5)
    assert client.calls == [*ids, ids[0]], "older ones were forgotten"


def test_a_registered_schema_that_could_cost_without_bound_is_not_read() -> None:
    recursive = json.dumps({"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]})
    now = [0.0]
    lookup, _client = lookup_with(DeserializationError("unused"), now, answers={9: recursive})
    lookup.resolve([9], 5.0)
    with pytest.raises(DeserializationError, match="schema id 9 is not read: the type Node contains itself"):
        lookup(9)
    lookup.close()
