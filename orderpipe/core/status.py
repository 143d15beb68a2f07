"""What the live views on a terminal show, computed from the programs' counters: free of Kafka, rich and clocks.

A program's main loop hands a `View` a reading of counters it already keeps, at most
every VIEW_EVERY_S (the view says when one is `due`), never from another thread. A
tracker turns successive readings into a frozen status: rates over the last
RATE_WINDOW_S, the time left, lag bars, a sparkline of the running average.
orderpipe.observe.terminal draws the status with rich; piped output never gets here
(orderpipe.observe.console prints the plain lines).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from orderpipe.core.ports import TP
from orderpipe.model.money import RunningAverage, format_cents

__all__ = [
    "BAR_WIDTH",
    "VIEW_EVERY_S",
    "ConsumerReading",
    "ConsumerStatus",
    "ConsumerTracker",
    "LoopReading",
    "PartitionLag",
    "ProducerReading",
    "ProducerStatus",
    "ProducerTracker",
    "RateMeter",
    "View",
    "bar",
    "duration",
    "sparkline",
]

# A view is redrawn at most this often: twice a second reads as live and costs little.
VIEW_EVERY_S = 0.5
# Rates are taken over this much of the recent past, so they neither jump nor lag far behind.
RATE_WINDOW_S = 3.0
# The sparkline holds this many values of the running average (20 s at VIEW_EVERY_S).
HISTORY = 40
# The most partitions the panel lists; the others are summed up in one line.
MAX_PARTITION_ROWS = 12
BAR_WIDTH = 20
_SPARKS = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉"

R_contra = TypeVar("R_contra", contravariant=True)


class View(Protocol[R_contra]):
    """A live view on a terminal, fed readings by a program's main loop (orderpipe.observe.terminal.LiveView)."""

    def due(self, now_s: float) -> bool:
        """Whether a new reading is wanted (at most every VIEW_EVERY_S)."""
        ...

    def show(self, reading: R_contra) -> None:
        """Draws what the reading says, now."""
        ...

    def close(self) -> None:
        """Leaves the last drawing on the terminal; lines printed from now on go below it."""
        ...


class RateMeter:
    """The rate of a growing total over the last `window_s` seconds of readings."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at_s: float, total: int) -> float:
        """Takes a reading of the total; returns the rate per second over the window up to it."""
        samples = self._samples
        samples.append((at_s, total))
        # Keep one sample at or beyond the window's start, so the rate spans the whole window.
        while len(samples) > 2 and at_s - samples[1][0] >= self._window_s:
            samples.popleft()
        first_s, first = samples[0]
        return (total - first) / (at_s - first_s) if at_s > first_s else 0.0


def sparkline(values: list[int], width: int = HISTORY) -> str:
    """The last `width` values as block characters, lowest to highest; a flat series is a flat middle line."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return _SPARKS[len(_SPARKS) // 2 - 1] * len(values)
    top = len(_SPARKS) - 1
    return "".join(_SPARKS[round((value - low) * top / (high - low))] for value in values)


def bar(value: int, maximum: int, width: int = BAR_WIDTH) -> str:
    """`value` out of `maximum` as a bar of `width` characters, in eighths of a character."""
    if maximum <= 0 or value <= 0:
        return " " * width
    eighths = max(round(min(value, maximum) * width * 8 / maximum), 1)  # any lag at all shows
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def duration(seconds: float | None) -> str:
    """A time left as a person reads it: 0:42, 12:05, 1:02:03; --:-- when it cannot be told."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or seconds > 99 * 3600:
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- the producer ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProducerReading:
    """The producer's counters at one moment (epoch seconds); `last_order`: the id of the last order made."""

    at_s: float
    sent: int
    delivered: int
    failed: int
    last_order: str | None


@dataclass(frozen=True)
class ProducerStatus:
    """What the producer's progress shows.

    Attributes:
        count: orders to send (--count), None when it runs until stopped.
        per_s: acknowledgements per second, recently.
        percent: acknowledged out of `count`, rounded down (100 only once all are).
        left_s: the time left at the recent rate; None when unknown or unbounded.
    """

    count: int | None
    sent: int
    delivered: int
    failed: int
    per_s: float
    percent: int | None
    left_s: float | None
    last_order: str | None


class ProducerTracker:
    def __init__(self, count: int | None, every_s: float = VIEW_EVERY_S) -> None:
        self._count = count
        self._every_s = every_s
        self._shown_at: float | None = None
        self._rate = RateMeter()

    def due(self, now_s: float) -> bool:
        return self._shown_at is None or now_s - self._shown_at >= self._every_s

    def status(self, reading: ProducerReading) -> ProducerStatus:
        self._shown_at = reading.at_s
        per_s = self._rate.add(reading.at_s, reading.delivered)
        count, percent, left_s = self._count, None, None
        if count is not None:
            percent = 100 if count == 0 else reading.delivered * 100 // count
            remaining = count - reading.delivered - reading.failed
            left_s = 0.0 if remaining <= 0 else remaining / per_s if per_s > 0 else None
        return ProducerStatus(
            count,
            reading.sent,
            reading.delivered,
            reading.failed,
            per_s,
            percent,
            left_s,
            reading.last_order,
        )


# -- the consumer ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopReading:
    """What the consumer loop knows at one moment (ConsumerLoop.reading), beside the reporter's counts.

    Attributes:
        average: the group-wide running average.
        lags: each owned input partition's records not yet processed; None when unknown.
        paused: partitions paused until their head record is due, with the due time (epoch ms).
        last_commit_s: how long the last committed batch's commit took; None before the first.
    """

    average: RunningAverage
    lags: Mapping[TP, int] | None
    paused: Mapping[TP, int]
    last_commit_s: float | None


@dataclass(frozen=True)
class ConsumerReading:
    """The loop's reading with the committed counts (orderpipe.consumer.reporting), at `at_s` (epoch seconds)."""

    at_s: float
    loop: LoopReading
    committed: int
    processed: int
    retried: int
    dead_lettered: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class PartitionLag:
    """One row of the panel's lag table; `due_in_s`: the partition is paused until its head record is due."""

    name: str
    lag: int
    bar: str
    due_in_s: float | None


@dataclass(frozen=True)
class ConsumerStatus:
    """What the consumer's panel shows.

    Attributes:
        in_per_s: records arriving on the owned input partitions per second, recently: those committed plus
            the growth of their lag (None while the lag is unknown). Records read again (a retry not yet
            due is sought back to) count once.
        committed_per_s: records in committed batches per second, recently.
        partitions: the rows of the lag table, the largest lag first once they do not all fit.
        hidden: partitions left out of the table, and their lag.
        retry_waiting: records on the retry topic not yet processed; None when the lag is unknown.
        next_due_in_s: when the next paused retry record is due, from now.
    """

    group: str
    wire: str
    in_per_s: float | None
    committed_per_s: float
    processed: int
    retried: int
    dead_lettered: tuple[tuple[str, int], ...]
    partitions: tuple[PartitionLag, ...]
    hidden: tuple[int, int]
    retry_waiting: int | None
    next_due_in_s: float | None
    average: str
    sparkline: str
    last_commit_ms: float | None

    @property
    def dead_lettered_total(self) -> int:
        return sum(count for _, count in self.dead_lettered)


class ConsumerTracker:
    """Turns the consumer's readings into its panel's status.

    Args:
        retry_topic: the partitions of this topic are the retries waiting.
        group, wire: shown as they are (the consumer group, the wire format it reads).
    """

    def __init__(self, retry_topic: str, group: str, wire: str, every_s: float = VIEW_EVERY_S) -> None:
        self._retry_topic = retry_topic
        self._group, self._wire = group, wire
        self._every_s = every_s
        self._shown_at: float | None = None
        self._arrived, self._committed = RateMeter(), RateMeter()
        self._history: deque[int] = deque(maxlen=HISTORY)

    def due(self, now_s: float) -> bool:
        return self._shown_at is None or now_s - self._shown_at >= self._every_s

    def status(self, reading: ConsumerReading) -> ConsumerStatus:
        self._shown_at = now_s = reading.at_s
        loop = reading.loop
        average = loop.average.average_cents
        if average is not None:
            self._history.append(average)
        now_ms = int(now_s * 1000)
        next_due = min((due for tp, due in loop.paused.items() if tp[0] == self._retry_topic), default=None)
        lags = loop.lags
        rows, hidden = _lag_rows(lags or {}, loop.paused, now_ms)
        in_per_s = None
        if lags is not None:  # a partition gained or lost moves the lag at once: never shown below zero
            in_per_s = max(self._arrived.add(now_s, reading.committed + sum(lags.values())), 0.0)
        return ConsumerStatus(
            group=self._group,
            wire=self._wire,
            in_per_s=in_per_s,
            committed_per_s=self._committed.add(now_s, reading.committed),
            processed=reading.processed,
            retried=reading.retried,
            dead_lettered=reading.dead_lettered,
            partitions=rows,
            hidden=hidden,
            retry_waiting=None if lags is None else sum(n for tp, n in lags.items() if tp[0] == self._retry_topic),
            next_due_in_s=None if next_due is None else max(next_due - now_ms, 0) / 1000,
            average="n/a" if average is None else format_cents(average),
            sparkline=sparkline(list(self._history)),
            last_commit_ms=None if loop.last_commit_s is None else loop.last_commit_s * 1000,
        )


def _lag_rows(
    lags: Mapping[TP, int], paused: Mapping[TP, int], now_ms: int
) -> tuple[tuple[PartitionLag, ...], tuple[int, int]]:
    """The lag table: every partition in topic and partition order, or the largest lags when they do not all fit."""
    shown = sorted(lags)
    if len(shown) > MAX_PARTITION_ROWS:
        shown = sorted(sorted(lags, key=lambda tp: -lags[tp])[:MAX_PARTITION_ROWS])
    left_out = lags.keys() - set(shown)
    largest = max((lags[tp] for tp in shown), default=0)
    rows = tuple(
        PartitionLag(
            f"{topic}-{partition}",
            lags[(topic, partition)],
            bar(lags[(topic, partition)], largest),
            None if (due := paused.get((topic, partition))) is None else max(due - now_ms, 0) / 1000,
        )
        for topic, partition in shown
    )
    return rows, (len(left_out), sum(lags[tp] for tp in left_out))
