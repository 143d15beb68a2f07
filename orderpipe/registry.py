"""The schema registry at the edge: a client, a reachability check and schema lookups."""

from __future__ import annotations

import time
from collections.abc import Callable
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

    The client makes no retries of its own (`max.retries` 0): the library sleeps
    between retries, and the consumer's poll loop must never sleep.

    Raises:
        RegistryUnavailableError: naming the URL and how to start a registry.
    """
    client = SchemaRegistryClient({"url": url, "timeout": timeout_s, "max.retries": 0})
    try:
        client.get_subjects()
    except Exception as exc:  # httpx transport errors and SchemaRegistryError alike
        raise RegistryUnavailableError(
            f"Cannot reach the schema registry at {url} ({type(exc).__name__}: {exc}): {START_REGISTRY_HINT}."
        ) from exc
    return client


class RegistryLookup:
    """Resolves Confluent schema ids to parsed writer schemas, each parsed once.

    A failed lookup is remembered for `failure_ttl_s`: while the registry is down
    or an id is unknown, the records that carry it go to the DLQ at once instead
    of each waiting for a request timeout.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        failure_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}
        self._failed: dict[int, tuple[float, DeserializationError]] = {}
        self._failure_ttl_s = failure_ttl_s
        self._clock = clock

    def __call__(self, schema_id: int) -> Any:
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        failed = self._failed.get(schema_id)
        if failed is not None and self._clock() < failed[0]:
            raise failed[1]
        try:
            parsed = self._fetch(schema_id)
        except DeserializationError as exc:
            self._failed[schema_id] = (self._clock() + self._failure_ttl_s, exc)
            raise
        self._failed.pop(schema_id, None)
        self._parsed[schema_id] = parsed
        return parsed

    def _fetch(self, schema_id: int) -> Any:
        try:
            schema = self._client.get_schema(schema_id)
            return parse_schema_text(schema.schema_str or "")
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DeserializationError(f"schema id {schema_id} is unknown to the registry") from exc
            raise DeserializationError(f"the registry refused schema id {schema_id}: {exc}") from exc
        except ValueError as exc:
            raise DeserializationError(f"schema id {schema_id} is not a usable Avro schema: {exc}") from exc
        except Exception as exc:  # the registry is unreachable: the record cannot be read now
            raise DeserializationError(
                f"schema id {schema_id} could not be fetched: {type(exc).__name__}: {exc}"
            ) from exc
