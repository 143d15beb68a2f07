"""Consumed messages as plain records for the core: confluent-kafka's `Message` to `Run`s of records.

Every record a consumer reads comes through `incoming_runs`. The common record (no
headers, on the orders topic) costs five calls and no object of its own: its run keeps
the message and makes the `Incoming` only if the core asks for it. Header names that
are not UTF-8 are handled with care here: confluent-kafka would crash the interpreter
on them (see `_checked_headers`), so such a record comes without headers, marked
unreadable.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from orderpipe.kafka.clients import call_error
from orderpipe.model.records import UNREADABLE_HEADERS, Incoming, Run, runs_of

__all__ = ["incoming", "incoming_runs"]


def incoming(message: Message, retry_topic: str | None = None) -> Incoming:
    """A consumed message as plain data for the core (header values as bytes).

    A record whose header names are not all UTF-8 comes without headers, marked
    unreadable (see `_checked_headers`).

    Raises:
        KafkaCallError: the message carries an error instead of a record.
    """
    error = message.error()
    if error is not None:
        raise call_error(KafkaException(error), f"read {message.topic() or 'a topic'}")
    topic = message.topic() or ""  # before headers(), which may leave an error pending (see _checked_headers)
    try:
        raw = message.headers()
    except Exception:  # SystemError: a header name that is not UTF-8 (see _checked_headers)
        raw = _UNREADABLE
    return _whole(message, topic, raw, retry_topic)


def incoming_runs(
    messages: list[Message], retry_topic: str | None, on_error: Callable[[KafkaError, str | None], None]
) -> list[Run]:
    """The consumed messages as runs of records, in order (see orderpipe/model/records.py).

    A run ends where the partition changes and where a plain record (no headers, not
    of the retry topic) follows one that is not, or the other way round. A plain run
    keeps its messages and makes a record whole only when asked; the others' records
    are made at once. A message that carries an error instead of a record goes to
    `on_error` with its topic.
    """
    runs: list[Run] = []
    whole: list[Incoming] = []  # records of the run being made, when it is not plain
    kept: list[Message] = []  # messages of the plain run being made
    values: list[bytes | None] = []
    run_topic, run_partition = "", -1
    for message in messages:
        error = message.error()
        if error is not None:
            on_error(error, message.topic())
            continue
        topic, partition = message.topic() or "", message.partition() or 0
        try:
            raw = message.headers()
        except Exception:  # SystemError: a header name that is not UTF-8 (see _checked_headers)
            raw = _UNREADABLE
        if raw is None and topic != retry_topic:
            if whole or partition != run_partition or topic != run_topic:
                _end_run(runs, whole, kept, values, retry_topic)
                run_topic, run_partition = topic, partition
                kept, values = [], []
            kept.append(message)
            values.append(message.value())
        else:
            # Made before any other call: headers() may have left an error pending (see _checked_headers).
            record = _whole(message, topic, raw, retry_topic)
            if kept:
                _end_run(runs, whole, kept, values, retry_topic)
                kept, values = [], []
                run_partition = -1
            whole.append(record)
    _end_run(runs, whole, kept, values, retry_topic)
    return runs


def _end_run(
    runs: list[Run], whole: list[Incoming], kept: list[Message], values: list[bytes | None], retry_topic: str | None
) -> None:
    """Adds the run being made, if any: the plain one kept as messages, or the whole records' runs."""
    if whole:
        runs.extend(runs_of(whole))
        whole.clear()
    if kept:
        runs.append(
            Run(
                kept[0].topic() or "",
                kept[0].partition() or 0,
                from_retry_topic=False,
                plain=True,
                values=values,
                first_offset=kept[0].offset() or 0,
                last_offset=kept[-1].offset() or 0,
                record=partial(_kept_record, kept, retry_topic),
            )
        )


def _kept_record(kept: list[Message], retry_topic: str | None, index: int) -> Incoming:
    return incoming(kept[index], retry_topic)


# What stands for the headers of a record whose header names are not all UTF-8.
_UNREADABLE: Any = object()


def _whole(message: Message, topic: str, raw: Any, retry_topic: str | None) -> Incoming:
    """A record with no error, whole, given its topic and what `headers()` gave (or `_UNREADABLE`)."""
    headers: tuple[tuple[str, bytes], ...]
    if raw is _UNREADABLE:
        headers, unreadable = (), UNREADABLE_HEADERS
    else:
        # Headers are rare on `orders`: a record without them takes no call of its own.
        headers, unreadable = _checked_headers(raw) if raw else ((), "")
    return _new_tuple(
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
