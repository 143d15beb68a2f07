"""End-to-end latency, from a record's timestamp to the commit of its batch, as a histogram.

Pure: the caller passes the commit time in. One counter per whole millisecond keeps
the memory bounded however long the consumer runs.

Records of the first `warmup_ms` (by timestamp, from the first record seen) are left
out: a consumer that joined an idle topic waits up to `fetch.wait.max.ms` (500 ms)
for its first fetches to return, which says nothing about the steady state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

__all__ = ["LatencyHistogram"]


WARMUP_MS = 1_000


class LatencyHistogram:
    def __init__(self, warmup_ms: int = WARMUP_MS) -> None:
        self._counts: Counter[int] = Counter()
        self._warmup_ms = warmup_ms
        self._counted_from: int | None = None
        self.total = 0

    def add(self, committed_ms: int, timestamps_ms: Iterable[int]) -> None:
        """Counts one committed batch: each record's latency is `committed_ms` minus its timestamp."""
        timestamps = list(timestamps_ms)
        if not timestamps:
            return
        if self._counted_from is None:
            self._counted_from = min(timestamps) + self._warmup_ms
        counts, start = self._counts, self._counted_from
        for timestamp in timestamps:
            if timestamp >= start:
                counts[committed_ms - timestamp] += 1
        self.total = counts.total()

    def percentile(self, fraction: float) -> int | None:
        """The smallest latency (ms) that at least `fraction` of the records did not exceed."""
        if self.total == 0:
            return None
        rank = max(fraction * self.total, 1)
        seen = 0
        for latency in sorted(self._counts):
            seen += self._counts[latency]
            if seen >= rank:
                return latency
        return max(self._counts)

    def describe(self) -> str:
        if self.total == 0:
            return "Latency: no records"
        p50, p99, p999, top = (self.percentile(f) for f in (0.5, 0.99, 0.999, 1.0))
        return (
            f"Latency: p50 {p50} ms, p99 {p99} ms, p99.9 {p999} ms, max {top} ms over {self.total} records "
            f"(record timestamp to the commit of its batch; the first {self._warmup_ms} ms of records left out)"
        )
