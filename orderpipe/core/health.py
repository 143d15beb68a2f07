"""Whether a program is healthy, for `GET /healthz`: the decision and the state it is made from.

A program is healthy while it runs with a live connection to Kafka and, for the
consumer, has committed a transaction (or found nothing to do) within the last
HEALTH_INTERVAL_S. "Live" comes from librdkafka's statistics: every
STATS_INTERVAL_MS the client hands its `stats_cb` a JSON document, and the
connection is live while at least one broker in it is UP.

Threading: a `Health` is written only by the program's main thread (the loop, and
the statistics callback, which librdkafka serves from poll() and consume() on that
thread) with plain attribute assignments, and only read by the HTTP server's
threads, through `check`. Each assignment is atomic under the interpreter lock; a
reader may see one attribute updated before another, which at worst makes a single
answer one update out of date.

Free of Kafka and HTTP: the clock and the watchdog's question are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable

__all__ = ["HEALTH_INTERVAL_S", "STATS_INTERVAL_MS", "Health", "brokers_up"]

# A consumer that neither committed nor found nothing to do for this long is unhealthy.
HEALTH_INTERVAL_S = 30.0
# How often librdkafka hands its statistics to the clients' stats_cb while metrics are on.
STATS_INTERVAL_MS = 2000
# Broker entries that are librdkafka's own bookkeeping, not connections to a broker.
_NOT_CONNECTIONS = ("internal", "logical")


def brokers_up(stats: object) -> bool | None:
    """Whether librdkafka's statistics JSON shows at least one broker UP; None when it says nothing usable.

    The text comes from librdkafka, but it is read defensively all the same: text
    that is not JSON, nesting too deep for the parser, or fields of the wrong type
    give None, never an exception.
    """
    try:
        document = json.loads(stats) if isinstance(stats, str | bytes) else None
    except (ValueError, RecursionError):
        return None
    brokers = document.get("brokers") if isinstance(document, dict) else None
    if not isinstance(brokers, dict):
        return None
    entries = [entry for entry in brokers.values() if isinstance(entry, dict)]
    return any(entry.get("state") == "UP" and entry.get("source") not in _NOT_CONNECTIONS for entry in entries)


class Health:
    """The state `/healthz` answers from, written by the main thread (see the module's note on threads).

    Args:
        bootstrap_servers: named in the answer while no broker is UP.
        monotonic: the clock.
        needs_commits: True for the consumer: it must commit (or have nothing to do)
            within HEALTH_INTERVAL_S.
        overdue: the watchdog's question: why the process is stuck, or None
            (orderpipe.kafka.watchdog.Watchdog.overdue, thread-safe).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        monotonic: Callable[[], float],
        *,
        needs_commits: bool = False,
        overdue: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._monotonic = monotonic
        self._needs_commits = needs_commits
        self._overdue = overdue
        self.running = False
        # None until librdkafka's first statistics; then whether a broker was UP in the latest usable ones.
        self.connected: bool | None = None
        # When the consumer last committed a transaction or found nothing to do.
        self.progress_at = monotonic()
        # Why the program failed for good (fenced, say), while it shuts down.
        self.failure: str | None = None

    def on_stats(self, stats: str) -> None:
        """The clients' `stats_cb`: keeps the latest usable answer about the brokers; never raises."""
        up = brokers_up(stats)
        if up is not None:
            self.connected = up

    def start(self) -> None:
        """The program is set up and runs its loop."""
        self.progress_at = self._monotonic()
        self.running = True

    def progress(self) -> None:
        """A transaction was committed, or there was nothing to do."""
        self.progress_at = self._monotonic()

    def check(self) -> tuple[bool, str]:
        """(healthy, one line): `ok`, or why not."""
        if self.failure is not None:
            return False, self.failure
        stuck = self._overdue()
        if stuck is not None:
            return False, f"stuck: {stuck}"
        if not self.running or self.connected is None:
            return False, "starting"
        if not self.connected:
            return False, f"broker unreachable at {self._bootstrap_servers}"
        waited = self._monotonic() - self.progress_at
        if self._needs_commits and waited > HEALTH_INTERVAL_S:
            return False, f"no transaction committed for {waited:.0f}s"
        return True, "ok"
