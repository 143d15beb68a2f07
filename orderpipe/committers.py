"""Making a batch durable: its retry, DLQ and stats records together with its input offsets.

`TransactionalCommitter` (the default) writes them in one Kafka transaction, with the
offsets sent through `send_offsets_to_transaction` and the consumer's group metadata,
so either all of a batch's effects become visible to read_committed readers or none
do (exactly-once). `AtLeastOnceCommitter` produces, waits for every acknowledgement,
then commits the offsets; a crash in between repeats the batch. It is kept for
comparison (`--delivery at-least-once`).

Errors are sorted by kind: retriable ones are retried in place (with a backoff),
abortable ones abort the transaction and raise BatchAbortedError (the caller rewinds
and reads the batch again), fatal ones raise FatalKafkaError. A commit whose outcome
stays unknown is never aborted: the consumer exits, and its restart (same
transactional id) settles the transaction either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from config import Settings
from orderpipe.console import Console
from orderpipe.errors import BatchAbortedError, BrokerUnavailableError, DeliveryError, FatalKafkaError
from orderpipe.kafka_clients import create_client, produce, producer_config
from orderpipe.routing import Headers

__all__ = ["AtLeastOnceCommitter", "Committer", "Outgoing", "TransactionalCommitter"]

# How long a retriable error is retried before giving up.
RETRY_WINDOW_S = 60.0
CALL_TIMEOUT_S = 30.0
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
TRANSACTION_RETRY_BACKOFF_MS = 10
# Offset-commit failures that only mean a rebalance took the partitions away.
REBALANCE_ERRORS = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS}
)
FENCED_ERRORS = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


class Committer(Protocol):
    def start(self) -> None: ...

    def commit(self, outgoing: Sequence[Outgoing], offsets: Sequence[TopicPartition]) -> None: ...

    def close(self) -> None: ...


def _error_of(exc: KafkaException) -> KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else None


def _detail(exc: KafkaException) -> str:
    error = _error_of(exc)
    return error.str() if error is not None else str(exc)


def _retriable(error: KafkaError) -> bool:
    return bool(error.retriable())


def _retriable_in_transaction(error: KafkaError) -> bool:
    """Retriable, and the transaction can still go on (it need not be aborted)."""
    return bool(error.retriable()) and not error.txn_requires_abort()


def _back_off(attempt: int) -> None:
    """Waits a little longer after each failed attempt of a retriable call."""
    time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])


class TransactionalCommitter:
    """One transaction per batch.

    Args:
        transactional_id: stable across restarts of the same consumer, so that
            `start` aborts a transaction its crashed predecessor left open.
        transaction_timeout_ms: how long the broker lets a transaction stay open
            before aborting it; bounds how long a consumer that died for good holds
            back the read_committed readers of the topics it wrote.
    """

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        transactional_id: str,
        transaction_timeout_ms: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._transactional_id = transactional_id
        self._clock = clock
        self._producer = create_client(
            Producer,
            {
                **producer_config(settings),
                "transactional.id": transactional_id,
                "transaction.timeout.ms": transaction_timeout_ms,
                # Right after a commit the coordinator answers the next transaction's first
                # request with CONCURRENT_TRANSACTIONS until the commit markers are written
                # (a millisecond or two). librdkafka retries after retry.backoff.ms, 100 ms
                # by default, which made every transaction wait about that long.
                "retry.backoff.ms": TRANSACTION_RETRY_BACKOFF_MS,
            },
        )

    def start(self) -> None:
        """Registers the transactional id, fencing and aborting whatever an older instance left open."""
        try:
            self._retrying(lambda: self._producer.init_transactions(CALL_TIMEOUT_S), _retriable)
        except KafkaException as exc:
            raise BrokerUnavailableError(
                f"could not start transactions as {self._transactional_id}: {_detail(exc)}"
            ) from exc

    def commit(self, outgoing: Sequence[Outgoing], offsets: Sequence[TopicPartition]) -> None:
        """Writes the batch's records and offsets in one transaction.

        Raises:
            BatchAbortedError: the transaction was aborted; nothing of it is visible.
            FatalKafkaError: this producer can never commit again (fenced, for example).
        """
        self._call("begin the transaction", self._producer.begin_transaction)
        try:
            for record in outgoing:
                produce(self._producer, record.topic, record.key, record.value, headers=record.headers)
        except DeliveryError as exc:
            self._abort()
            raise BatchAbortedError(f"transaction aborted: {exc}") from exc
        metadata = self._consumer.consumer_group_metadata()
        self._call(
            "send the offsets",
            lambda: self._producer.send_offsets_to_transaction(list(offsets), metadata, CALL_TIMEOUT_S),
        )
        self._call(
            "commit the transaction",
            lambda: self._producer.commit_transaction(CALL_TIMEOUT_S),
            outcome_unknown_on_timeout=True,
        )

    def _call(self, what: str, action: Callable[[], Any], *, outcome_unknown_on_timeout: bool = False) -> None:
        """Runs one transactional call: retried if retriable, the transaction aborted if abortable.

        Args:
            outcome_unknown_on_timeout: for the commit. librdkafka keeps a commit that
                timed out going, so it is retried, never aborted; if it still has not
                finished when the retry window closes, the consumer stops.
        """
        try:
            self._retrying(action, _retriable_in_transaction)
        except KafkaException as exc:
            error = _error_of(exc)
            if outcome_unknown_on_timeout and error is not None and _retriable_in_transaction(error):
                raise FatalKafkaError(
                    f"could not {what} within {RETRY_WINDOW_S:g}s ({_detail(exc)}); stopping, so that a restart "
                    f"with transactional id {self._transactional_id} settles it"
                ) from exc
            self._abort()
            raise BatchAbortedError(f"could not {what}, so the transaction was aborted ({_detail(exc)})") from exc

    def _abort(self) -> None:
        try:
            self._retrying(lambda: self._producer.abort_transaction(CALL_TIMEOUT_S), _retriable)
        except KafkaException as exc:
            error = _error_of(exc)
            if error is not None and error.code() == KafkaError._STATE:
                return  # no transaction was open
            raise FatalKafkaError(
                f"could not abort the transaction of {self._transactional_id}: {_detail(exc)}"
            ) from exc

    def _retrying(self, action: Callable[[], Any], retriable: Callable[[KafkaError], bool]) -> None:
        """Runs `action`, again after a backoff while it fails retriably within the retry window.

        Raises:
            FatalKafkaError: the error was fatal (fenced, for example).
            KafkaException: the last error, once it is not retriable or the window closed.
        """
        deadline = self._clock() + RETRY_WINDOW_S
        attempt = 0
        while True:
            try:
                action()
                return
            except KafkaException as exc:
                error = _error_of(exc)
                if error is not None and error.fatal():
                    raise FatalKafkaError(self._fatal_sentence(error)) from exc
                if error is None or not retriable(error) or self._clock() >= deadline:
                    raise
                _back_off(attempt)
                attempt += 1

    def _fatal_sentence(self, error: KafkaError) -> str:
        if error.code() in FENCED_ERRORS:
            return (
                f"another consumer started with transactional id {self._transactional_id} and fenced this one, "
                f"so this one stops to keep processing exactly-once ({error.str()})"
            )
        return f"Kafka reported a fatal transaction error for {self._transactional_id}: {error.str()}"

    def close(self) -> None:
        self._producer.flush(CALL_TIMEOUT_S)


class AtLeastOnceCommitter:
    """Produce, wait for every acknowledgement, then commit the offsets synchronously."""

    def __init__(self, settings: Settings, consumer: Consumer, console: Console) -> None:
        self._consumer = consumer
        self._console = console
        self._producer = create_client(Producer, producer_config(settings))
        self._delivery_errors: list[str] = []

    def start(self) -> None:
        """Nothing to set up: there are no transactions."""

    def commit(self, outgoing: Sequence[Outgoing], offsets: Sequence[TopicPartition]) -> None:
        """Raises DeliveryError when a record was not acknowledged (the offsets are then not committed)."""
        for record in outgoing:
            produce(
                self._producer, record.topic, record.key, record.value, headers=record.headers, on_delivery=self._report
            )
        if outgoing:
            remaining = self._producer.flush(CALL_TIMEOUT_S)
            if remaining or self._delivery_errors:
                problems = "; ".join(self._delivery_errors[:3]) or f"{remaining} records unacknowledged"
                self._delivery_errors.clear()
                raise DeliveryError(f"records were not acknowledged, so this batch was not committed: {problems}")
        self._commit_offsets(offsets)

    def _report(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._delivery_errors.append(error.str())

    def _commit_offsets(self, offsets: Sequence[TopicPartition]) -> None:
        """A failure means the batch is read again (at-least-once allows that), so it only warns."""
        try:
            results = self._consumer.commit(offsets=list(offsets), asynchronous=False) or []
            errors = [tp.error for tp in results if tp.error is not None]
        except KafkaException as exc:
            error = _error_of(exc)
            errors = [error] if error is not None else []
        for error in errors:
            if error.code() in REBALANCE_ERRORS:
                self._console.debug(f"commit not accepted after a rebalance: {error.str()}")
            else:
                self._console.error(f"⚠ Commit failed, the batch will be read again: {error.str()}")

    def close(self) -> None:
        self._producer.flush(CALL_TIMEOUT_S)
