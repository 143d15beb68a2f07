"""Consumed messages as plain records for the core: confluent-kafka's `Message` to `Run`s of records.

Every record a consumer reads comes through `incoming_runs`. A record of the orders
topic costs five calls (and the check of its headers, if it has any) and no object of
its own: its run keeps the message and makes the `Incoming`, in three more calls, only
if the core asks for it. Header names that are not UTF-8 are handled with care here:
confluent-kafka would crash the interpreter on them (see `_checked_headers`), so such
a record comes without headers, marked unreadable.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from orderpipe.kafka.clients import call_error
from orderpipe.model.records import UNREADABLE_HEADERS, Headers, Incoming, Run

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
    headers, unreadable = ((), "") if raw is None else _headers_of(raw)
    return _whole(message, topic, headers, unreadable, retry_topic)


def incoming_runs(
    messages: list[Message], retry_topic: str | None, on_error: Callable[[KafkaError, str | None], None]
) -> list[Run]:
    """The consumed messages as runs of records, in order (see orderpipe/model/records.py).

    A run ends where the partition changes and where a plain record (of the orders
    topic, its headers, if any, readable) follows one that is not, or the other way
    round. A plain run keeps its messages, values and readable headers, and makes a
    record whole only when asked; the others' records are made at once. A message
    that carries an error instead of a record goes to `on_error` with its topic.
    """
    runs: list[Run] = []
    whole: list[Incoming] = []  # records of the run being made, when it is not plain
    run = _PlainRun("", -1)  # the plain run being made; its key and appends kept as locals below
    run_topic, run_partition, keep, keep_value = run.topic, run.partition, run.kept.append, run.values.append
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
        headers: Headers = ()
        if raw is not None or topic == retry_topic:  # not the common record
            # Checked before any other call: headers() may have left an error pending (see _checked_headers).
            headers, unreadable = ((), "") if raw is None else _headers_of(raw)
            if topic == retry_topic or unreadable:
                if run.kept or (whole and (partition != whole[-1].partition or topic != whole[-1].topic)):
                    _end_run(runs, whole, run)
                    run, run_partition = _PlainRun("", -1), -1
                whole.append(_whole(message, topic, headers, unreadable, retry_topic))
                continue
        if whole or partition != run_partition or topic != run_topic:
            _end_run(runs, whole, run)
            run = _PlainRun(topic, partition)
            run_topic, run_partition, keep, keep_value = topic, partition, run.kept.append, run.values.append
        if headers:
            run.headers[len(run.kept)] = headers
        keep(message)
        keep_value(message.value())
    _end_run(runs, whole, run)
    return runs


class _PlainRun:
    """A plain run being made: its messages, their values, and the headers of those that have any, by index."""

    __slots__ = ("headers", "kept", "partition", "topic", "values")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition
        self.kept: list[Message] = []
        self.values: list[bytes | None] = []
        self.headers: dict[int, Headers] = {}

    def record(self, index: int) -> Incoming:
        """The record at `index`, whole: three calls, the rest is known."""
        message = self.kept[index]
        return _new_tuple(
            Incoming,
            (
                self.topic,
                self.partition,
                message.offset() or 0,
                message.timestamp()[1],
                message.key(),
                self.values[index],
                self.headers.get(index, ()),
                False,
                "",
            ),
        )


def _end_run(runs: list[Run], whole: list[Incoming], run: _PlainRun) -> None:
    """Adds the runs being made, if any: the whole records' (of one partition), then the plain one."""
    if whole:  # of one partition, and none plain
        runs.append(Run.of_whole(whole[:]))
        whole.clear()
    if run.kept:
        runs.append(
            Run(
                run.topic,
                run.partition,
                from_retry_topic=False,
                plain=True,
                values=run.values,
                first_offset=run.kept[0].offset() or 0,
                last_offset=run.kept[-1].offset() or 0,
                record=run.record,
            )
        )


# What stands for the headers of a record whose header names are not all UTF-8.
_UNREADABLE: Any = object()


def _headers_of(raw: Any) -> tuple[Headers, str]:
    """What `headers()` gave (or `_UNREADABLE`), checked: the headers, and why they are unreadable or ""."""
    if raw is _UNREADABLE:
        return (), UNREADABLE_HEADERS
    return _checked_headers(raw)


def _whole(message: Message, topic: str, headers: Headers, unreadable: str, retry_topic: str | None) -> Incoming:
    """A record with no error, whole, given its topic and its checked headers."""
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
        for pair in raw:
            if not _filled(pair):
                return (), UNREADABLE_HEADERS
    except Exception:  # the UnicodeDecodeError left pending
        return (), UNREADABLE_HEADERS
    return tuple((name, value or b"") for name, value in raw), ""


_SLOTS_AT = tuple.__basicsize__
_TWO_SLOTS = ctypes.c_void_p * 2


def _filled(pair: Any) -> bool:
    """Whether a header is a (name, value) tuple whose two slots hold objects (read as addresses, not touched)."""
    return type(pair) is tuple and len(pair) == 2 and all(_TWO_SLOTS.from_address(id(pair) + _SLOTS_AT))
