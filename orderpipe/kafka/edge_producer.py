"""The producer half of the consumer's Kafka edge (orderpipe/kafka/edge.py): transactions with offsets.

Without transactions (at-least-once) it produces, then flushes and commits the
offsets. Transactional calls get a short timeout: one that runs out is a retriable
error, and the committer tries again after a backoff while the loop keeps polling,
instead of the poll thread blocking for long inside librdkafka. Every blocking call
also runs under the watchdog (orderpipe.kafka.watchdog), with WATCHDOG_GRACE_S more
than its own timeout: librdkafka does not always keep to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from orderpipe.core.acls import AUTHORIZATION_CODES, denied_sentence
from orderpipe.core.ports import TP, Outgoing
from orderpipe.errors import ConfigError, DeliveryError, KafkaCallError
from orderpipe.kafka.clients import (
    FLUSH_TIMEOUT_S,
    call_error,
    guarded_call,
    partition_offsets,
    produce,
)
from orderpipe.kafka.watchdog import UNTIMED_CALL_LIMIT_S, WATCHDOG, WATCHDOG_GRACE_S

__all__ = ["EdgeProducer"]

# One transactional call (commit, abort); a longer wait is tried again.
TRANSACTION_CALL_TIMEOUT_S = 5.0
# Sending offsets takes two coordinators: a timeout in its second step makes librdkafka
# abort the transaction, so it gets as long as a transaction may stay open.
SEND_OFFSETS_TIMEOUT_S = 10.0
SEND_OFFSETS_LIMIT_S = SEND_OFFSETS_TIMEOUT_S + WATCHDOG_GRACE_S
# Registering the transactional id: at start-up, before the consumer joins its group.
INIT_TIMEOUT_S = 60.0


class EdgeProducer:
    """The producer half of a `ConfluentEdge`: transactions with the consumer's offsets, or produce then flush."""

    _producer: Producer
    _consumer: Consumer
    _on_delivery: Callable[[KafkaError | None, Any], None] | None

    def __init__(self) -> None:
        self._in_transaction = False
        # The group generation the batch was read in; its offsets are sent with it.
        self._group_metadata: Any = None
        self._delivery_errors: list[str] = []
        self._transactional_id = ""
        # A thread still inside a call of the current producer that librdkafka never returned from.
        self._stuck: threading.Thread | None = None

    def init_transactions(self) -> None:
        # librdkafka retries within the call (a coordinator still loading, say).
        guarded_call(
            "start transactions",
            lambda: self._producer.init_transactions(INIT_TIMEOUT_S),
            f"WRITE on transactional id {self._transactional_id}",
            limit_s=INIT_TIMEOUT_S + WATCHDOG_GRACE_S,
        )

    def begin_transaction(self) -> None:
        guarded_call("begin the transaction", self._producer.begin_transaction)
        self._in_transaction = True
        try:
            # A copy, not a handle: the generation as it is now, when the batch was read.
            self._group_metadata = self._consumer.consumer_group_metadata()
        except KafkaException as exc:
            raise call_error(exc, "read the consumer group metadata") from exc

    def produce(self, records: Sequence[Outgoing]) -> None:
        for record in records:
            produce(
                self._producer,
                record.topic,
                record.key,
                record.value,
                headers=record.headers,
                partition=record.partition,
                on_delivery=self._on_delivery,
            )

    def send_offsets(self, offsets: Mapping[TP, int]) -> None:
        """Sends the batch's offsets with the generation it was read in: after a rebalance they are refused.

        librdkafka 2.16 does not keep to this call's timeout while the group
        coordinator's broker is gone (its issues 5456 and 5511): it may block for
        minutes. So the call runs on a thread of its own, and one still running
        SEND_OFFSETS_LIMIT_S later loses the transaction: the producer is left to that
        thread (never closed under it) and the consumer goes on with a new one
        (`renew_producer`), instead of the watchdog ending the process.
        """
        producer, metadata, what = self._producer, self._group_metadata, "send the offsets"
        failure: list[KafkaException] = []

        def send() -> None:
            try:
                producer.send_offsets_to_transaction(partition_offsets(offsets), metadata, SEND_OFFSETS_TIMEOUT_S)
            except KafkaException as exc:
                failure.append(exc)

        sending = threading.Thread(target=send, name="send-offsets", daemon=True)
        sending.start()
        sending.join(SEND_OFFSETS_LIMIT_S)
        if sending.is_alive():
            self._stuck = sending
            raise KafkaCallError(
                f"could not {what}: librdkafka did not return within {SEND_OFFSETS_LIMIT_S:g}s", "_STUCK", fatal=True
            )
        if failure:
            error = call_error(failure[0], what)
            if error.code in AUTHORIZATION_CODES:
                raise ConfigError(denied_sentence(what, "a permission")) from failure[0]
            raise error from failure[0]

    def commit_transaction(self) -> None:
        guarded_call(
            "commit the transaction",
            lambda: self._producer.commit_transaction(TRANSACTION_CALL_TIMEOUT_S),
            limit_s=TRANSACTION_CALL_TIMEOUT_S + WATCHDOG_GRACE_S,
        )
        self._in_transaction = False

    def abort_transaction(self) -> None:
        if not self._in_transaction:
            return  # nothing was begun, or it was committed
        guarded_call(
            "abort the transaction",
            lambda: self._producer.abort_transaction(TRANSACTION_CALL_TIMEOUT_S),
            limit_s=TRANSACTION_CALL_TIMEOUT_S + WATCHDOG_GRACE_S,
        )
        self._in_transaction = False

    def flush(self) -> None:
        with WATCHDOG.guard("flush the producer", FLUSH_TIMEOUT_S + WATCHDOG_GRACE_S):
            remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or self._delivery_errors:
            problems = "; ".join(self._delivery_errors[:3]) or f"{remaining} records unacknowledged"
            self._delivery_errors.clear()
            raise DeliveryError(f"records were not acknowledged, so this batch was not committed: {problems}")

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._delivery_errors.append(error.str())

    def commit_offsets(self, offsets: Mapping[TP, int]) -> None:
        try:
            with WATCHDOG.guard("commit the offsets", UNTIMED_CALL_LIMIT_S):
                results = self._consumer.commit(offsets=partition_offsets(offsets), asynchronous=False) or []
        except KafkaException as exc:
            raise call_error(exc, "commit the offsets") from exc
        for tp in results:
            if tp.error is not None:
                raise call_error(tp.error, f"commit the offset of {tp.topic}-{tp.partition}")
