"""The running-average state as it is kept in `orders-stats` (DESIGN section 3), free of Kafka.

Each input partition the consumer reads (of `orders` and of `orders-retry`) has one
record in the compacted stats topic: key `<topic>-<partition>`, value
`{"count": int, "sum_cents": int, "next_offset": int}`. Only the partition's current
owner writes it, in the same transaction as the partition's offsets, so the latest
value of each key is exactly what was processed up to the committed offset; the
offset is repeated in the value so the state can be resumed even if the group's
committed offsets expired. The group-wide average is the sum over all keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from orderpipe.errors import DeserializationError
from orderpipe.money import RunningAverage
from orderpipe.routing import Incoming

__all__ = ["Published", "StatsTable", "decode_stats", "encode_stats", "group_total", "stats_key", "topic_of_key"]


def stats_key(topic: str, partition: int) -> str:
    """The stats key of an input partition, e.g. `orders-0`."""
    return f"{topic}-{partition}"


def topic_of_key(key: str) -> str | None:
    """The input topic a stats key belongs to, or None when the key is not of that shape."""
    topic, sep, partition = key.rpartition("-")
    return topic if sep and topic and partition.isdigit() else None


def encode_stats(state: RunningAverage, next_offset: int) -> bytes:
    value = {"count": state.count, "sum_cents": state.sum_cents, "next_offset": next_offset}
    return json.dumps(value, separators=(",", ":")).encode()


# A real value is under 100 bytes. The limit also bounds what json.loads is given:
# no integer long enough to be refused by Python, no nesting deep enough to recurse out.
MAX_STATS_VALUE_BYTES = 1024


def decode_stats(value: bytes) -> tuple[RunningAverage, int | None]:
    """Reads one stats value: the state, and the input offset it reaches (None if absent).

    Extra fields are ignored so later versions may add some.

    Raises:
        DeserializationError: the value is larger than MAX_STATS_VALUE_BYTES, or not a
            JSON object with non-negative integer `count` and `sum_cents` (and
            `next_offset`, when present).
    """
    if len(value) > MAX_STATS_VALUE_BYTES:
        raise DeserializationError(f"stats value is {len(value)} bytes, more than {MAX_STATS_VALUE_BYTES}")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as exc:  # not UTF-8 or not JSON; an integer too long to convert
        raise DeserializationError(f"stats value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DeserializationError("stats value is not a JSON object")
    next_offset = _count(data, "next_offset") if "next_offset" in data else None
    return RunningAverage(_count(data, "count"), _count(data, "sum_cents")), next_offset


def _count(data: dict[str, object], name: str) -> int:
    number = data.get(name)
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise DeserializationError(f"stats value needs a non-negative integer {name}, got {number!r}")
    return number


def group_total(
    published: Mapping[str, RunningAverage],
    own: Mapping[str, RunningAverage],
    topics: Iterable[str],
) -> RunningAverage:
    """The group-wide state: this consumer's partitions from memory, every other from the topic.

    Args:
        published: the latest value of each key read from the stats topic.
        own: the state of the partitions this consumer owns (newer than the topic's).
        topics: the input topics that count; keys of other topics are ignored, so a
            stats topic shared by mistake does not mix pipelines.
    """
    wanted = set(topics)
    total = RunningAverage()
    for key, state in published.items():
        if key not in own and topic_of_key(key) in wanted:
            total += state
    for state in own.values():
        total += state
    return total


class Published(NamedTuple):
    """What `orders-stats` holds, by stats key: each partition's state and the offset it reaches."""

    states: Mapping[str, RunningAverage]
    next_offsets: Mapping[str, int]


class StatsTable:
    """Each stats key's latest committed value, built from the topic's records in order."""

    def __init__(self) -> None:
        self.states: dict[str, RunningAverage] = {}
        self.next_offsets: dict[str, int] = {}

    @property
    def published(self) -> Published:
        return Published(self.states, self.next_offsets)

    def take(self, record: Incoming) -> None:
        """Applies one record of the stats topic.

        Raises:
            DeserializationError: the value is not a stats value; the table is unchanged.
        """
        key = record.key.decode("utf-8", errors="replace") if record.key else ""
        if record.value is None:
            self.states.pop(key, None)  # a tombstone: the key was deleted on purpose
            self.next_offsets.pop(key, None)
            return
        self.states[key], next_offset = decode_stats(record.value)
        if next_offset is None:
            self.next_offsets.pop(key, None)
        else:
            self.next_offsets[key] = next_offset
