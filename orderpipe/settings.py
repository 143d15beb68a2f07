"""The pipeline's settings as one frozen, validated object (DESIGN section 7).

This module knows every setting: its environment variable, its default and what a
good value looks like. It never reads the environment itself: the top-level
`config.py` gathers raw values (flags, environment, `.env`) and calls
`build_settings`, so the package depends on nothing above it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from orderpipe.errors import ConfigError
from orderpipe.money import to_cents
from orderpipe.text import redact

__all__ = ["ENV_NAMES", "Settings", "build_settings"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# The largest backoff and order price the settings take.
DAY_MS = 86_400_000
MAX_PRICE = Decimal(10**12)
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^[^\s:,]+:(\d{1,5})$|^\[[0-9A-Fa-f:]+\]:(\d{1,5})$")


@dataclass(frozen=True)
class Settings:
    """Validated pipeline settings; build one with `build_settings` (config.load_settings does).

    Field metadata names the environment variable each field comes from. The SASL
    password is kept out of `repr` so that settings can be logged safely.
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
    max_retries: int = field(default=3, metadata={"env": "MAX_RETRIES"})
    retry_backoff_ms: int = field(default=1000, metadata={"env": "RETRY_BACKOFF_MS"})
    retry_backoff_max_ms: int = field(default=30000, metadata={"env": "RETRY_BACKOFF_MAX_MS"})
    max_order_price: Decimal = field(default=Decimal("100000"), metadata={"env": "MAX_ORDER_PRICE"})
    security_protocol: str = field(default="PLAINTEXT", metadata={"env": "KAFKA_SECURITY_PROTOCOL"})
    sasl_mechanism: str = field(default="", metadata={"env": "KAFKA_SASL_MECHANISM"})
    sasl_username: str = field(default="", metadata={"env": "KAFKA_SASL_USERNAME"})
    sasl_password: str = field(default="", repr=False, metadata={"env": "KAFKA_SASL_PASSWORD"})
    ssl_ca_location: str = field(default="", metadata={"env": "KAFKA_SSL_CA_LOCATION"})

    @property
    def registry_address(self) -> str:
        """The registry URL without its credentials, for output."""
        return redact(self.schema_registry_url)

    @property
    def max_order_price_cents(self) -> int:
        return to_cents(self.max_order_price)

    def kafka_client_config(self) -> dict[str, Any]:
        """The librdkafka settings every client shares: where the brokers are and how to log in."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


ENV_NAMES: tuple[str, ...] = tuple(f.metadata["env"] for f in fields(Settings))

Parser = Callable[[str], Any]


def _text(raw: str) -> str:
    return raw.strip()


def _bootstrap(raw: str) -> str:
    servers = [part.strip() for part in raw.split(",")]
    for server in servers:
        match = _HOST_PORT.match(server)
        port = match and int(match.group(1) or match.group(2))
        if not port or not 1 <= port <= 65535:
            raise ValueError("a comma-separated list of host:port pairs, for example localhost:9092")
    return ",".join(servers)


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("empty (no registry) or an http:// or https:// URL, for example http://localhost:8081")
    return value


def _topic(raw: str) -> str:
    value = raw.strip()
    if not _TOPIC_NAME.match(value):
        raise ValueError("a Kafka topic name: 1 to 249 characters from [A-Za-z0-9._-]")
    return value


def _group(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("a non-empty consumer group name")
    return value


def _whole(minimum: int, maximum: int) -> Parser:
    def parse(raw: str) -> int:
        text = raw.strip()
        value = int(text) if _INTEGER.fullmatch(text) else minimum - 1
        if not minimum <= value <= maximum:
            raise ValueError(f"a whole number from {minimum} to {maximum}")
        return value

    return parse


def _price(raw: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value <= 0 or value > MAX_PRICE:
        raise ValueError(f"a positive amount in dollars up to {MAX_PRICE}, for example 100000 or 2500.50")
    return value


def _choice(options: tuple[str, ...], allow_empty: bool = False) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().upper()
        if (value or not allow_empty) and value not in options:
            empty = "empty or " if allow_empty else ""
            raise ValueError(f"{empty}one of {', '.join(options)}")
        return value

    return parse


_PARSERS: dict[str, Parser] = {
    "bootstrap_servers": _bootstrap,
    "schema_registry_url": _url,
    "orders_topic": _topic,
    "retry_topic": _topic,
    "dlq_topic": _topic,
    "stats_topic": _topic,
    "consumer_group": _group,
    "orders_partitions": _whole(1, 10_000),
    "replication_factor": _whole(1, 32),
    "max_retries": _whole(0, 100),
    "retry_backoff_ms": _whole(0, DAY_MS),
    "retry_backoff_max_ms": _whole(0, DAY_MS),
    "max_order_price": _price,
    "security_protocol": _choice(SECURITY_PROTOCOLS),
    "sasl_mechanism": _choice(SASL_MECHANISMS, allow_empty=True),
    "sasl_username": _text,
    "sasl_password": lambda raw: raw,
    "ssl_ca_location": _text,
}


def build_settings(raw: Mapping[str, str]) -> Settings:
    """Builds the settings from raw text values keyed by environment variable name.

    Variables that are absent keep their defaults; names that are not settings are
    ignored.

    Raises:
        ConfigError: naming every bad variable and what it expects.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        name = f.metadata["env"]
        if name not in raw:
            continue
        try:
            values[f.name] = _PARSERS[f.name](raw[name])
        except ValueError as exc:
            # A value with an "@" may carry credentials even where redact finds no URL.
            hidden = f.name == "sasl_password" or "@" in raw[name]
            shown = "(hidden)" if hidden else repr(raw[name])
            problems.append(f"{name} must be {exc}, got {shown}")

    settings = Settings(**values)
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
    if problems:
        raise ConfigError("; ".join(problems))
    return settings
