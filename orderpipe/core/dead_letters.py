"""The DLQ as an operator reads it: one entry per dead letter, filters, lines and JSON, free of Kafka.

A record on `orders-dlq` carries the original key and value bytes and the pipeline's
headers (docs/wire-formats.md, "Headers"): why it was dead-lettered, the last error, when, and where
it first arrived. Every byte of it is untrusted (anyone who may write to the topic
can write anything), so each header is read as UTF-8 with replacement, cut to a
bounded length and escaped before it reaches a terminal; numbers are read only as
short decimals; a value that does not decode leaves the order id unknown.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from orderpipe.errors import ConfigError, OrderPipeError
from orderpipe.model.order import Order
from orderpipe.model.records import (
    H_ATTEMPT,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_FAILED_AT,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    H_REASON,
    H_TRUNCATED,
    Incoming,
)
from orderpipe.text import printable

__all__ = ["DlqEntry", "DlqFilter", "dead_letter", "parse_since", "summary_line"]

H_REPLAYED_FROM = "dlq.replayed-from"
# The longest header text shown; error.message is at most 1 KiB when the pipeline wrote it.
TEXT_LIMIT = 1024
_NUMBER = re.compile(r"-?[0-9]{1,19}")
_RELATIVE = re.compile(r"([0-9]{1,6})([smhd])")
_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True)
class DlqEntry:
    """One record of the DLQ, as read (None where a header is missing or unreadable)."""

    partition: int
    offset: int
    reason: str
    order_id: str | None
    error_class: str | None
    error_message: str | None
    failed_at_ms: int | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    retry_attempt: int | None
    truncated: str | None
    replayed_from: str | None

    def line(self, topic: str) -> str:
        """One line for a person: where, why, which order, what failed, when, from where."""
        origin = (
            f"{self.original_topic}-{self.original_partition}@{self.original_offset}"
            if self.original_topic is not None
            else "origin unknown"
        )
        return (
            f"{topic}-{self.partition}@{self.offset} {self.reason} order {self.order_id or '?'}: {self._error()} "
            f"(failed {self._failed_at()}; from {origin}{self._extras()})"
        )

    def cells(self) -> tuple[str, str, str, str, str]:
        """The columns of `dlq.py list`'s table on a terminal: partition@offset, reason, order id, failed at, error."""
        return (
            f"{self.partition}@{self.offset}",
            self.reason,
            self.order_id or "?",
            self._failed_at(),
            self._error() + self._extras(),
        )

    def _error(self) -> str:
        return ": ".join(part for part in (self.error_class, self.error_message) if part) or "no error recorded"

    def _failed_at(self) -> str:
        return _iso(self.failed_at_ms) if self.failed_at_ms is not None else "time unknown"

    def _extras(self) -> str:
        return "".join(
            f"; {label} {value}"
            for label, value in (("truncated:", self.truncated), ("replayed from", self.replayed_from))
            if value is not None
        )

    def as_json(self) -> dict[str, object]:
        """The entry as a JSON object (for `--json`, one per line)."""
        return dataclasses.asdict(self)


def dead_letter(record: Incoming, decode: Callable[[bytes | None], Order]) -> DlqEntry:
    """Reads one DLQ record; `decode` turns its value into an order (it raises when it cannot)."""
    headers = _headers(record.headers)
    return DlqEntry(
        partition=record.partition,
        offset=record.offset,
        reason=_text(headers.get(H_REASON)) or "unknown",
        order_id=_order_id(record.value, decode),
        error_class=_text(headers.get(H_ERROR_CLASS)),
        error_message=_text(headers.get(H_ERROR_MESSAGE)),
        failed_at_ms=_number(headers.get(H_FAILED_AT)),
        original_topic=_text(headers.get(H_ORIGINAL_TOPIC)),
        original_partition=_number(headers.get(H_ORIGINAL_PARTITION)),
        original_offset=_number(headers.get(H_ORIGINAL_OFFSET)),
        retry_attempt=_number(headers.get(H_ATTEMPT)),
        truncated=_text(headers.get(H_TRUNCATED)),
        replayed_from=_text(headers.get(H_REPLAYED_FROM)),
    )


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters a command is about; each given criterion must hold."""

    reason: str | None = None
    order_id: str | None = None
    since_ms: int | None = None  # dead-lettered at or after (the record's own time when the header is missing)

    def matches(self, letter: DlqEntry, record_timestamp_ms: int) -> bool:
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.order_id is not None and letter.order_id != self.order_id:
            return False
        at = letter.failed_at_ms if letter.failed_at_ms is not None else record_timestamp_ms
        return self.since_ms is None or at >= self.since_ms


def parse_since(text: str, now_ms: int) -> int:
    """`--since` as epoch ms: a duration back from now (`90s`, `30m`, `2h`, `7d`) or an ISO 8601 date or time.

    A time without a zone is taken as UTC.

    Raises:
        ConfigError: naming what was expected.
    """
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now_ms - int(relative.group(1)) * _UNITS_MS[relative.group(2)]
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since expects a duration back from now (90s, 30m, 2h, 7d) or an ISO 8601 time "
            f"(2026-11-30 or 2026-11-30T12:00:00Z), got {printable(text, 50)!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def summary_line(letters: Iterable[DlqEntry]) -> str:
    """The last line of a listing: how many, by reason."""
    counts = Counter(letter.reason for letter in letters)
    total = sum(counts.values())
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
    return f"{total} dead letters" + (f" ({by_reason})" if by_reason else "")


def _headers(headers: Iterable[tuple[str, bytes | None]]) -> Mapping[str, bytes | None]:
    """The headers by name; the last of a repeated name wins, as the pipeline replaces rather than appends."""
    return dict(headers)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return printable(value.decode("utf-8", errors="replace"), TEXT_LIMIT)


def _number(value: bytes | None) -> int | None:
    if value is None:
        return None
    text = value.decode("ascii", errors="replace").strip()
    return int(text) if _NUMBER.fullmatch(text) else None


def _order_id(value: bytes | None, decode: Callable[[bytes | None], Order]) -> str | None:
    try:
        return printable(decode(value).order_id, TEXT_LIMIT)
    except OrderPipeError:
        return None


def _iso(epoch_ms: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):  # a forged time out of the calendar's range
        return f"{epoch_ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
