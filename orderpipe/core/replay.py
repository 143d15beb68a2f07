"""Replaying the DLQ exactly once: the ledger of what was replayed, and the record put back, free of Kafka.

`dlq.py replay` writes each replayed record to `orders` and an entry to the ledger
topic (`<DLQ topic>-replayed`, compacted) in one Kafka transaction, so a record is
replayed exactly when its ledger entry is committed. A later run reads the ledger
first and skips what it holds, whatever filter that run uses; a run killed at any
instant leaves either both writes of a record or neither.

A ledger entry's key is the record's provenance, `<DLQ topic>:<partition>:<offset>`
(the `dlq.replayed-from` header the replayed record carries); its value is the DLQ
record's timestamp in epoch ms. A DLQ topic deleted and created again reuses
offsets, so an entry counts only for the record with its timestamp. The ledger is
untrusted like every topic: a key that is not a provenance is ignored, a tombstone
forgets nothing, a later entry never takes back an earlier one, and a value that is
not a timestamp marks its key replayed (a record is never replayed twice because of
a damaged or forged entry; unreadable entries are counted and reported).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orderpipe.core.dead_letters import H_REPLAYED_FROM
from orderpipe.model.records import H_ORIGINAL_PARTITION, PIPELINE_HEADERS, Incoming, record_bytes

__all__ = ["LEDGER_SUFFIX", "Ledger", "Replayed", "ledger_topic", "provenance", "replayed_record"]

LEDGER_SUFFIX = "-replayed"
# Kafka topic names are at most 249 characters of [a-zA-Z0-9._-].
_PROVENANCE = re.compile(r"[A-Za-z0-9._-]{1,249}:[0-9]{1,10}:[0-9]{1,19}")
_TIMESTAMP = re.compile(r"-?[0-9]{1,19}")
# A marker for an entry whose value could not be read: its key counts as replayed.
_UNREADABLE = object()


def ledger_topic(dlq_topic: str) -> str:
    """The ledger topic of a DLQ topic."""
    return dlq_topic + LEDGER_SUFFIX


def provenance(topic: str, partition: int, offset: int) -> str:
    """Where a replayed record came from: `<dlq topic>:<partition>:<offset>`."""
    return f"{topic}:{partition}:{offset}"


class Ledger:
    """What earlier replays committed, read from the ledger topic.

    Every timestamp seen for a key counts, so a later entry cannot take an earlier
    one back, and a tombstone forgets nothing: a DLQ record once replayed stays
    replayed (one that fails again is dead-lettered as a new record, which can be
    replayed in its turn).
    """

    def __init__(self) -> None:
        self._entries: dict[str, set[object]] = {}
        self.ignored = 0  # records whose key is not a provenance
        self.unreadable = 0  # entries whose value was not a timestamp (their records count as replayed)

    def read(self, key: bytes | None, value: bytes | None) -> None:
        """Takes one ledger record, as read from the topic."""
        text = key.decode("ascii", errors="replace") if key is not None and len(key) <= 300 else ""
        if not _PROVENANCE.fullmatch(text):
            self.ignored += 1
            return
        if value is None:
            return
        stamp = value.decode("ascii", errors="replace").strip() if len(value) <= 30 else ""
        readable = _TIMESTAMP.fullmatch(stamp)
        self.unreadable += not readable
        self._entries.setdefault(text, set()).add(int(stamp) if readable else _UNREADABLE)

    def holds(self, record: Incoming) -> bool:
        """Whether this DLQ record was replayed already."""
        entry = self._entries.get(provenance(record.topic, record.partition, record.offset), ())
        return _UNREADABLE in entry or record.timestamp in entry

    @staticmethod
    def entry(record: Incoming) -> tuple[bytes, bytes]:
        """The ledger record (key, value) that marks this DLQ record replayed."""
        return provenance(record.topic, record.partition, record.offset).encode(), str(record.timestamp).encode()


@dataclass(frozen=True)
class Replayed:
    """A DLQ record as it goes back onto `orders`."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int | None  # its original partition when known and still there; None: by key

    @property
    def size(self) -> int:
        """About what it costs on the wire (records.record_bytes), to hold against the producer's limit."""
        return record_bytes(self.key, self.value, self.headers)


def replayed_record(record: Incoming, orders_partitions: int) -> Replayed:
    """The record to put back: original key and value bytes, the producer's own headers, and where it came from.

    The pipeline's headers (and an earlier `dlq.replayed-from`) are removed, so the
    record starts afresh on `orders`: no retry attempt carried over, nothing that
    could be taken for the pipeline's own. It goes to the partition it first arrived
    on, keeping its place in its key's order, unless that header is missing,
    unreadable or past the topic's partitions.
    """
    headers = tuple((k, v) for k, v in record.headers if k not in PIPELINE_HEADERS and k != H_REPLAYED_FROM)
    origin = (H_REPLAYED_FROM, provenance(record.topic, record.partition, record.offset).encode())
    return Replayed(record.key, record.value, (*headers, origin), _partition(record, orders_partitions))


def _partition(record: Incoming, partitions: int) -> int | None:
    text = next((v for k, v in reversed(record.headers) if k == H_ORIGINAL_PARTITION), b"")
    number = text.decode("ascii", errors="replace").strip() if len(text) <= 10 else ""
    if number.isdecimal() and number.isascii() and int(number) < partitions:
        return int(number)
    return None
