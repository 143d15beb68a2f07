"""The running-average state as it is kept in `orders-stats`, free of Kafka.

Each input partition a consumer group reads (of `orders` and of `orders-retry`) has
one record in the compacted stats topic: key `<group>/<topic>-<partition>`, value
`{"count": int, "sum_cents": int, "next_offset": int}`. Only the partition's current
owner writes it, in the same transaction as the partition's offsets, so the value
written with a committed offset is exactly what was processed up to it; the offset
is in the value so that the state can be matched with the group's committed offset,
and resumed even if the group's offsets expired. The group-wide average is the sum
over the group's keys. The group in the key keeps pipelines apart that share a topic.

Every record of the topic is untrusted: keys of other groups are skipped, keys of
this group that name no input partition and values that do not parse (or hold
impossible numbers) are refused. On a restore the value used is the latest one whose
offset matches the group's committed offset, so a replayed or forged value with
another offset changes nothing (as long as the matching value is among the last
HISTORY of its key; when none matches, the latest is used, and the consumer says so).
Keys of before they named the group (`orders-0`) are read only for that match, so an
upgrade keeps the counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from orderpipe.core.ports import TP
from orderpipe.errors import DeserializationError
from orderpipe.model.money import RunningAverage
from orderpipe.model.records import Incoming

__all__ = [
    "MAX_PARTITIONS",
    "Latest",
    "StatsKeys",
    "StatsTable",
    "decode_stats",
    "encode_stats",
    "group_total",
    "stats_key",
]


# A real value is under 100 bytes. The limit also bounds what json.loads is given:
# no integer long enough to be refused by Python, no nesting deep enough to recurse out.
MAX_STATS_VALUE_BYTES = 1024
# Numbers no real state reaches: Kafka offsets are signed 64-bit, and 2**53 orders
# is more than any pipeline will count.
MAX_OFFSET = 2**63 - 1
MAX_COUNT = 2**53
# Values kept per key, by the offset they reach, for matching the committed offset.
HISTORY = 16
# Partition numbers a key may name; ORDERS_PARTITIONS takes no more.
MAX_PARTITIONS = 10_000
_DIGITS = re.compile(r"[0-9]{1,5}")


def stats_key(group: str, topic: str, partition: int) -> str:
    """The stats key of an input partition for a consumer group, e.g. `order-pipeline/orders-0`."""
    return f"{group}/{topic}-{partition}"


class StatsKeys:
    """Which stats keys belong to a consumer group's input partitions.

    Args:
        group: the consumer group; keys of other groups belong to other pipelines.
        partitions: each input topic's partition count. It grows when the consumer
            is assigned a partition beyond it (partitions added to a topic).
    """

    def __init__(self, group: str, partitions: Mapping[str, int]) -> None:
        self._prefix = f"{group}/"
        self.partitions = dict(partitions)

    def partition_of(self, key: bytes | None) -> TP | None:
        """The input partition a key stands for; None for a key of another group.

        Raises:
            DeserializationError: the key is of this group (or of none) but names no
                partition of an input topic (below MAX_PARTITIONS).
        """
        text = (key or b"").decode("utf-8", errors="replace")
        rest = text[len(self._prefix) :]
        if text.startswith(self._prefix) and "/" not in rest:
            tp = self._parse(rest)
            if tp is None:
                inputs = ", ".join(self.partitions)
                raise DeserializationError(f"stats key {_shown(text)} names no partition of {inputs}")
            return tp
        if "/" in text:
            return None  # another group's, or another pipeline's
        raise DeserializationError(f"stats key {_shown(text)} names no consumer group")

    def legacy_partition_of(self, key: bytes | None) -> TP | None:
        """The input partition of a key written before keys named the group (`orders-0`), else None."""
        text = (key or b"").decode("utf-8", errors="replace")
        return None if "/" in text else self._parse(text)

    def _parse(self, text: str) -> TP | None:
        topic, sep, number = text.rpartition("-")
        if not sep or topic not in self.partitions or not _DIGITS.fullmatch(number) or int(number) >= MAX_PARTITIONS:
            return None
        return topic, int(number)

    def counted(self, tp: TP) -> bool:
        """Whether a partition exists as far as this consumer knows (only those count in the average)."""
        return tp[1] < self.partitions.get(tp[0], 0)

    def extend(self, partitions: Iterable[TP]) -> None:
        """Partitions the consumer was assigned exist, whatever the counts at start said."""
        for topic, partition in partitions:
            if topic in self.partitions:
                self.partitions[topic] = max(self.partitions[topic], partition + 1)


def _shown(text: str) -> str:
    return repr(text[:100] + ("..." if len(text) > 100 else ""))


def encode_stats(state: RunningAverage, next_offset: int) -> bytes:
    value = {"count": state.count, "sum_cents": state.sum_cents, "next_offset": next_offset}
    return json.dumps(value, separators=(",", ":")).encode()


def decode_stats(value: bytes) -> tuple[RunningAverage, int | None]:
    """Reads one stats value: the state, and the input offset it reaches (None if absent).

    Extra fields are ignored so later versions may add some.

    Raises:
        DeserializationError: the value is larger than MAX_STATS_VALUE_BYTES, not a
            JSON object with integer `count` (0..MAX_COUNT) and `sum_cents`
            (0..MAX_OFFSET, and 0 when the count is) and `next_offset` (0..MAX_OFFSET,
            when present).
    """
    if len(value) > MAX_STATS_VALUE_BYTES:
        raise DeserializationError(f"stats value is {len(value)} bytes, more than {MAX_STATS_VALUE_BYTES}")
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as exc:  # not UTF-8 or not JSON; an integer too long to convert
        raise DeserializationError(f"stats value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DeserializationError("stats value is not a JSON object")
    next_offset = _number(data, "next_offset", MAX_OFFSET) if "next_offset" in data else None
    count, sum_cents = _number(data, "count", MAX_COUNT), _number(data, "sum_cents", MAX_OFFSET)
    if count == 0 and sum_cents != 0:
        raise DeserializationError(f"stats value has no orders but a sum of {sum_cents} cents")
    return RunningAverage(count, sum_cents), next_offset


def _number(data: dict[str, object], name: str, largest: int) -> int:
    number = data.get(name)
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= largest:
        raise DeserializationError(f"stats value needs an integer {name} from 0 to {largest}, got {number!r}")
    return number


class Latest(NamedTuple):
    """A partition's latest stats value: its state and the offset it reaches (None if absent)."""

    state: RunningAverage
    next_offset: int | None


class StatsTable:
    """The latest value of each of a group's stats keys, and the recent ones by the offset they reach."""

    def __init__(self, keys: StatsKeys) -> None:
        self.keys = keys
        self.latest: dict[TP, Latest] = {}
        self._by_offset: dict[TP, dict[int, RunningAverage]] = {}
        # Values under keys written before keys named the group, by the offset they reach.
        self._legacy: dict[TP, dict[int, RunningAverage]] = {}
        # Partitions whose latest record changed since `changed` was last drained.
        self.changed: set[TP] = set()
        # Partitions whose latest record is not a usable value: `latest` keeps the one before.
        self.spoiled: set[TP] = set()

    @property
    def states(self) -> dict[TP, RunningAverage]:
        """The latest state of each partition that exists (see StatsKeys.counted)."""
        return {tp: latest.state for tp, latest in self.latest.items() if self.keys.counted(tp)}

    def at(self, tp: TP, next_offset: int) -> RunningAverage | None:
        """The latest value of a partition that reaches exactly `next_offset`, if one was read.

        A partition the group never wrote a value for may have one under its key of
        before keys named the group: it is used when it reaches exactly that offset.
        """
        if tp in self._by_offset or tp in self.latest:
            return self._by_offset.get(tp, {}).get(next_offset)
        return self._legacy.get(tp, {}).get(next_offset)

    def take(self, record: Incoming) -> TP | None:
        """Applies one record of the stats topic; returns the partition it is of (None: another group's).

        Raises:
            DeserializationError: the key or value is not one of this group's; the table is unchanged.
        """
        try:
            tp = self.keys.partition_of(record.key)
        except DeserializationError:
            legacy = self.keys.legacy_partition_of(record.key)
            if legacy is None or record.value is None:
                raise
            state, next_offset = decode_stats(record.value)
            if next_offset is not None:
                _remember(self._legacy.setdefault(legacy, {}), next_offset, state)
            return None
        if tp is None:
            return None
        self.changed.add(tp)
        if record.value is None:
            self.latest.pop(tp, None)  # a tombstone: the key was deleted on purpose
            self._by_offset.pop(tp, None)
            self.spoiled.discard(tp)
            return tp
        try:
            state, next_offset = decode_stats(record.value)
        except DeserializationError:
            self.spoiled.add(tp)
            raise
        self.spoiled.discard(tp)
        self.latest[tp] = Latest(state, next_offset)
        if next_offset is not None:
            _remember(self._by_offset.setdefault(tp, {}), next_offset, state)
        return tp


def _remember(history: dict[int, RunningAverage], next_offset: int, state: RunningAverage) -> None:
    history.pop(next_offset, None)  # re-inserted as the newest
    history[next_offset] = state
    if len(history) > HISTORY:
        del history[next(iter(history))]


def group_total(published: Mapping[TP, RunningAverage], own: Mapping[TP, RunningAverage]) -> RunningAverage:
    """The group-wide state: this consumer's partitions from memory, every other from the topic.

    Args:
        published: the latest value of each of the group's input partitions in the stats topic.
        own: the state of the partitions this consumer owns (newer than the topic's).
    """
    total = RunningAverage()
    for tp, state in published.items():
        if tp not in own:
            total += state
    for state in own.values():
        total += state
    return total
