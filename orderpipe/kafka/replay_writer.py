"""The DLQ replay's transactional producer: each batch's replayed records and their ledger entries in one transaction.

orderpipe.programs.dlq_app decides what to replay; this writes it. Its transactional
id fences any earlier replay of the same ledger still running, and its start aborts
what that one left open (orderpipe.core.replay explains the ledger). Kafka's errors
come back as the project's own: a refusal as ConfigError naming what is needed,
fencing as FatalKafkaError, anything else as BrokerUnavailableError or KafkaCallError.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from confluent_kafka import KafkaException, Producer

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, denied_sentence
from orderpipe.core.replay import Ledger, Replayed
from orderpipe.errors import BrokerUnavailableError, ConfigError, DeliveryError, FatalKafkaError, KafkaCallError
from orderpipe.kafka.clients import call_error, create_client, poll_for, produce, producer_config
from orderpipe.model.records import Incoming

__all__ = ["CALL_TIMEOUT_S", "CALL_WINDOW_S", "ReplayWriter", "replay_writer"]

# How long a transactional call that fails retriably is tried again.
CALL_WINDOW_S = 60.0
CALL_TIMEOUT_S = 10.0
# Between two tries of a transactional call, the producer serves its callbacks this long.
RETRY_POLL_S = 0.1


class ReplayWriter:
    """The replay's transactional producer: each batch's replayed records and ledger entries in one transaction."""

    def __init__(self, producer: Producer, settings: Settings, ledger: str, transactional_id: str) -> None:
        self._producer, self._settings, self._ledger = producer, settings, ledger
        self._transactional_id = transactional_id
        self._open = False  # a transaction was begun and is neither committed nor aborted

    def start(self) -> None:
        """Registers the transactional id: fences an earlier replay and settles what it left open."""
        self._call("start transactions", lambda: self._producer.init_transactions(CALL_WINDOW_S))

    def write(self, records: Sequence[tuple[Incoming, Replayed]]) -> None:
        """Puts the records back on `orders` and their ledger entries in the ledger, in one transaction."""
        if not records:
            return
        producer, orders = self._producer, self._settings.orders_topic
        self._call("begin the transaction", producer.begin_transaction)
        self._open = True
        try:
            for record, again in records:
                produce(producer, orders, again.key, again.value, headers=again.headers, partition=again.partition)
                key, value = Ledger.entry(record)
                produce(producer, self._ledger, key, value)
            self._call("commit the transaction", lambda: producer.commit_transaction(CALL_TIMEOUT_S))
            self._open = False
        except (KafkaCallError, DeliveryError) as exc:
            self.abort()
            raise BrokerUnavailableError(
                f"the replay stopped: {exc}; nothing of its last transaction was replayed, and running the same "
                "replay again goes on from there"
            ) from exc

    def abort(self) -> None:
        """Aborts the open transaction, if any (after a failure, or a stop in the middle of one)."""
        if not self._open:
            return
        self._open = False
        try:
            self._producer.abort_transaction(CALL_TIMEOUT_S)
        except KafkaException as exc:  # the next run's start aborts it in any case
            raise BrokerUnavailableError(
                f"the replay stopped and {call_error(exc, 'abort its transaction')}; running the same replay "
                "again settles it"
            ) from exc

    def _call(self, what: str, action: Callable[[], object]) -> None:
        """Runs a transactional call, again while it fails retriably (for CALL_WINDOW_S)."""
        deadline = time.monotonic() + CALL_WINDOW_S
        while True:
            try:
                action()
                return
            except KafkaException as exc:
                error = call_error(exc, what)
                if error.code in AUTHORIZATION_CODES:
                    raise ConfigError(denied_sentence(what, self._needs())) from exc
                if error.fatal:
                    why = (
                        f"another dlq.py replay of {self._settings.dlq_topic} started and fenced this one"
                        if error.fenced
                        else "the transactional producer cannot go on"
                    )
                    raise FatalKafkaError(f"{error}: {why}; what this run committed stays replayed") from exc
                if not error.retriable or time.monotonic() > deadline:
                    raise error from exc
                poll_for(self._producer, RETRY_POLL_S)  # the backoff serves the producer's callbacks

    def _needs(self) -> str:
        return (
            f"WRITE on transactional id {self._transactional_id}, WRITE on topics "
            f"{self._settings.orders_topic} and {self._ledger}"
        )


@contextmanager
def replay_writer(settings: Settings, ledger: str, transactional_id: str) -> Iterator[ReplayWriter]:
    """A started ReplayWriter appending to `ledger`; an open transaction is aborted when the block is left."""
    producer = create_client(
        Producer,
        {
            **producer_config(settings),
            "transactional.id": transactional_id,
            "transaction.timeout.ms": int(CALL_WINDOW_S * 1000),
        },
    )
    writer = ReplayWriter(producer, settings, ledger, transactional_id)
    writer.start()
    try:
        yield writer
    finally:
        # A stop (Ctrl-C) in the middle of a transaction: abort it now rather than leave it
        # holding back read_committed readers of `orders` until its timeout.
        writer.abort()
