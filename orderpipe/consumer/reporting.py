"""What the consumer tells people: per-event lines, periodic summaries and the final summary.

Only committed batches are reported, so a line never describes something that an
aborted transaction took back. The running average in the lines is the group-wide
one: the state before the batch, plus each processed order as its line is printed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from orderpipe.core.effects import BatchEffects
from orderpipe.core.latency import LatencyHistogram
from orderpipe.core.routing import REASONS, Decision, Processed, Retry
from orderpipe.core.status import ConsumerReading, LoopReading, View
from orderpipe.model.money import RunningAverage, format_cents
from orderpipe.observe.console import Console, throughput_line
from orderpipe.text import printable

__all__ = ["ConsumerSummary", "Reporter"]


@dataclass
class ConsumerSummary:
    processed: int = 0
    retried: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    aborted: int = 0
    # Records of the stats topic that could not be used (stats_view.StatsView).
    stats_ignored: int = 0
    # Group-wide: every partition's committed state, this consumer's own included.
    average: RunningAverage = field(default_factory=RunningAverage)
    # Records in committed batches, and the time from the first batch's start to the last one's commit.
    handled: int = 0
    busy_s: float = 0.0

    def describe_throughput(self) -> str:
        return throughput_line(self.handled, "records", self.busy_s, "from the first batch to the last commit")

    def describe(self) -> str:
        reasons = ", ".join(f"{reason} {self.dead_lettered[reason]}" for reason in REASONS)
        ignored = f"; ignored {self.stats_ignored} unusable stats records" if self.stats_ignored else ""
        return (
            f"Consumer summary: processed {self.processed}, retried {self.retried}, "
            f"dead-lettered {sum(self.dead_lettered.values())} ({reasons}); "
            f"running average {self.average.describe()} over {self.average.count} orders{ignored}"
        )


class Reporter:
    """Counts committed batches into the summary and prints the lines the console has room for.

    Args:
        on_decision: called with each decision after its batch was committed (tests use it).
        latency: collects record-to-commit latencies for --report-latency.
        view: the live panel on a terminal (orderpipe.observe.terminal), drawn instead of the periodic summary lines.
    """

    def __init__(
        self,
        console: Console,
        summary: ConsumerSummary,
        max_retries: int,
        *,
        latency: LatencyHistogram | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        view: View[ConsumerReading] | None = None,
    ) -> None:
        self._console = console
        self._view = view
        self.summary = summary
        self._max_retries = max_retries
        self._latency = latency
        self._on_decision = on_decision
        self._first_batch_s: float | None = None
        self._last_processed = 0
        self._last_time_s = 0.0

    def committed(self, effects: BatchEffects, running: RunningAverage, started_s: float, now_s: float) -> None:
        """Counts a committed batch and prints its lines.

        Args:
            running: the group-wide state before the batch.
            started_s, now_s: when the batch was read and when it was committed.
        """
        summary, decisions = self.summary, effects.decisions
        self._first_batch_s = started_s if self._first_batch_s is None else self._first_batch_s
        summary.handled += len(decisions)
        summary.busy_s = now_s - self._first_batch_s
        summary.processed += effects.processed
        for routed in effects.routed:
            if isinstance(routed, Retry):
                summary.retried += 1
            else:
                summary.dead_lettered[routed.reason] += 1
        for decision in decisions[: self._console.claim_events(len(decisions))]:
            running = self._print(decision, running)
        if self._latency is not None:
            self._latency.add(int(now_s * 1000), (decision.record.timestamp for decision in decisions))
        if self._on_decision is not None:
            for decision in decisions:
                self._on_decision(decision)

    def _print(self, decision: Decision, running: RunningAverage) -> RunningAverage:
        """Prints one decision's line; returns the group-wide state after it."""
        console = self._console
        if isinstance(decision, Processed):
            order = decision.order
            running = running.add(order.price_cents)
            console.info(
                f"✓ Processed: Order {printable(order.order_id)} → {printable(order.product)} → "
                f"{format_cents(order.price_cents)}\nRunning Average: {running.describe()}"
            )
        elif isinstance(decision, Retry):
            error = decision.error
            console.info(
                f"⚠ Retrying ({decision.attempt}/{self._max_retries}): Order {printable(decision.record.label, 100)} "
                f"({type(error).__name__}: {printable(str(error), 300)})"
            )
        else:
            console.info(
                f"✗ Sent to DLQ ({decision.reason}): Order {printable(decision.record.label, 100)}: "
                f"{printable(str(decision.error), 300)}"
            )
        return running

    def periodic(self, now_s: float, reading: Callable[[], LoopReading]) -> None:
        """The live panel when it is due, else the periodic summary line when one is due; `reading` is taken only then.

        The summary's lag is that of all partitions.
        """
        console, summary = self._console, self.summary
        console.tick(now_s)
        if self._view is not None:
            if self._view.due(now_s):
                self._view.show(self._reading(now_s, reading()))
            return
        if not self._last_time_s:
            self._last_time_s = now_s
        if not console.summary_due(now_s):
            return
        rate = (summary.processed - self._last_processed) / max(now_s - self._last_time_s, 1e-9)
        self._last_processed, self._last_time_s = summary.processed, now_s
        loop = reading()
        console.info(
            f"[consumer] {rate:,.0f} orders/s | processed {summary.processed} | retried {summary.retried} | "
            f"dead-lettered {sum(summary.dead_lettered.values())} | average {loop.average.describe()} | "
            f"lag {-1 if loop.lags is None else sum(loop.lags.values())}"
        )

    def last(self, now_s: float, reading: Callable[[], LoopReading]) -> None:
        """The live panel's last drawing, with the figures the consumer ends with (before it closes)."""
        if self._view is not None:
            self._view.show(self._reading(now_s, reading()))

    def _reading(self, now_s: float, loop: LoopReading) -> ConsumerReading:
        summary = self.summary
        return ConsumerReading(
            now_s,
            loop,
            summary.handled,
            summary.processed,
            summary.retried,
            tuple((reason, summary.dead_lettered[reason]) for reason in REASONS),
        )

    def idle(self, limit_s: float) -> None:
        self._console.info(f"Nothing arrived and nothing was due for {limit_s:g}s: exiting.")

    def final(self) -> None:
        """The final summary, below the live panel's last drawing when there is one."""
        if self._view is not None:
            self._view.close()
        console = self._console
        console.info(self.summary.describe())
        console.info(self.summary.describe_throughput())
        if self._latency is not None:
            console.info(self._latency.describe())
