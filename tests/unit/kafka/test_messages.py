"""Consumed messages as records: an error instead of a record is raised, and headers are checked before use."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from orderpipe.errors import KafkaCallError
from orderpipe.kafka.messages import _checked_headers, incoming, incoming_runs
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


def test_a_header_tuple_with_an_empty_slot_makes_the_headers_unreadable_without_being_read() -> None:
    # What confluent-kafka builds for a header name that is not UTF-8: a tuple whose name slot is empty.
    new_tuple = ctypes.pythonapi.PyTuple_New
    new_tuple.restype, new_tuple.argtypes = ctypes.py_object, [ctypes.c_ssize_t]
    empty = new_tuple(2)
    assert _checked_headers([("trace", b"1"), empty]) == ((), UNREADABLE_HEADERS)
    assert _checked_headers([("trace", b"1"), ("no-value", None)]) == ((("trace", b"1"), ("no-value", b"")), "")
    assert _checked_headers([["trace", b"1"]]) == ((), UNREADABLE_HEADERS)  # not confluent-kafka's shape


def test_a_poll_comes_as_runs_split_where_the_partition_or_the_topic_changes() -> None:
    messages = [
        Message(topic="orders", partition=0, offset=1, key=b"a", value=b"1", timestamp=(1, 10)),
        Message(topic="orders", partition=0, offset=3, key=b"b", value=b"2", timestamp=(1, 11)),
        Message(topic="orders", partition=0, offset=4, value=b"3", headers=[("trace", b"x")], timestamp=(1, 12)),
        Message(topic="orders", partition=0, offset=5, value=b"4", timestamp=(1, 13)),
        Message(topic="orders", partition=1, offset=0, value=b"5", timestamp=(1, 14)),
        Message(topic="orders", partition=1, error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)),
        Message(topic="orders-retry", partition=1, offset=7, value=b"6", timestamp=(1, 15)),
        Message(topic="orders-retry", partition=1, offset=8, value=b"7", timestamp=(1, 16)),
    ]
    errors: list[tuple[KafkaError, str | None]] = []
    runs = incoming_runs(messages, "orders-retry", lambda error, topic: errors.append((error, topic)))
    shapes = [
        (run.topic, run.partition, run.plain, run.from_retry_topic, run.first_offset, run.last_offset, run.values)
        for run in runs
    ]
    assert shapes == [
        ("orders", 0, True, False, 1, 5, [b"1", b"2", b"3", b"4"]),
        ("orders", 1, True, False, 0, 0, [b"5"]),
        ("orders-retry", 1, False, True, 7, 8, [b"6", b"7"]),
    ]
    assert [(e.code(), topic) for e, topic in errors] == [(KafkaError.TOPIC_AUTHORIZATION_FAILED, "orders")]
    # Made whole when asked, a record is what `incoming` makes of its message.
    whole = [m for m in messages if m.error() is None]
    assert [record for run in runs for record in run.records()] == [incoming(m, "orders-retry") for m in whole]
    assert runs[0].record(2).headers == (("trace", b"x"),)


class HeadersNotUtf8:
    """A consumed message whose header names are not UTF-8: `headers()` raises, as confluent-kafka's may."""

    def __init__(self, message: Message) -> None:
        self._message = message

    def headers(self) -> Any:
        raise SystemError("<built-in method headers> returned a result with an exception set")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


def test_a_record_whose_headers_are_unreadable_ends_the_plain_run_and_comes_whole_marked() -> None:
    messages: list[Any] = [
        Message(topic="orders", partition=0, offset=1, value=b"1", headers=[("trace", b"x")], timestamp=(1, 10)),
        HeadersNotUtf8(Message(topic="orders", partition=0, offset=2, value=b"2", timestamp=(1, 11))),
        Message(topic="orders", partition=0, offset=3, value=b"3", timestamp=(1, 12)),
    ]
    runs = incoming_runs(messages, "orders-retry", lambda error, topic: None)
    shapes = [(run.plain, run.first_offset, run.last_offset) for run in runs]
    assert shapes == [(True, 1, 1), (False, 2, 2), (True, 3, 3)]
    assert runs[1].record(0).unreadable == UNREADABLE_HEADERS
    assert runs[1].record(0).headers == ()
    assert runs[0].record(0).headers == (("trace", b"x"),)
