"""The schema registry at the edge: a client, a reachability check and schema lookups."""

from __future__ import annotations

from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.codec import parse_schema_text
from orderpipe.errors import DeserializationError, RegistryUnavailableError

__all__ = ["START_REGISTRY_HINT", "RegistryLookup", "connect_registry"]

START_REGISTRY_HINT = (
    "start one with 'scripts/broker.sh up' (or 'docker compose up -d'), "
    "or leave SCHEMA_REGISTRY_URL empty to use Avro single-object encoding"
)


def connect_registry(url: str, timeout_s: float = 5.0) -> SchemaRegistryClient:
    """A registry client that has proven the registry answers.

    Raises:
        RegistryUnavailableError: naming the URL and how to start a registry.
    """
    client = SchemaRegistryClient({"url": url, "timeout": timeout_s, "max.retries": 1})
    try:
        client.get_subjects()
    except Exception as exc:  # httpx transport errors and SchemaRegistryError alike
        raise RegistryUnavailableError(
            f"Cannot reach the schema registry at {url} ({type(exc).__name__}: {exc}): {START_REGISTRY_HINT}."
        ) from exc
    return client


class RegistryLookup:
    """Resolves Confluent schema ids to parsed writer schemas, each parsed once."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}

    def __call__(self, schema_id: int) -> Any:
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        try:
            schema = self._client.get_schema(schema_id)
            parsed = parse_schema_text(schema.schema_str or "")
        except SchemaRegistryError as exc:
            raise DeserializationError(f"schema id {schema_id} is unknown to the registry: {exc}") from exc
        except ValueError as exc:
            raise DeserializationError(f"schema id {schema_id} is not a usable Avro schema: {exc}") from exc
        except Exception as exc:  # the registry is unreachable: the record cannot be read now
            raise DeserializationError(
                f"schema id {schema_id} could not be fetched: {type(exc).__name__}: {exc}"
            ) from exc
        self._parsed[schema_id] = parsed
        return parsed
