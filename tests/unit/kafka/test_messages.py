"""Consumed messages as records: an error instead of a record is raised, and headers are checked before use."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from orderpipe.errors import KafkaCallError
from orderpipe.kafka.messages import _checked_headers, incoming
from orderpipe.model.records import UNREADABLE_HEADERS


class ErrorMessage:
    """A consumed message that carries an error instead of a record."""

    def error(self) -> KafkaError:
        return KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)

    def topic(self) -> str:
        return "orders"


class Unreadable(list[tuple[str, bytes]]):
    """Headers whose reading raises, as the error confluent-kafka left pending surfaces."""

    def __iter__(self) -> Any:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


def test_a_message_with_an_error_raises_it_named_with_its_topic() -> None:
    with pytest.raises(KafkaCallError, match="could not read orders") as raised:
        incoming(ErrorMessage())  # type: ignore[arg-type]
    assert raised.value.code == "TOPIC_AUTHORIZATION_FAILED"


def test_headers_are_checked_before_they_are_read() -> None:
    assert _checked_headers([("trace", b"1")]) == ((("trace", b"1"),), "")
    assert _checked_headers([]) == ((), "")
    assert _checked_headers(Unreadable([("x", b"")])) == ((), UNREADABLE_HEADERS)
