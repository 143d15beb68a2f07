"""How each setting's raw text is read: one parser per kind of value, each naming what a good value looks like.

A parser takes the text of an environment variable (or flag, or `.env` line) and
returns the value, or raises ValueError with a phrase that completes "X must be ...".
Which setting takes which parser is `_PARSERS` in orderpipe/config/settings.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "MAX_PRICE",
    "Parser",
    "bootstrap",
    "choice",
    "flag",
    "group",
    "https_url",
    "listen_address",
    "parse_properties",
    "price",
    "text",
    "topic",
    "url",
    "user_info",
    "whole",
    "whole_or_empty",
]

# The largest order price the settings take.
MAX_PRICE = Decimal(10**12)
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# METRICS_PORT: PORT, HOST:PORT or [IPv6]:PORT.
_LISTEN = re.compile(r"(?:(?:(?P<host>[^\s:,/\[\]]+)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\]):)?(?P<port>[0-9]{1,5})")
_HOST_PORT = re.compile(r"^[^\s:,]+:(\d{1,5})$|^\[[0-9A-Fa-f:]+\]:(\d{1,5})$")

Parser = Callable[[str], Any]


def text(raw: str) -> str:
    return raw.strip()


def bootstrap(raw: str) -> str:
    servers = [part.strip() for part in raw.split(",")]
    for server in servers:
        match = _HOST_PORT.match(server)
        port = match and int(match.group(1) or match.group(2))
        if not port or not 1 <= port <= 65535:
            raise ValueError("a comma-separated list of host:port pairs, for example localhost:9092")
    return ",".join(servers)


def url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("empty (no registry) or an http:// or https:// URL, for example http://localhost:8081")
    return value


def topic(raw: str) -> str:
    value = raw.strip()
    if not _TOPIC_NAME.match(value):
        raise ValueError("a Kafka topic name: 1 to 249 characters from [A-Za-z0-9._-]")
    return value


def group(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("a non-empty consumer group name")
    return value


def whole(minimum: int, maximum: int) -> Parser:
    def parse(raw: str) -> int:
        text = raw.strip()
        value = int(text) if _INTEGER.fullmatch(text) else minimum - 1
        if not minimum <= value <= maximum:
            raise ValueError(f"a whole number from {minimum} to {maximum}")
        return value

    return parse


def whole_or_empty(minimum: int, maximum: int) -> Parser:
    """A whole number, or 0 for an empty value (the setting's default then applies)."""
    parse_whole = whole(minimum, maximum)

    def parse(raw: str) -> int:
        if not raw.strip():
            return 0
        try:
            return int(parse_whole(raw))
        except ValueError as exc:
            raise ValueError(f"{exc}, or empty") from None

    return parse


def price(raw: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value <= 0 or value > MAX_PRICE:
        raise ValueError(f"a positive amount in dollars up to {MAX_PRICE}, for example 100000 or 2500.50")
    return value


def choice(options: tuple[str, ...], allow_empty: bool = False) -> Parser:
    """One of `options`, in any case (given back in the options' own case)."""
    by_case = {option.casefold(): option for option in options}

    def parse(raw: str) -> str:
        value = raw.strip()
        if not value and allow_empty:
            return ""
        if value.casefold() not in by_case:
            empty = "empty or " if allow_empty else ""
            raise ValueError(f"{empty}one of {', '.join(options)}")
        return by_case[value.casefold()]

    return parse


def https_url(raw: str) -> str:
    value = raw.strip()
    if value and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("empty or an https:// URL of the OAuth token endpoint")
    return value


def user_info(raw: str) -> str:
    if raw and ":" not in raw:
        raise ValueError("empty or user:password")
    return raw


def listen_address(raw: str) -> tuple[str, int] | None:
    """PORT (every interface, as prometheus_client binds) or HOST:PORT, [IPv6]:PORT; empty: None. Port 0: any free."""
    value = raw.strip()
    if not value:
        return None
    match = _LISTEN.fullmatch(value)
    if match is None or int(match.group("port")) > 65535:
        raise ValueError("empty (off), a port from 0 to 65535 or HOST:PORT, for example 9401 or 127.0.0.1:9401")
    return match.group("host") or match.group("ipv6") or "0.0.0.0", int(match.group("port"))


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def parse_properties(text: str) -> tuple[tuple[str, str], ...]:
    """The `key=value` pairs of a Java-style properties file (`#` and `!` comments, blank lines skipped).

    Raises:
        ValueError: a line that is neither a comment nor `key=value` (its number is named, not its text).
    """
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a properties file of key=value lines; line {number} is not one")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
