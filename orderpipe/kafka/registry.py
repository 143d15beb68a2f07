"""The schema registry at the edge: a client, a reachability check and schema lookups."""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from orderpipe.config.settings import Settings
from orderpipe.errors import ConfigError, DeserializationError, NotReady, RegistryUnavailableError
from orderpipe.serde.schema_compat import breaking_change
from orderpipe.serde.schemas import parse_schema_text, unreadable_shape
from orderpipe.text import printable, redact

__all__ = [
    "START_REGISTRY_HINT",
    "RegistryLookup",
    "canonical_text",
    "connect_registry",
    "registered_id",
    "registry_login_problem",
]

START_REGISTRY_HINT = (
    "start one with 'scripts/broker.sh up' (or 'docker compose up -d'), "
    "or leave SCHEMA_REGISTRY_URL empty to use Avro single-object encoding"
)


def connect_registry(settings: Settings, timeout_s: float = 5.0) -> SchemaRegistryClient:
    """A registry client (URL, basic auth, TLS from the settings) that has proven the registry answers.

    The client makes no retries of its own (`max.retries` 0): a look-up that fails
    is remembered as failed for a while (RegistryLookup), and the start-up check
    fails at once with how to start a registry.

    Raises:
        ConfigError: the registry refused the credentials or the TLS settings do not fit it.
        RegistryUnavailableError: naming the URL and how to start a registry.
    """
    conf = {**settings.registry_client_config(), "timeout": timeout_s, "max.retries": 0}
    try:
        client = SchemaRegistryClient(conf)
        client.get_subjects()
    except Exception as exc:  # httpx transport errors, SchemaRegistryError and rejected settings alike
        if (problem := registry_login_problem(exc, settings.registry_address)) is not None:
            raise ConfigError(problem) from None
        raise RegistryUnavailableError(
            f"Cannot reach the schema registry at {settings.registry_address} "
            f"({type(exc).__name__}: {printable(redact(str(exc)), 300)}): {START_REGISTRY_HINT}"
            f"{_scheme_hint(exc, settings.registry_address)}."
        ) from None
    return client


def canonical_text(text: str) -> str:
    """The one rendering of a schema file the producer registers: its JSON, compact, in the file's order.

    A registry that compares schema text (Apicurio) makes a new version of any other
    rendering, whitespace included. Avro's Parsing Canonical Form is not used: it
    drops the defaults that the registry's compatibility checks need.
    """
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def registered_id(client: SchemaRegistryClient, subject: str, text: str, *, register: bool, source: str) -> int:
    """The schema id of `text` (a schema file's JSON) under `subject`, registered first where allowed.

    Before registering, the registry is asked whether the schema is compatible with
    the subject's latest version under the subject's compatibility level; if not,
    nothing is registered and the producer produces nothing. Without `register`
    (SCHEMA_REGISTRY_AUTO_REGISTER=false) the schema is only looked up.

    Args:
        source: the schema file, for the messages.

    Raises:
        ConfigError: incompatible (naming the subject, the level and the field that
            breaks it), or not registered while registering is not allowed.
        SchemaRegistryError, and the client's transport errors: the caller names them.
    """
    schema = Schema(canonical_text(text), "AVRO")
    if not register:
        try:
            found = client.lookup_schema(subject, schema).schema_id
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                raise
            raise ConfigError(
                f"the order schema ({source}) is not registered under subject {subject}, and "
                "SCHEMA_REGISTRY_AUTO_REGISTER is false: register it there, or allow registering"
            ) from None
        if found is None:
            raise RegistryUnavailableError(f"the schema registry answered no id for the order schema ({source})")
        return found
    _check_compatible(client, subject, schema, source)
    try:
        return client.register_schema(subject, schema)
    except SchemaRegistryError as exc:
        if exc.http_status_code != 409:
            raise
        # The registry refused it after all (its rules changed meanwhile, say): its own words.
        raise ConfigError(
            f"the schema registry refused the order schema ({source}) for subject {subject} as incompatible: "
            f"{printable(exc.error_message, 300)}; producing nothing"
        ) from None


def _check_compatible(client: SchemaRegistryClient, subject: str, schema: Schema, source: str) -> None:
    try:
        if client.test_compatibility(subject, schema):
            return
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:  # no version yet: anything is compatible
            return
        raise
    level = _level(client, subject)
    latest = client.get_latest_version(subject)
    try:  # the registry's answer is untrusted: a schema that does not parse or check names no field
        new, old = (parse_schema_text(text or "") for text in (schema.schema_str, latest.schema.schema_str))
        why = breaking_change(level, new, old)
    except Exception:
        why = None
    raise ConfigError(
        f"the order schema ({source}) is not compatible with version {latest.version} of subject {subject} "
        f"under {printable(level, 40)} compatibility: {why or 'the registry says so without naming a field'}; "
        "producing nothing"
    )


def _level(client: SchemaRegistryClient, subject: str) -> str:
    """The subject's compatibility level, else the registry's default."""
    try:
        return str(client.get_compatibility(subject))
    except SchemaRegistryError as exc:
        if exc.http_status_code != 404:
            raise
        return str(client.get_compatibility())


def registry_login_problem(exc: Exception, address: str) -> str | None:
    """The sentence for a registry that will not let this client in (credentials, TLS); None for other failures."""
    status = getattr(exc, "http_status_code", None)
    text = str(exc)
    if status == 401:
        return (
            f"the schema registry at {address} refused the credentials (HTTP 401): check "
            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO (user:password), or the credentials in SCHEMA_REGISTRY_URL"
        )
    if status == 403:
        return (
            f"the schema registry at {address} denied this user access (HTTP 403): grant it read access to the "
            "subjects, and write access where it registers schemas (or set SCHEMA_REGISTRY_AUTO_REGISTER=false)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        reason = printable(text[text.index("CERTIFICATE_VERIFY_FAILED") :], 160)
        return (
            f"the TLS certificate of the schema registry at {address} did not pass this client's checks ({reason}): "
            "check SCHEMA_REGISTRY_SSL_CA_LOCATION (the CA that signed it), and that the certificate names this "
            "host and is not expired"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return f"the schema registry at {address} does not speak TLS: check the scheme of SCHEMA_REGISTRY_URL (http://)"
    return None


def _scheme_hint(exc: Exception, address: str) -> str:
    """A hint for a plain-HTTP request that a TLS endpoint may have dropped (a restart may too)."""
    if address.startswith("http://") and "Server disconnected without sending a response" in str(exc):
        return "; if it serves HTTPS, SCHEMA_REGISTRY_URL must start with https://"
    return ""


# Failed look-ups are remembered this long, and at most this many (the oldest go first),
# so that a stream of records with unknown ids costs neither a request each nor memory.
FAILURE_TTL_S = 30.0
MAX_FAILURES = 10_000
# Schemas kept (parsed); a registry rarely holds more than a few for one subject.
MAX_SCHEMAS = 1_000
# Look-ups running at once, and how many may wait for a worker.
WORKERS = 4
MAX_PENDING = 256
# How long a record whose schema is still being looked up waits before it is read again.
NOT_READY_RETRY_MS = 100


class RegistryLookup:
    """Resolves Confluent schema ids to parsed writer schemas, without making the poll loop wait.

    Ids are looked up on worker threads. `resolve` starts the look-ups of a batch's
    new ids together and waits a bounded time for them; a record whose id is still
    unanswered after that raises `NotReady`, so only its partition waits (the
    registry being slow or down holds up no other record). A schema is parsed once
    and kept; a failure (an unknown id, an unusable schema, an unreachable registry)
    is kept for `failure_ttl_s` as a message, in a bounded table, and the records
    that carry that id go to the DLQ at once.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        *,
        failure_ttl_s: float = FAILURE_TTL_S,
        max_failures: int = MAX_FAILURES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}
        self._failed: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._pending: dict[int, Future[Any]] = {}
        # Look-ups that finished, appended by the workers, taken in by `_settle`.
        self._finished: deque[tuple[int, Future[Any]]] = deque()
        self._failure_ttl_s = failure_ttl_s
        self._max_failures = max_failures
        self._clock = clock
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="schema-lookup")

    def close(self) -> None:
        """Stops the workers; a look-up under way ends with its request timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def resolve(self, schema_ids: Iterable[int], wait_s: float) -> None:
        """Starts looking up the ids not asked for yet (as many as MAX_PENDING allows).

        Waits at most `wait_s` for those; a look-up already under way is waited for by nobody.
        """
        started: list[Future[Any]] = []
        for schema_id in dict.fromkeys(schema_ids):
            if schema_id in self._parsed or schema_id in self._pending or self._remembered(schema_id):
                continue  # known, or asked already: a batch waits only for what it asked first
            future = self._start(schema_id)
            if future is None:
                break  # as many look-ups as allowed are under way; the rest wait for a later batch
            started.append(future)
        if started:
            wait(started, timeout=wait_s)

    def __call__(self, schema_id: int) -> Any:
        """The parsed writer schema of an id.

        Raises:
            DeserializationError: the id is unknown, its schema unusable, or the
                registry could not be asked (remembered for `failure_ttl_s`).
            NotReady: the id is being looked up.
        """
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        if self._remembered(schema_id):
            raise DeserializationError(self._failed[schema_id][1])
        future = self._pending.get(schema_id) or self._start(schema_id)
        if future is not None and future.done():
            self._take(schema_id, future)
            return self(schema_id)
        raise NotReady(f"schema id {schema_id} is being looked up", NOT_READY_RETRY_MS)

    def _remembered(self, schema_id: int) -> bool:
        """Whether a failure of the id is remembered (one that expired is forgotten here)."""
        failed = self._failed.get(schema_id)
        if failed is None:
            return False
        if self._clock() < failed[0]:
            return True
        del self._failed[schema_id]
        return False

    def _start(self, schema_id: int) -> Future[Any] | None:
        """Starts looking an id up; None when MAX_PENDING look-ups are under way already."""
        self._settle()
        if len(self._pending) >= MAX_PENDING:
            return None
        future = self._pending[schema_id] = self._pool.submit(self._fetch, schema_id)
        future.add_done_callback(lambda done: self._finished.append((schema_id, done)))
        return future

    def _settle(self) -> None:
        """Moves the look-ups that finished since the last call into the tables."""
        while self._finished:
            schema_id, done = self._finished.popleft()
            if self._pending.get(schema_id) is done:  # not taken already by __call__
                self._take(schema_id, done)

    def _take(self, schema_id: int, future: Future[Any]) -> None:
        """Moves a finished look-up into the table of schemas or of failures."""
        del self._pending[schema_id]
        try:
            parsed = future.result()
        except DeserializationError as exc:
            self._failed[schema_id] = (self._clock() + self._failure_ttl_s, str(exc))
            if len(self._failed) > self._max_failures:
                self._failed.popitem(last=False)
            return
        if len(self._parsed) >= MAX_SCHEMAS:
            del self._parsed[next(iter(self._parsed))]
        self._parsed[schema_id] = parsed

    def _fetch(self, schema_id: int) -> Any:
        """Runs on a worker: asks the registry for an id's schema and parses it.

        Errors are raised without their cause: a failure is kept as a message, and
        the library's exceptions may carry the URL with its credentials.
        """
        try:
            text = self._client.get_schema(schema_id).schema_str or ""
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DeserializationError(f"schema id {schema_id} is unknown to the registry") from None
            message = printable(redact(str(exc)), 200)
            raise DeserializationError(f"the registry refused schema id {schema_id}: {message}") from None
        except Exception as exc:  # the registry is unreachable: the record cannot be read now
            message = f"{type(exc).__name__}: {printable(redact(str(exc)), 200)}"
            raise DeserializationError(f"schema id {schema_id} could not be fetched: {message}") from None
        try:
            parsed = parse_schema_text(text)
        except Exception as exc:  # the registry's answer is untrusted too: anything but an Avro schema
            message = f"{type(exc).__name__}: {printable(str(exc), 200)}"
            raise DeserializationError(f"schema id {schema_id} is not a usable Avro schema: {message}") from None
        shape = unreadable_shape(parsed)
        if shape is not None:
            raise DeserializationError(f"schema id {schema_id} is not read: {shape}")
        return parsed
