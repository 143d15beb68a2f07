"""How many setbacks the consumer goes on after: aborted batches in a row, and lost transactions recovered.

A broker or coordinator that is slow or away is waited for; only a batch that fails
for itself, again and again, or transactions lost again and again (a newer consumer
with the same transactional id, or a cluster that keeps failing), stop the consumer,
for a person to look at.
"""

from __future__ import annotations

from orderpipe.clock import Clock
from orderpipe.errors import FatalKafkaError, TransactionLostError

__all__ = ["Setbacks"]

# Aborted batches in a row before the consumer gives up: the same failure each time
# (a record the broker refuses, say) would otherwise repeat forever.
MAX_ABORTS_IN_A_ROW = 5
# Transactions lost (a fenced producer, say) that are recovered within this window; one
# more stops the consumer: a newer consumer with the same transactional id, or a cluster
# that keeps failing, is for a person to look at.
MAX_RECOVERIES, RECOVERY_WINDOW_S = 3, 300.0


class Setbacks:
    """Counts aborted batches in a row and recent recoveries; raises FatalKafkaError past either limit."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._aborts_in_a_row = 0
        self._recovered_at: list[float] = []  # when lost transactions were recovered

    def committed(self) -> None:
        """A batch committed: the aborts in a row start again from none."""
        self._aborts_in_a_row = 0

    def aborted(self, reason: str, *, transient: bool) -> None:
        """A batch was aborted for `reason`; one that failed for itself counts towards the limit.

        Raises:
            FatalKafkaError: MAX_ABORTS_IN_A_ROW batches in a row failed for themselves.
        """
        self._aborts_in_a_row += 0 if transient else 1
        if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
            raise FatalKafkaError(f"{self._aborts_in_a_row} batches in a row were aborted; the last: {reason}")

    def recovering(self, lost: TransactionLostError, *, can_recover: bool) -> None:
        """A transaction was lost; counts the recovery about to be made.

        Raises:
            FatalKafkaError: the committer cannot recover (not transactional), or
                MAX_RECOVERIES were made within RECOVERY_WINDOW_S already.
        """
        now = self._clock.monotonic()
        self._recovered_at = [at for at in self._recovered_at if now - at < RECOVERY_WINDOW_S]
        if not can_recover or len(self._recovered_at) >= MAX_RECOVERIES:
            raise FatalKafkaError(
                f"{lost}; {len(self._recovered_at)} lost transactions were recovered within "
                f"{RECOVERY_WINDOW_S:g}s, so the consumer stops"
            ) from lost
        self._recovered_at.append(now)
