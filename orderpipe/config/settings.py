"""The pipeline's settings as one frozen, validated object (docs/configuration.md, "Settings").

This module knows every setting: its environment variable, its default and its
parser (orderpipe/config/parsers.py, which says what a good value looks like). It
never reads the environment itself: the top-level `config.py` gathers raw values
(flags, environment, `.env`) and calls `build_settings`, so the package depends on
nothing above it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from orderpipe.config import parsers
from orderpipe.errors import ConfigError
from orderpipe.model.money import to_cents
from orderpipe.text import redact

__all__ = ["ENV_NAMES", "SECRET_FIELDS", "Settings", "build_settings"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# AVRO_WIRE_FORMAT (orderpipe.serde.wire).
AUTO, CONFLUENT, SINGLE_OBJECT, RAW = WIRE_FORMATS = ("auto", "confluent", "single-object", "raw")
# Fields whose values are secrets: out of reprs, and never echoed in an error.
SECRET_FIELDS = frozenset(
    {
        "sasl_password",
        "ssl_key_password",
        "oauth_client_secret",
        "registry_basic_auth_user_info",
        "client_properties",
    }
)
# The largest backoff the settings take.
DAY_MS = 86_400_000
# librdkafka's second names for settings (Confluent Cloud's client.properties says sasl.mechanisms).
_LIBRDKAFKA_ALIASES = {"sasl.mechanism": "sasl.mechanisms", "bootstrap.servers": "metadata.broker.list"}
# Properties-file keys whose values are secrets (sasl.password, sasl.jaas.config,
# ssl.key.pem, ...); not sasl.oauthbearer.token.endpoint.url, an address.
_SECRET_KEY = re.compile(r"password|secret|token|jaas|user\.info|credential|key\.pem|private", re.I)


@dataclass(frozen=True)
class Settings:
    """Validated pipeline settings; build one with `build_settings` (config.load_settings does).

    Field metadata names the environment variable each field comes from. Secrets
    (SECRET_FIELDS, and the registry URL, which may carry credentials) are kept out
    of `repr` so that settings can be logged safely.
    """

    bootstrap_servers: str = field(default="localhost:9092", metadata={"env": "KAFKA_BOOTSTRAP_SERVERS"})
    # May carry credentials (https://user:secret@host): shown only as `registry_address`.
    schema_registry_url: str = field(default="", repr=False, metadata={"env": "SCHEMA_REGISTRY_URL"})
    orders_topic: str = field(default="orders", metadata={"env": "ORDERS_TOPIC"})
    retry_topic: str = field(default="orders-retry", metadata={"env": "RETRY_TOPIC"})
    dlq_topic: str = field(default="orders-dlq", metadata={"env": "DLQ_TOPIC"})
    stats_topic: str = field(default="orders-stats", metadata={"env": "STATS_TOPIC"})
    consumer_group: str = field(default="order-pipeline", metadata={"env": "CONSUMER_GROUP"})
    orders_partitions: int = field(default=3, metadata={"env": "ORDERS_PARTITIONS"})
    replication_factor: int = field(default=1, metadata={"env": "REPLICATION_FACTOR"})
    # 0: not given; `min_isr` is then 2 for a replication factor of 3 or more, else 1.
    min_insync_replicas: int = field(default=0, metadata={"env": "MIN_INSYNC_REPLICAS"})
    max_retries: int = field(default=3, metadata={"env": "MAX_RETRIES"})
    retry_backoff_ms: int = field(default=1000, metadata={"env": "RETRY_BACKOFF_MS"})
    retry_backoff_max_ms: int = field(default=30000, metadata={"env": "RETRY_BACKOFF_MAX_MS"})
    max_order_price: Decimal = field(default=Decimal("100000"), metadata={"env": "MAX_ORDER_PRICE"})
    security_protocol: str = field(default="PLAINTEXT", metadata={"env": "KAFKA_SECURITY_PROTOCOL"})
    sasl_mechanism: str = field(default="", metadata={"env": "KAFKA_SASL_MECHANISM"})
    sasl_username: str = field(default="", metadata={"env": "KAFKA_SASL_USERNAME"})
    sasl_password: str = field(default="", repr=False, metadata={"env": "KAFKA_SASL_PASSWORD"})
    ssl_ca_location: str = field(default="", metadata={"env": "KAFKA_SSL_CA_LOCATION"})
    ssl_certificate_location: str = field(default="", metadata={"env": "KAFKA_SSL_CERTIFICATE_LOCATION"})
    ssl_key_location: str = field(default="", metadata={"env": "KAFKA_SSL_KEY_LOCATION"})
    ssl_key_password: str = field(default="", repr=False, metadata={"env": "KAFKA_SSL_KEY_PASSWORD"})
    oauth_token_endpoint_url: str = field(default="", metadata={"env": "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"})
    oauth_client_id: str = field(default="", metadata={"env": "KAFKA_SASL_OAUTHBEARER_CLIENT_ID"})
    oauth_client_secret: str = field(default="", repr=False, metadata={"env": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"})
    oauth_scope: str = field(default="", metadata={"env": "KAFKA_SASL_OAUTHBEARER_SCOPE"})
    # A librdkafka properties file (the client.properties providers hand out); config.py
    # reads it, and its pairs are `client_properties`. Explicit settings win over it.
    client_config: str = field(default="", metadata={"env": "KAFKA_CLIENT_CONFIG"})
    client_properties: tuple[tuple[str, str], ...] = field(default=(), repr=False, metadata={"env": ""})
    registry_basic_auth_user_info: str = field(
        default="", repr=False, metadata={"env": "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"}
    )
    registry_ssl_ca_location: str = field(default="", metadata={"env": "SCHEMA_REGISTRY_SSL_CA_LOCATION"})
    registry_ssl_certificate_location: str = field(
        default="", metadata={"env": "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION"}
    )
    registry_ssl_key_location: str = field(default="", metadata={"env": "SCHEMA_REGISTRY_SSL_KEY_LOCATION"})
    create_topics: bool = field(default=True, metadata={"env": "CREATE_TOPICS"})
    registry_auto_register: bool = field(default=True, metadata={"env": "SCHEMA_REGISTRY_AUTO_REGISTER"})
    # Where /metrics and /healthz are served, as (host, port); None: not served (orderpipe.observe.metrics_http).
    metrics_port: tuple[str, int] | None = field(default=None, metadata={"env": "METRICS_PORT"})
    # auto, confluent, single-object or raw (orderpipe.serde.wire); raw and the writer schema's file go together.
    avro_wire_format: str = field(default=AUTO, metadata={"env": "AVRO_WIRE_FORMAT"})
    avro_writer_schema: str = field(default="", metadata={"env": "AVRO_WRITER_SCHEMA"})
    # The environment variable names given (not defaults): a given setting wins over the properties file.
    given: frozenset[str] = field(default=frozenset(), repr=False, metadata={"env": ""})

    def secrets(self) -> frozenset[str]:
        """Every secret value these settings hold, for scrubbing output (text.Scrubber).

        The secret fields, the password of `user:password` pairs and of the registry
        URL, and the values of properties-file keys that name a password, secret,
        token, JAAS configuration or credentials.
        """
        found = {getattr(self, name) for name in SECRET_FIELDS if isinstance(getattr(self, name), str)}
        found.add(self.registry_basic_auth_user_info.partition(":")[2])
        userinfo = re.match(r"^[a-z][a-z0-9+.-]*://([^/\s]*)@", self.schema_registry_url, re.I)
        if userinfo:
            found |= {userinfo.group(1), userinfo.group(1).partition(":")[2]}
        found |= {value for key, value in self.client_properties if _SECRET_KEY.search(key) and "endpoint" not in key}
        return frozenset(value for value in found if value)

    @property
    def registry_address(self) -> str:
        """The registry URL without its credentials, for output."""
        return redact(self.schema_registry_url)

    @property
    def min_isr(self) -> int:
        """The min.insync.replicas of the topics the programs create."""
        return self.min_insync_replicas or (2 if self.replication_factor >= 3 else 1)

    @property
    def max_order_price_cents(self) -> int:
        return to_cents(self.max_order_price)

    def kafka_client_config(self) -> dict[str, Any]:
        """The librdkafka settings every client shares: where the brokers are and how to log in.

        The properties file (KAFKA_CLIENT_CONFIG) comes first; each setting given
        explicitly (flag, environment, .env) replaces its key, and so does each
        default the file does not set.
        """
        conf: dict[str, Any] = dict(self.client_properties)

        def put(key: str, value: Any) -> None:  # replacing the file's spelling under librdkafka's other name
            conf.pop(_LIBRDKAFKA_ALIASES.get(key, ""), None)
            conf[key] = value

        for key, value, env in (
            ("bootstrap.servers", self.bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS"),
            ("security.protocol", self.security_protocol, "KAFKA_SECURITY_PROTOCOL"),
        ):
            if env in self.given or not ({key, _LIBRDKAFKA_ALIASES.get(key, "")} & conf.keys()):
                put(key, value)
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
            "sasl.oauthbearer.token.endpoint.url": self.oauth_token_endpoint_url,
            "sasl.oauthbearer.client.id": self.oauth_client_id,
            "sasl.oauthbearer.client.secret": self.oauth_client_secret,
            "sasl.oauthbearer.scope": self.oauth_scope,
        }
        for key, value in optional.items():
            if value:
                put(key, value)
        if self.oauth_token_endpoint_url:
            conf["sasl.oauthbearer.method"] = "oidc"
        # Brokers as they come create a topic that a metadata request or a first send
        # names, with one partition and the broker's defaults: no client of ours asks
        # them to. Topics are created only by the programs' set-up, as configured.
        conf["allow.auto.create.topics"] = False
        return conf

    def registry_client_config(self) -> dict[str, Any]:
        """The settings of confluent-kafka's SchemaRegistryClient (credentials in the URL work too)."""
        conf: dict[str, Any] = {"url": self.schema_registry_url}
        optional = {
            "basic.auth.user.info": self.registry_basic_auth_user_info,
            "ssl.ca.location": self.registry_ssl_ca_location,
            "ssl.certificate.location": self.registry_ssl_certificate_location,
            "ssl.key.location": self.registry_ssl_key_location,
        }
        conf.update((key, value) for key, value in optional.items() if value)
        return conf


ENV_NAMES: tuple[str, ...] = tuple(f.metadata["env"] for f in fields(Settings) if f.metadata["env"])


_PARSERS: dict[str, parsers.Parser] = {
    "bootstrap_servers": parsers.bootstrap,
    "schema_registry_url": parsers.url,
    "orders_topic": parsers.topic,
    "retry_topic": parsers.topic,
    "dlq_topic": parsers.topic,
    "stats_topic": parsers.topic,
    "consumer_group": parsers.group,
    "orders_partitions": parsers.whole(1, 10_000),
    "replication_factor": parsers.whole(1, 32),
    "min_insync_replicas": parsers.whole_or_empty(1, 32),
    "max_retries": parsers.whole(0, 100),
    "retry_backoff_ms": parsers.whole(0, DAY_MS),
    "retry_backoff_max_ms": parsers.whole(0, DAY_MS),
    "max_order_price": parsers.price,
    "security_protocol": parsers.choice(SECURITY_PROTOCOLS),
    "sasl_mechanism": parsers.choice(SASL_MECHANISMS, allow_empty=True),
    "sasl_username": parsers.text,
    "sasl_password": lambda raw: raw,
    "ssl_ca_location": parsers.text,
    "ssl_certificate_location": parsers.text,
    "ssl_key_location": parsers.text,
    "ssl_key_password": lambda raw: raw,
    "oauth_token_endpoint_url": parsers.https_url,
    "oauth_client_id": parsers.text,
    "oauth_client_secret": lambda raw: raw,
    "oauth_scope": parsers.text,
    "client_config": parsers.text,
    "registry_basic_auth_user_info": parsers.user_info,
    "registry_ssl_ca_location": parsers.text,
    "registry_ssl_certificate_location": parsers.text,
    "registry_ssl_key_location": parsers.text,
    "create_topics": parsers.flag,
    "registry_auto_register": parsers.flag,
    "metrics_port": parsers.listen_address,
    "avro_wire_format": parsers.choice(WIRE_FORMATS),
    "avro_writer_schema": parsers.text,
}


def build_settings(raw: Mapping[str, str], client_properties: str | None = None) -> Settings:
    """Builds the settings from raw text values keyed by environment variable name.

    Variables that are absent keep their defaults; names that are not settings are
    ignored.

    Args:
        client_properties: the text of the KAFKA_CLIENT_CONFIG file, when one is named.

    Raises:
        ConfigError: naming every bad variable and what it expects.
    """
    values, problems = _parsed(raw, client_properties)
    settings = Settings(**values)
    problems.extend(_mismatches(settings, raw, values))
    problems.extend(_login_problems(settings))
    if problems:
        raise ConfigError("; ".join(problems))
    return settings


def _parsed(raw: Mapping[str, str], client_properties: str | None) -> tuple[dict[str, Any], list[str]]:
    """Each given setting's value, by field name, and a sentence for each that is not a good value."""
    values: dict[str, Any] = {"given": frozenset(name for name in raw if name in ENV_NAMES)}
    problems: list[str] = []
    for f in fields(Settings):
        name = f.metadata["env"]
        if not name or name not in raw:
            continue
        try:
            values[f.name] = _PARSERS[f.name](raw[name])
        except ValueError as exc:
            # A value with an "@" may carry credentials even where redact finds no URL.
            hidden = f.name in SECRET_FIELDS or "@" in raw[name]
            shown = "(hidden)" if hidden else repr(raw[name])
            problems.append(f"{name} must be {exc}, got {shown}")
    if client_properties is not None:
        try:
            values["client_properties"] = parsers.parse_properties(client_properties)
        except ValueError as exc:
            problems.append(f"KAFKA_CLIENT_CONFIG must be {exc}")
    return values, problems


def _mismatches(settings: Settings, raw: Mapping[str, str], values: Mapping[str, Any]) -> list[str]:
    """Settings each good alone that do not go together: topics, backoffs, replicas, wire format."""
    problems: list[str] = []
    topics = [settings.orders_topic, settings.retry_topic, settings.dlq_topic, settings.stats_topic]
    if len(set(topics)) < len(topics):
        problems.append(
            "ORDERS_TOPIC, RETRY_TOPIC, DLQ_TOPIC and STATS_TOPIC must be four different topics, "
            f"got {', '.join(topics)}"
        )
    if settings.retry_backoff_max_ms < settings.retry_backoff_ms:
        problems.append(
            f"RETRY_BACKOFF_MAX_MS must be >= RETRY_BACKOFF_MS ({settings.retry_backoff_ms}), "
            f"got {settings.retry_backoff_max_ms}"
        )
    if settings.min_insync_replicas > settings.replication_factor:
        problems.append(
            f"MIN_INSYNC_REPLICAS must be at most REPLICATION_FACTOR ({settings.replication_factor}), or no write "
            f"could ever be acknowledged, got {settings.min_insync_replicas}"
        )
    if settings.avro_wire_format == RAW and not settings.avro_writer_schema:
        problems.append("AVRO_WIRE_FORMAT=raw needs AVRO_WRITER_SCHEMA: the schema file bare bodies are written with")
    # Without raw a writer schema would be ignored, and every bare body dead-lettered as an
    # unknown wire format. A bad AVRO_WIRE_FORMAT is named above already, not again here.
    wire_format_ok = "AVRO_WIRE_FORMAT" not in raw or "avro_wire_format" in values
    if settings.avro_writer_schema and settings.avro_wire_format != RAW and wire_format_ok:
        problems.append(
            f"AVRO_WRITER_SCHEMA needs AVRO_WIRE_FORMAT=raw, got AVRO_WIRE_FORMAT={settings.avro_wire_format}: "
            "only bare bodies are read and written with it (set AVRO_WIRE_FORMAT=raw, "
            "or leave AVRO_WRITER_SCHEMA empty)"
        )
    if settings.avro_wire_format == CONFLUENT and not settings.schema_registry_url:
        problems.append(
            "AVRO_WIRE_FORMAT=confluent needs SCHEMA_REGISTRY_URL: that format names a registry's schema id"
        )
    return problems


def _login_problems(settings: Settings) -> list[str]:
    """Settings that only work together: each gap named with what completes it."""
    problems: list[str] = []
    mechanism, protocol = settings.sasl_mechanism, settings.security_protocol
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
        settings.sasl_username and settings.sasl_password
    ):
        problems.append(f"KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
    oauth = (settings.oauth_token_endpoint_url, settings.oauth_client_id, settings.oauth_client_secret)
    if mechanism == "OAUTHBEARER" and not all(oauth):
        problems.append(
            "KAFKA_SASL_MECHANISM=OAUTHBEARER needs KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL, "
            "KAFKA_SASL_OAUTHBEARER_CLIENT_ID and KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"
        )
    if mechanism and protocol in ("PLAINTEXT", "SSL") and "security.protocol" not in dict(settings.client_properties):
        problems.append(f"KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SECURITY_PROTOCOL SASL_SSL or SASL_PLAINTEXT")
    if bool(settings.ssl_certificate_location) != bool(settings.ssl_key_location):
        problems.append("KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together (mutual TLS)")
    return problems
