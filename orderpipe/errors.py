"""The project's exceptions: one root, and each error says whether it is retriable.

Third-party errors (confluent-kafka, fastavro, httpx) are translated into these at
the edge, with the original kept as `__cause__`.
"""

from __future__ import annotations

__all__ = [
    "BatchAbortedError",
    "BrokerUnavailableError",
    "ConfigError",
    "DeliveryError",
    "DeserializationError",
    "FatalKafkaError",
    "OrderPipeError",
    "RegistryUnavailableError",
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
    """A decoded order breaks one of the rules of DESIGN section 2."""


class BrokerUnavailableError(OrderPipeError):
    """The Kafka broker could not be reached or did not answer in time."""

    retriable = True


class RegistryUnavailableError(OrderPipeError):
    """The schema registry could not be reached or refused a request."""

    retriable = True


class DeliveryError(OrderPipeError):
    """The broker did not acknowledge records the programs produced."""


class BatchAbortedError(OrderPipeError):
    """A batch's transaction was aborted; its records are read again from the last commit."""

    retriable = True


class FatalKafkaError(OrderPipeError):
    """Kafka reported an error the client cannot recover from (for example, fenced by a newer instance)."""
