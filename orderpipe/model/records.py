"""The consumed record as plain data (`Incoming`), where it first arrived (`Origin`), and the pipeline's headers.

The records a poll brings come from the edge (orderpipe/kafka/messages.py, or the
in-memory twin) as `Run`s, free of Kafka: the records of one partition that came one
after another. A run holds each record's value, and makes a record whole (an
`Incoming`) only when asked, so the common record, read from its value alone, costs
no object of its own. Routing (orderpipe/core/routing.py) decides what to do with them. The pipeline's own headers
(docs/wire-formats.md, "Headers") are named here, with what a record
costs on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import NamedTuple

__all__ = [
    "H_ATTEMPT",
    "H_ERROR_CLASS",
    "H_ERROR_MESSAGE",
    "H_FAILED_AT",
    "H_NOT_BEFORE",
    "H_ORIGINAL_OFFSET",
    "H_ORIGINAL_PARTITION",
    "H_ORIGINAL_TIMESTAMP",
    "H_ORIGINAL_TOPIC",
    "H_REASON",
    "H_TRUNCATED",
    "PIPELINE_HEADERS",
    "UNREADABLE_HEADERS",
    "Headers",
    "Incoming",
    "Origin",
    "Run",
    "record_bytes",
    "runs_of",
]

Headers = tuple[tuple[str, bytes], ...]

H_ATTEMPT = "retry.attempt"
H_NOT_BEFORE = "retry.not-before"
H_REASON = "dlq.reason"
H_ERROR_CLASS = "error.class"
H_ERROR_MESSAGE = "error.message"
H_ORIGINAL_TOPIC = "original.topic"
H_ORIGINAL_PARTITION = "original.partition"
H_ORIGINAL_OFFSET = "original.offset"
H_ORIGINAL_TIMESTAMP = "original.timestamp"
H_FAILED_AT = "dlq.failed-at"
H_TRUNCATED = "dlq.truncated"
PIPELINE_HEADERS = frozenset(
    {
        H_ATTEMPT,
        H_NOT_BEFORE,
        H_REASON,
        H_ERROR_CLASS,
        H_ERROR_MESSAGE,
        H_ORIGINAL_TOPIC,
        H_ORIGINAL_PARTITION,
        H_ORIGINAL_OFFSET,
        H_ORIGINAL_TIMESTAMP,
        H_FAILED_AT,
        H_TRUNCATED,
    }
)
_NUMBER = re.compile(r"[0-9]{1,19}")
# Incoming.unreadable for a record whose header names are not all UTF-8 (Kafka allows any bytes).
UNREADABLE_HEADERS = "a header name is not valid UTF-8, so the record's headers could not be read"
# What a record costs beyond its key, value and header bytes when it is produced:
# its framing in the record batch, and per header two length prefixes.
RECORD_OVERHEAD_BYTES = 128
HEADER_OVERHEAD_BYTES = 10


@dataclass(frozen=True)
class Origin:
    """Where a record first arrived on the orders topic; kept across retries."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class Incoming(NamedTuple):
    """One consumed record, as plain data (a named tuple: one is made per record)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    # True for records read from the retry topic. Only those carry the pipeline's
    # headers (still untrusted): a DLQ record replayed onto `orders` starts afresh.
    from_retry_topic: bool = False
    # Why the record could not be read as it was written (its headers, say), or "".
    # Such a record is dead-lettered with what could be read.
    unreadable: str = ""

    def header(self, name: str) -> str | None:
        """The last value of a header as text, or None when absent or not UTF-8."""
        for key, raw in reversed(self.headers):
            if key == name:
                try:
                    return raw.decode("utf-8")
                except (UnicodeDecodeError, AttributeError):
                    return None
        return None

    def header_int(self, name: str) -> int | None:
        """A header as a whole number from 0 to 2**63 - 1 (a Kafka offset's range), else None."""
        text = self.header(name)
        if text is None or not _NUMBER.fullmatch(text):
            return None
        number = int(text)
        return number if number < 2**63 else None

    @property
    def attempt(self) -> int:
        """How many retries this record already is (0 on the orders topic)."""
        return (self.header_int(H_ATTEMPT) or 0) if self.from_retry_topic else 0

    @property
    def not_before(self) -> int | None:
        return self.header_int(H_NOT_BEFORE) if self.from_retry_topic else None

    @property
    def origin(self) -> Origin:
        if not self.from_retry_topic:
            return Origin(self.topic, self.partition, self.offset, self.timestamp)
        topic = self.header(H_ORIGINAL_TOPIC)
        partition = self.header_int(H_ORIGINAL_PARTITION)
        offset = self.header_int(H_ORIGINAL_OFFSET)
        timestamp = self.header_int(H_ORIGINAL_TIMESTAMP)
        if topic is None or partition is None or offset is None or timestamp is None:
            return Origin(self.topic, self.partition, self.offset, self.timestamp)
        return Origin(topic, partition, offset, timestamp)

    @property
    def label(self) -> str:
        """The record's key for people: the orderId when the key is text."""
        if self.key is None:
            return "(no key)"
        try:
            return self.key.decode("utf-8")
        except UnicodeDecodeError:
            return self.key.hex()


def record_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """About what a record costs on the wire, erring on the large side."""
    size = RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, data in headers:
        # An ASCII name (the pipeline's, and nearly every other) is as long in bytes as in characters.
        size += (len(name) if name.isascii() else len(name.encode("utf-8", errors="replace"))) + len(data)
        size += HEADER_OVERHEAD_BYTES
    return size


class Run:
    """Records of one partition that a poll returned one after another.

    Args:
        values: each record's value, in order.
        plain: every record of the run is of the orders topic (not the retry topic)
            and its headers, if it has any, are readable, so its value is all the
            fast lane needs to know of it: a valid order is processed whatever headers
            it carries.
        first_offset, last_offset: the offsets of the first and the last record.
        record: makes the record at an index whole (an attribute, not a method: called
            for every record the fast lane refuses).
    """

    __slots__ = (
        "_whole",
        "first_offset",
        "from_retry_topic",
        "last_offset",
        "partition",
        "plain",
        "record",
        "topic",
        "values",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        *,
        from_retry_topic: bool,
        plain: bool,
        values: list[bytes | None],
        first_offset: int,
        last_offset: int,
        record: Callable[[int], Incoming],
    ) -> None:
        self.topic, self.partition, self.from_retry_topic, self.plain = topic, partition, from_retry_topic, plain
        self.values, self.first_offset, self.last_offset = values, first_offset, last_offset
        self.record = record
        self._whole: list[Incoming] | None = None

    @classmethod
    def of_whole(cls, records: list[Incoming]) -> Run:
        """A run of records already whole: of one partition, and all plain or none (see `runs_of`)."""
        first = records[0]
        run = cls(
            first.topic,
            first.partition,
            from_retry_topic=first.from_retry_topic,
            plain=_is_plain(first),
            values=[record.value for record in records],
            first_offset=first.offset,
            last_offset=records[-1].offset,
            record=records.__getitem__,
        )
        run._whole = records
        return run

    def records(self) -> list[Incoming]:
        """Every record of the run, whole."""
        if self._whole is not None:
            return list(self._whole)
        return [self.record(index) for index in range(len(self.values))]

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        kind = "retry" if self.from_retry_topic else "plain" if self.plain else "unreadable"
        return f"Run({self.topic}-{self.partition}, offsets {self.first_offset}-{self.last_offset}, {len(self)} {kind})"


def _is_plain(record: Incoming) -> bool:
    """Whether a record's value is all the fast lane needs to know of it (see `Run`)."""
    return not (record.from_retry_topic or record.unreadable)


def runs_of(records: Iterable[Incoming]) -> list[Run]:
    """Records already whole (the twin's, and tests'), as the runs the edge would make of them.

    A run ends where the partition changes, and where a plain record follows one that
    is not, or the other way round, as at the edge.
    """
    return [Run.of_whole(list(group)) for _, group in groupby(records, _run_key)]


def _run_key(record: Incoming) -> tuple[str, int, bool, bool]:
    return record.topic, record.partition, record.from_retry_topic, _is_plain(record)
