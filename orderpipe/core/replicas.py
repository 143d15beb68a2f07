"""Noticing, while writes wait, partitions with fewer in-sync replicas than their min.insync.replicas.

With `acks=all`, Kafka refuses writes to a partition whose in-sync replicas are fewer
than its topic's `min.insync.replicas` (NOT_ENOUGH_REPLICAS), and librdkafka retries
them quietly until they time out: to a person the programs would just look stuck.
A `ReplicaWatch` asks the cluster for the in-sync replicas of the programs' topics
and for the topics' min.insync.replicas (read afresh: an operator may have changed
it; where the principal may not read it, the one the program knows is used) once
writes have waited longer than usual, at most every ASK_EVERY_S, and reports
the partitions below their minimum in one line, at most every REPORT_EVERY_S. The
programs go on waiting meanwhile (the consumer's commit, the producer's final flush):
a cluster below min ISR is waited out, not failed or dropped.

Free of Kafka and clocks: the question to the cluster and the time are passed in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

from orderpipe.core.ports import TP, InSync, Pending
from orderpipe.errors import OrderPipeError

__all__ = ["ReplicaWatch", "below_min_isr", "min_isr_of", "min_isr_sentence", "parse_min_isr"]

log = logging.getLogger(__name__)

# Writes that waited this long make the watch ask the cluster.
WAITING_AFTER_S = 3.0
ASK_EVERY_S = 10.0
REPORT_EVERY_S = 30.0


def parse_min_isr(value: str | None) -> int | None:
    """A topic's min.insync.replicas as Kafka keeps it (a short decimal); None for anything else.

    The value comes from the cluster, where any admin may have written it: a 5000-digit
    or full-width number is not judged rather than trusted.
    """
    return int(value) if value and re.fullmatch(r"[0-9]{1,3}", value) else None


def min_isr_of(topics: Mapping[str, Mapping[str, str]], default: int) -> dict[str, int]:
    """Each topic's min.insync.replicas from its configuration; `default` where it has none a person could mean."""
    minimums = {}
    for topic, config in topics.items():
        value = parse_min_isr(config.get("min.insync.replicas"))
        minimums[topic] = default if value is None else value
    return minimums


def below_min_isr(answer: InSync, minimums: Mapping[str, int], default: int) -> dict[TP, tuple[int, int]]:
    """The partitions with fewer in-sync replicas than their topic's minimum: (in sync, minimum) each.

    A minimum above the partition's replica count is a misconfiguration no wait can
    cure (Kafka accepts it), so such a partition is not counted: waiting for it would
    be forever.
    """
    below = {}
    for tp, count in answer.counts.items():
        minimum = minimums.get(tp[0], default)
        if count < minimum <= answer.replicas.get(tp, minimum):
            below[tp] = (count, minimum)
    return below


def min_isr_sentence(below: Mapping[TP, tuple[int, int]], doing: str) -> str:
    """One line for a person: which partitions, how far below, and that the program waits."""
    shown = sorted(below.items())[:5]
    parts = ", ".join(f"{topic}-{partition} ({count} of {minimum})" for (topic, partition), (count, minimum) in shown)
    more = f" and {len(below) - len(shown)} more" if len(below) > len(shown) else ""
    return (
        f"Kafka has fewer in-sync replicas than min.insync.replicas for {parts}{more}: writes to them wait until "
        f"the brokers holding their replicas are back; {doing}"
    )


class ReplicaWatch:
    """Asks about the in-sync replicas while writes wait; reports the partitions below their minimum.

    Args:
        ask: sends the question (each partition's in-sync replica count, each
            topic's minimum) and returns the answer on its way.
        minimums: each topic's min.insync.replicas as known at start, for topics the
            answer gives none for; others take `default`.
        doing: what the program does meanwhile, the end of the reported line.
        report: takes the line (a warning on the console).
        monotonic: the clock.
    """

    def __init__(
        self,
        ask: Callable[[], Pending[InSync]],
        minimums: Mapping[str, int],
        default: int,
        *,
        doing: str,
        report: Callable[[str], None],
        monotonic: Callable[[], float],
    ) -> None:
        self._ask, self._minimums, self._default = ask, dict(minimums), default
        self._doing, self._report, self._monotonic = doing, report, monotonic
        self._pending: Pending[InSync] | None = None
        self._asked_at: float | None = None
        self._reported_at: float | None = None
        # The partitions the last answer found below their minimum; kept until writes
        # succeed again (`writes_done`), a new answer says otherwise, or one fails.
        self.below: dict[TP, tuple[int, int]] = {}

    def check(self, waiting_s: float) -> None:
        """Called regularly with how long writes have been waiting (0 when none wait)."""
        now = self._monotonic()
        if self._pending is not None and self._pending.done():
            self._take_answer(now)
        if waiting_s < WAITING_AFTER_S:
            return
        if self._pending is None and (self._asked_at is None or now - self._asked_at >= ASK_EVERY_S):
            try:
                self._pending = self._ask()
            except OrderPipeError as exc:
                log.debug("could not ask for the in-sync replicas: %s", exc)
                self.below = {}  # unconfirmed: the programs' usual limits apply again
            self._asked_at = now

    def writes_done(self) -> None:
        """Writes went through (a commit, an acknowledgement): whatever was below is not any more."""
        self.below = {}

    def _take_answer(self, now: float) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None
        try:
            answer = pending.result()
        except OrderPipeError as exc:  # a cluster in trouble may not answer; the next question may get through
            log.debug("no answer about the in-sync replicas: %s", exc)
            self.below = {}  # unconfirmed: the programs' usual limits apply again
            return
        self.below = below_min_isr(answer, {**self._minimums, **answer.minimums}, self._default)
        if self.below and (self._reported_at is None or now - self._reported_at >= REPORT_EVERY_S):
            self._reported_at = now
            self._report(min_isr_sentence(self.below, self._doing))
