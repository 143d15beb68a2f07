"""Making a batch durable: its retry, DLQ and stats records together with its input offsets.

`TransactionalCommitter` (the default) writes them in one Kafka transaction, with the
offsets sent through the transaction and the consumer's group metadata, so either
all of a batch's effects become visible to read_committed readers or none do
(exactly-once). `AtLeastOnceCommitter` produces, waits for every acknowledgement,
then commits the offsets; a crash in between repeats the batch (`--delivery
at-least-once`, kept for comparison).

A commit is a small state machine the loop moves on with `advance`, never a wait:

* a retriable failure (a timeout, say) returns WAITING with the time to try that
  step again; the loop keeps polling meanwhile;
* an abortable one aborts the transaction and returns ABORTED: the caller rewinds
  and reads the batch again;
* a fatal one (fenced: the coordinator aborted a transaction that outlived its
  timeout while a broker was away, say) raises TransactionLostError, and the loop
  goes on with a new producer (`renew`).

A commit whose outcome stays unknown is never aborted: once its retry window closes
the transaction is lost too, and the new producer's registration (same transactional
id) settles it either way before anything else is written.
While the cluster has fewer in-sync replicas than min.insync.replicas for a topic
the transaction writes to, no restart could help: the loop's replica watch then
keeps extending the window (`keep_waiting`), and the commit is waited out.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from orderpipe.clock import Clock
from orderpipe.core.effects import BatchEffects
from orderpipe.core.ports import KafkaEdge
from orderpipe.errors import (
    BrokerUnavailableError,
    DeliveryError,
    FatalKafkaError,
    KafkaCallError,
    TransactionLostError,
)

__all__ = ["AtLeastOnceCommitter", "Committer", "Progress", "TransactionalCommitter"]

log = logging.getLogger(__name__)

# How long a step that fails retriably is tried again before giving up.
RETRY_WINDOW_S = 60.0
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
# Offset-commit failures that only mean a rebalance took the partitions away.
REBALANCE_CODES = frozenset({"ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS"})
# Failures that say a broker or coordinator was slow or away, not that the batch is
# wrong: a transaction aborted for one of these is not counted as a failing batch.
TRANSIENT_CODES = frozenset(
    {
        "_TIMED_OUT",
        "REQUEST_TIMED_OUT",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "NETWORK_EXCEPTION",
        "NOT_COORDINATOR",
        "COORDINATOR_NOT_AVAILABLE",
        "COORDINATOR_LOAD_IN_PROGRESS",
        # Leadership moving while a broker is away.
        "NOT_LEADER_OR_FOLLOWER",
        "LEADER_NOT_AVAILABLE",
        "FENCED_LEADER_EPOCH",
        "UNKNOWN_LEADER_EPOCH",
    }
)
# Records that timed out, or too few in-sync replicas, are transient only while the
# replica watch confirms a shortfall the cluster can recover from (ConsumerLoop): a
# deleted output topic or a min.insync.replicas above the replica count gives the same
# codes for ever.


class Progress(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"
    WAITING = "waiting"


class TransactionalCommitter:
    """One transaction per batch.

    Args:
        transactional_id: stable across restarts of the same consumer, so that
            `start` aborts a transaction its crashed predecessor left open.
    """

    def __init__(self, edge: KafkaEdge, transactional_id: str, clock: Clock) -> None:
        self._edge = edge
        self._id = transactional_id
        self._clock = clock
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._attempt = 0
        self._deadline = 0.0
        self.began_at = 0.0  # when the batch being committed was taken
        self.retry_at = 0.0
        self.aborting = ""  # why the transaction is being aborted; empty while it goes on
        self.transient = False  # the abort was caused by a slow or absent broker, not by the batch
        self.mode = f"exactly-once, transactional id {transactional_id}"

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def start(self) -> None:
        """Registers the transactional id, fencing and aborting whatever an older instance left open."""
        try:
            self._edge.init_transactions()
        except KafkaCallError as exc:
            if exc.fatal:
                raise FatalKafkaError(self._fatal_sentence(exc)) from exc
            raise BrokerUnavailableError(f"could not start transactions as {self._id}: {exc}") from exc

    def renew(self) -> None:
        """After TransactionLostError: a new producer, registered with the same id; the batch in hand is dropped.

        Raises:
            FatalKafkaError, BrokerUnavailableError: the new producer could not register either.
        """
        self._steps, self._attempt, self.retry_at, self.aborting, self.transient = [], 0, 0.0, "", False
        self._edge.renew_producer()
        self.start()

    def begin(self, effects: BatchEffects) -> None:
        """Takes a batch to commit; `advance` does the work."""
        edge = self._edge
        self._steps = [
            ("begin the transaction", edge.begin_transaction),
            ("produce", lambda: edge.produce(effects.records)),
            ("send the offsets", lambda: edge.send_offsets(effects.offsets)),
            ("commit the transaction", edge.commit_transaction),
        ]
        self._attempt, self.retry_at, self.aborting, self.transient = 0, 0.0, "", False
        self.began_at = self._clock.monotonic()

    def keep_waiting(self) -> None:
        """Extends the retry window of the step being tried again: Kafka cannot complete it yet, nor would a restart."""
        if self._steps and self._attempt:
            self._deadline = max(self._deadline, self._clock.monotonic() + RETRY_WINDOW_S)

    def advance(self) -> Progress:
        """Runs the batch's steps until one must wait, the transaction is aborted, or it is committed."""
        now = self._clock.monotonic()
        if now < self.retry_at:
            return Progress.WAITING
        if self.aborting:
            return self._abort(now)
        while self._steps:
            what, step = self._steps[0]
            try:
                step()
            except DeliveryError as exc:  # librdkafka refused a record outright: it can never be sent
                return self._begin_abort(f"transaction aborted: {exc}", now)
            except KafkaCallError as exc:
                if exc.fatal:
                    raise TransactionLostError(self._fatal_sentence(exc)) from exc
                if exc.retriable and not exc.abortable and what != "produce":
                    if self._attempt == 0:
                        self._deadline = now + RETRY_WINDOW_S
                    if now < self._deadline:
                        return self._wait(what, exc, now)
                    if what == "commit the transaction":
                        raise TransactionLostError(
                            f"could not commit the transaction within {RETRY_WINDOW_S:g}s ({exc}); a new producer "
                            f"with transactional id {self._id} settles it"
                        ) from exc
                self.transient = exc.retriable or exc.code in TRANSIENT_CODES
                return self._begin_abort(f"could not {what}, so the transaction was aborted ({exc})", now)
            self._steps.pop(0)
            self._attempt = 0
        return Progress.COMMITTED

    def _wait(self, what: str, exc: KafkaCallError, now: float) -> Progress:
        self.retry_at = now + BACKOFF_S[min(self._attempt, len(BACKOFF_S) - 1)]
        self._attempt += 1
        log.debug("could not %s (%s); trying again", what, exc)
        return Progress.WAITING

    def _begin_abort(self, reason: str, now: float) -> Progress:
        self.aborting, self._attempt, self._deadline = reason, 0, now + RETRY_WINDOW_S
        return self._abort(now)

    def _abort(self, now: float) -> Progress:
        try:
            self._edge.abort_transaction()
        except KafkaCallError as exc:
            if exc.fatal:
                raise TransactionLostError(self._fatal_sentence(exc)) from exc
            if exc.retriable and now < self._deadline:
                return self._wait("abort the transaction", exc, now)
            raise TransactionLostError(f"could not abort the transaction of {self._id}: {exc}") from exc
        self._steps = []
        return Progress.ABORTED

    def _fatal_sentence(self, exc: KafkaCallError) -> str:
        if exc.fenced:
            return (
                f"transactional id {self._id} was fenced: the transaction coordinator aborted a transaction that ran "
                f"out of time while a broker failed, or another consumer started with the id ({exc})"
            )
        return f"Kafka reported a fatal transaction error for {self._id}: {exc}"


class AtLeastOnceCommitter:
    """Produce, wait for every acknowledgement, then commit the offsets; never waits in between."""

    mode = "at-least-once"
    pending = False
    began_at = 0.0
    retry_at = 0.0
    aborting = ""
    transient = False

    def __init__(self, edge: KafkaEdge) -> None:
        self._edge = edge
        self._effects: BatchEffects | None = None

    def start(self) -> None:
        """Nothing to set up: there are no transactions."""

    def begin(self, effects: BatchEffects) -> None:
        self._effects = effects

    def keep_waiting(self) -> None:
        """Nothing is tried again here: produce and flush wait within the call."""

    def advance(self) -> Progress:
        """Raises DeliveryError when a record was not acknowledged (the offsets are then not committed)."""
        effects, self._effects = self._effects, None
        assert effects is not None, "advance without a batch"
        if effects.records:
            self._edge.produce(effects.records)
            self._edge.flush()
        try:
            self._edge.commit_offsets(effects.offsets)
        except KafkaCallError as exc:
            # Its records were produced and counted: a restart or the next owner reads the
            # batch again and counts it twice, which at-least-once allows.
            if exc.code in REBALANCE_CODES:
                log.debug("commit not accepted after a rebalance: %s", exc)
            else:
                log.warning("⚠ Commit failed; the batch will be read again after a restart or rebalance: %s", exc)
        return Progress.COMMITTED


Committer = TransactionalCommitter | AtLeastOnceCommitter
