"""When the consumer is idle (--idle-exit): nothing arrived for the limit, and nothing waits to be read.

The loop tells its `IdleWatch` of activity (records, rebalances, commits), of its
group membership (assignments, and revocations of everything it owned) and of the
partitions it resumed for a retry that is due, which count as busy until their
waiting record is read again.

Joining the group is never idleness, however long it takes: before the first
assignment, and from a revocation of everything until the next assignment, the
consumer is not a member and cannot know what it will own. In a rolling restart the
group coordinator moves from node to node, and a consumer whose session timed out
waited there more than 15 s, unassigned, while the new coordinator loaded (see
docs/cluster.md); a time limit on that wait ended runs with records unread.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from orderpipe.clock import Clock
from orderpipe.core.ownership import Ownership
from orderpipe.core.ports import TP
from orderpipe.model.records import Run

__all__ = ["IdleWatch"]

# A partition resumed when due counts as busy until its waiting record is read
# again, or at most this long (the record may have been deleted by retention meanwhile).
REFETCH_LIMIT_S = 30.0


class IdleWatch:
    """The idle limit's clock: when the loop was last active, and what still counts as waiting."""

    def __init__(self, clock: Clock, limit_s: float | None, started: float) -> None:
        self._clock, self.limit_s = clock, limit_s
        self._last_activity = started  # monotonic seconds
        self._member = False  # assigned partitions (maybe none) by the group's last rebalance
        # Resumed partitions whose waiting record was not read again yet, and when they were resumed.
        self._refetching: dict[TP, float] = {}

    def active(self, at: float | None = None) -> None:
        """Something happened (at `at`, monotonic seconds; by default now): the limit counts from here."""
        self._last_activity = self._clock.monotonic() if at is None else at

    def assigned(self) -> None:
        """The group assigned partitions (maybe none): the join is over, and it is activity."""
        self._member, self._last_activity = True, self._clock.monotonic()

    def rejoining(self) -> None:
        """Everything owned was revoked or lost: the consumer waits for the group's next assignment."""
        self._member = False

    def resumed(self, partitions: Collection[TP]) -> None:
        """Partitions resumed for a due retry: busy until their record is read again."""
        self._refetching.update(dict.fromkeys(partitions, self._clock.monotonic()))

    def read(self, runs: Iterable[Run]) -> None:
        """Records arrived: their partitions' waiting records were read again."""
        if self._refetching:
            for run in runs:
                self._refetching.pop((run.topic, run.partition), None)

    def forget(self, partitions: Iterable[TP]) -> None:
        """Partitions revoked: nothing of theirs is waited for any more."""
        for tp in partitions:
            self._refetching.pop(tp, None)

    def idle(
        self,
        paused: Mapping[TP, object],
        ownership: Ownership,
        unread: Callable[[list[TP]], dict[TP, int] | None],
    ) -> bool:
        """True once nothing arrived for the idle limit, while nothing waits: no retry paused or being read again.

        `paused`: the partitions paused for a retry not yet due; `unread` asks the
        partitions' leaders how many records are left to read.
        """
        limit = self.limit_s
        if limit is None:
            return False
        if paused or ownership.restoring or not self._member:
            # Waiting is not idleness: the limit counts from when nothing waits any more
            # (a join or a restore that took longer than the limit must not end the run
            # before the partitions' first fetch).
            self._last_activity = self._clock.monotonic()
            return False
        if self._refetching:
            now = self._clock.monotonic()
            self._refetching = {tp: at for tp, at in self._refetching.items() if now - at < REFETCH_LIMIT_S}
            if self._refetching:
                return False
        if self._clock.monotonic() - self._last_activity < limit:
            return False
        # Nothing arrived, but a broker failure stops records arriving too: idle only once
        # the partitions' leaders say nothing is left to read.
        owned = list(ownership.states)
        left = unread(owned) if owned else {}
        if left is None or any(left.get(tp, 1) for tp in owned):
            self._last_activity = self._clock.monotonic()
            return False
        return True
