"""Registering the order schema: one canonical text, the compatibility check that names the breaking field,
look-up only without auto-registering (a stand-in registry client, no network); and the levels' directions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.errors import ConfigError, RegistryUnavailableError
from orderpipe.kafka.registry import canonical_text, registered_id
from orderpipe.serde.schema_compat import breaking_change
from orderpipe.serde.schemas import load_order_schema, parse_schema_text

V1, V2 = load_order_schema(1), load_order_schema(2)


def _with_price(kind: str) -> str:
    schema = json.loads(V1.text)
    schema["fields"][2] = {"name": "price", "type": kind}
    return json.dumps(schema)


class Registry:
    """A subject's versions and compatibility level, answering as confluent-kafka's client would."""

    def __init__(self, versions: list[str] | None = None, level: str | None = "BACKWARD", compatible: bool = True):
        self.versions = versions or []
        self.level, self.compatible = level, compatible
        self.registered: list[str] = []

    def test_compatibility(self, subject: str, schema: Schema) -> bool:
        if not self.versions:
            raise SchemaRegistryError(404, 40401, "subject not found")
        return self.compatible

    def get_compatibility(self, subject: str | None = None) -> str:
        if subject is not None and self.level is None:
            raise SchemaRegistryError(404, 40408, "no subject level")
        return self.level or "FULL"

    def get_latest_version(self, subject: str) -> RegisteredSchema:
        text = self.versions[-1]
        return RegisteredSchema(subject, len(self.versions), 7, None, Schema(text, "AVRO"))

    def register_schema(self, subject: str, schema: Schema) -> int:
        assert schema.schema_str is not None
        if schema.schema_str not in self.versions:
            self.versions.append(schema.schema_str)
        self.registered.append(schema.schema_str)
        return self.versions.index(schema.schema_str) + 1

    def lookup_schema(self, subject: str, schema: Schema) -> RegisteredSchema:
        if schema.schema_str not in self.versions:
            raise SchemaRegistryError(404, 40403, "schema not found")
        return RegisteredSchema(subject, 1, self.versions.index(schema.schema_str) + 1, None, schema)


def register(registry: Registry, text: str, register: bool = True) -> int:
    return registered_id(registry, "orders-value", text, register=register, source="schemas/x.avsc")  # type: ignore[arg-type]


def test_one_canonical_text_is_registered_whatever_the_files_whitespace() -> None:
    registry = Registry()
    spaced = json.dumps(json.loads(V2.text), indent=7)
    assert register(registry, V2.text) == register(registry, spaced) == 1
    assert registry.versions == [canonical_text(V2.text)]
    assert json.loads(registry.versions[0]) == json.loads(V2.text), "docs and defaults are kept"


def test_an_incompatible_schema_names_the_subject_level_and_field_and_registers_nothing() -> None:
    registry = Registry([_with_price("string")], level=None, compatible=False)
    with pytest.raises(ConfigError) as refused:
        register(registry, V2.text)
    assert str(refused.value) == (
        "the order schema (schemas/x.avsc) is not compatible with version 1 of subject orders-value under FULL "
        "compatibility: the new schema cannot read data written with the latest: field price is string in the "
        "writer but float in the reader; producing nothing"
    )
    assert registry.registered == []


def test_a_registered_schema_that_does_not_parse_still_gives_one_sentence() -> None:
    registry = Registry(['{"type": "nonsense"'], compatible=False)
    with pytest.raises(ConfigError, match="under BACKWARD compatibility: the registry says so without naming a field"):
        register(registry, V2.text)


def test_a_conflict_at_registration_is_the_registrys_own_words() -> None:
    class Conflicting(Registry):
        def register_schema(self, subject: str, schema: Schema) -> int:
            raise SchemaRegistryError(409, 409, "Incompatible artifact: reader type FLOAT not compatible")

    with pytest.raises(ConfigError, match=r"refused the order schema .* as incompatible: Incompatible artifact"):
        register(Conflicting([V1.text]), V2.text)


def test_without_registering_the_schema_is_only_looked_up() -> None:
    registry = Registry([canonical_text(V1.text), canonical_text(V2.text)])
    assert register(registry, V2.text, register=False) == 2
    with pytest.raises(ConfigError, match="is not registered under subject orders-value, and SCHEMA_REGISTRY_AUTO"):
        register(Registry(), V2.text, register=False)
    assert registry.registered == []


def test_a_look_up_without_an_id_is_named() -> None:
    class NoId(Registry):
        def lookup_schema(self, subject: str, schema: Schema) -> Any:
            return RegisteredSchema(subject, 1, None, None, schema)

    with pytest.raises(RegistryUnavailableError, match="answered no id"):
        register(NoId(), V2.text, register=False)


def test_other_registry_failures_reach_the_caller() -> None:
    class Failing(Registry):
        def test_compatibility(self, subject: str, schema: Schema) -> bool:
            raise SchemaRegistryError(500, 50001, "store down")

    with pytest.raises(SchemaRegistryError):
        register(Failing([V1.text]), V2.text)


def test_each_level_checks_its_directions() -> None:
    v1, v2 = V1.parsed, V2.parsed
    required = json.loads(V2.text)
    required["fields"].append({"name": "region", "type": "string"})
    v3 = parse_schema_text(json.dumps(required))
    assert breaking_change("FULL", v2, v1) is None
    assert breaking_change("NONE", v3, v1) is None
    assert "field region is missing from the writer" in str(breaking_change("BACKWARD", v3, v2))
    assert breaking_change("FORWARD", v3, v2) is None
    assert "readers of the latest cannot read" in str(breaking_change("forward_transitive", v2, v3))
    assert breaking_change("SOMETHING ELSE", v3, v2) is not None, "an unknown level is judged both ways"
