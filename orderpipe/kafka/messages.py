"""Consumed messages as plain records for the core: confluent-kafka's `Message` to `Incoming`.

Every record a consumer reads comes through `incoming_records`. Header names that are
not UTF-8 are handled with care here: confluent-kafka would crash the interpreter on
them (see `_checked_headers`), so such a record comes without headers, marked unreadable.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from orderpipe.kafka.clients import call_error
from orderpipe.model.records import UNREADABLE_HEADERS, Incoming

__all__ = ["incoming", "incoming_records"]


def incoming(message: Message, retry_topic: str | None = None) -> Incoming:
    """A consumed message as plain data for the core (header values as bytes); see `incoming_records`.

    A record whose header names are not all UTF-8 comes without headers, marked
    unreadable (see `_checked_headers`).

    Raises:
        KafkaCallError: the message carries an error instead of a record.
    """
    records = incoming_records([message], retry_topic, _message_error)
    return records[0]


def _message_error(error: KafkaError, topic: str | None) -> None:
    raise call_error(KafkaException(error), f"read {topic or 'a topic'}")


def incoming_records(
    messages: list[Message], retry_topic: str | None, on_error: Callable[[KafkaError, str | None], None]
) -> list[Incoming]:
    """`incoming` of each consumed message, in one loop (the consumer's every record comes through here).

    A message that carries an error instead of a record goes to `on_error` with its topic.
    """
    records: list[Incoming] = []
    append = records.append
    for message in messages:
        error = message.error()
        if error is not None:
            on_error(error, message.topic())
            continue
        # Headers are rare on `orders`: a record without them takes no call of its own.
        headers: tuple[tuple[str, bytes], ...]
        try:
            raw = message.headers()
        except Exception:  # SystemError: a header name that is not UTF-8 (see _checked_headers)
            headers, unreadable = (), UNREADABLE_HEADERS
        else:
            headers, unreadable = _checked_headers(raw) if raw else ((), "")
        topic = message.topic() or ""
        append(
            _new_tuple(
                Incoming,
                (
                    topic,
                    message.partition() or 0,
                    message.offset() or 0,
                    message.timestamp()[1],
                    message.key(),
                    message.value(),
                    headers,
                    topic == retry_topic,
                    unreadable,
                ),
            )
        )
    return records


_new_tuple = tuple.__new__


def _checked_headers(raw: Any) -> tuple[tuple[tuple[str, bytes], ...], str]:
    """What `headers()` returned, once the error it may have left pending and every slot are checked.

    confluent-kafka (2.16, `c_headers_to_py`) builds each header's (name, value)
    tuple even when the name is not UTF-8, leaving an empty slot where the name
    should be and the decoding error pending. `headers()` then raises SystemError,
    or returns and leaves the error to surface at some later call; reading the
    empty slot would crash the interpreter. So the pending error is brought out at
    once (ctypes' `pythonapi` raises any error pending after a call) and every
    tuple is checked for an empty slot before it is read.
    """
    try:
        if not raw:  # the common case, with nothing to check
            return (), ""
        ctypes.pythonapi.PyErr_Occurred()
        if not all(_filled(pair) for pair in raw):
            return (), UNREADABLE_HEADERS
    except Exception:  # the UnicodeDecodeError left pending
        return (), UNREADABLE_HEADERS
    return tuple((name, value or b"") for name, value in raw), ""


_SLOTS_AT, _SLOT_SIZE = tuple.__basicsize__, tuple.__itemsize__


def _filled(pair: Any) -> bool:
    """Whether every slot of a tuple holds an object (read as addresses, without touching them)."""
    start = id(pair) + _SLOTS_AT
    return all(ctypes.c_void_p.from_address(start + i * _SLOT_SIZE).value for i in range(len(pair)))
