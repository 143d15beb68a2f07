"""The project's exceptions: one root, and each error says whether it is retriable.

Third-party errors (confluent-kafka, fastavro, httpx) are translated into these at
the edge, with the original kept as `__cause__`. Each class says whether the failed
operation may simply be tried again (`retriable`) and which exit code a program
ends with when the error reaches the command line.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigError",
    "DeliveryError",
    "DeserializationError",
    "FatalKafkaError",
    "KafkaCallError",
    "NotReady",
    "OrderPipeError",
    "RegistryUnavailableError",
    "TransactionLostError",
    "ValidationError",
]


class OrderPipeError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False
    exit_code: int = 1


class ConfigError(OrderPipeError):
    """A setting or flag has a value the programs cannot use."""

    exit_code = 2


class DeserializationError(OrderPipeError):
    """A record's bytes are not an order in a wire format the consumer knows."""


class ValidationError(OrderPipeError):
    """A decoded order breaks one of the validation rules of docs/wire-formats.md."""


class NotReady(OrderPipeError):
    """A record cannot be decided yet (its writer schema is still being looked up, say).

    The consumer defers it: its partition waits `retry_after_ms` and the record is
    read again; other partitions go on.
    """

    retriable = True

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class BrokerUnavailableError(OrderPipeError):
    """The Kafka broker could not be reached or did not answer in time."""

    retriable = True


class RegistryUnavailableError(OrderPipeError):
    """The schema registry could not be reached or refused a request."""

    retriable = True


class DeliveryError(OrderPipeError):
    """The broker did not acknowledge records the programs produced."""


class FatalKafkaError(OrderPipeError):
    """Kafka reported an error the client cannot recover from (for example, fenced by a newer instance)."""


class TransactionLostError(FatalKafkaError):
    """The transactional producer failed for good (fenced, say): a new one with the same id goes on.

    The consumer replaces the producer and restores its partitions from the last
    commit (ConsumerLoop); raised again too often, it stops the consumer.
    """


class KafkaCallError(OrderPipeError):
    """A call to Kafka failed; the flags say what the caller may do about it.

    Attributes:
        code: Kafka's name for the error (e.g. REQUEST_TIMED_OUT, ILLEGAL_GENERATION).
        retriable: the same call may succeed if repeated.
        abortable: the open transaction cannot go on and must be aborted.
        fatal: the client can never succeed again (fenced by a newer instance, say).
    """

    FENCED_CODES = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"})

    def __init__(
        self, message: str, code: str, *, retriable: bool = False, abortable: bool = False, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable
        self.abortable = abortable
        self.fatal = fatal

    @property
    def fenced(self) -> bool:
        return self.code in self.FENCED_CODES
