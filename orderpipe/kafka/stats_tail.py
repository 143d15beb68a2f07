"""Reading the stats topic on confluent-kafka: the edge's `StatsTail`, and the --stats view."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from orderpipe.config.settings import Settings
from orderpipe.core.ports import TP
from orderpipe.core.stats_view import CatchUp, StatsView
from orderpipe.core.topics import stats_keys
from orderpipe.errors import BrokerUnavailableError, FatalKafkaError, KafkaCallError
from orderpipe.kafka.admin import Answered, partition_counts, require_grants
from orderpipe.kafka.clients import call_error, connect_admin, create_client
from orderpipe.kafka.messages import incoming
from orderpipe.kafka.watchdog import UNTIMED_CALL_LIMIT_S, WATCHDOG, WATCHDOG_GRACE_S
from orderpipe.model.money import RunningAverage
from orderpipe.model.records import Incoming

__all__ = ["KafkaStatsTail", "read_group_stats"]

# The longest the loop waits for the stats topic's end; a timeout is asked again.
END_TIMEOUT_S = 5.0
CATCH_UP_TIMEOUT_S = 60.0


class KafkaStatsTail:
    """Reads the stats topic's one partition from the beginning, outside any group, read_committed.

    Its end (the high watermark, open transactions included) is asked of a second
    client that reads nothing: a read_committed consumer is told the last stable
    offset instead, and the admin client is for start-up only (orderpipe.kafka.edge).
    """

    def __init__(self, settings: Settings) -> None:
        self._tp = TopicPartition(settings.stats_topic, 0)
        conf = {
            **settings.kafka_client_config(),
            # Required by the client, never joined: the reader is assigned, not subscribed.
            "group.id": f"{settings.consumer_group}.stats-reader",
            "enable.auto.commit": False,
            # Never skip history: an offset out of range goes back to the start.
            "auto.offset.reset": "earliest",
        }
        self._consumer = create_client(Consumer, {**conf, "isolation.level": "read_committed"})
        self._consumer.assign([TopicPartition(settings.stats_topic, 0, OFFSET_BEGINNING)])
        self._ends_conf = {**conf, "isolation.level": "read_uncommitted"}
        self._ends: Consumer | None = None

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Incoming]:
        try:
            with WATCHDOG.guard(f"read {self._tp.topic}", timeout_s + WATCHDOG_GRACE_S):
                messages = self._consumer.consume(max_records, timeout_s)
        except KafkaException as exc:
            raise call_error(exc, f"read {self._tp.topic}") from exc
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(incoming(message))
            elif error.fatal():
                raise FatalKafkaError(str(call_error(error, f"read {self._tp.topic}")))
        return records

    def end_offset(self) -> Answered[int]:
        """Asked of the partition's leader, waiting at most END_TIMEOUT_S; a failure is in the answer."""
        what = f"find the end of {self._tp.topic}"
        if self._ends is None:
            # A new client after a failed question: one that reads nothing does not refresh its
            # view of the partition's leader by itself, and after a leader moved it kept
            # answering "Unknown partition" for the whole restore limit (60 s).
            self._ends = create_client(Consumer, self._ends_conf)
        try:
            with WATCHDOG.guard(what, END_TIMEOUT_S + WATCHDOG_GRACE_S):
                _, high = self._ends.get_watermark_offsets(self._tp, timeout=END_TIMEOUT_S, cached=False)
        except KafkaException as exc:
            self._close_ends()
            return Answered(error=call_error(exc, what))
        if high < 0:
            return Answered(
                error=KafkaCallError(f"the broker gave no end offset ({high})", "_NO_OFFSET", retriable=True)
            )
        return Answered(int(high))

    def position(self) -> int:
        try:
            return int(self._consumer.position([self._tp])[0].offset)
        except KafkaException as exc:
            raise call_error(exc, f"read the position in {self._tp.topic}") from exc

    def _close_ends(self) -> None:
        ends, self._ends = self._ends, None
        if ends is not None:
            with WATCHDOG.guard(f"close the end reader of {self._tp.topic}", UNTIMED_CALL_LIMIT_S):
                ends.close()

    def close(self) -> None:
        try:
            with WATCHDOG.guard(f"close the readers of {self._tp.topic}", UNTIMED_CALL_LIMIT_S):
                self._consumer.close()
                self._close_ends()
        except KafkaException as exc:
            raise call_error(exc, f"close the readers of {self._tp.topic}") from exc


def _reached(catch_up: CatchUp, deadline: float) -> bool:
    """Whether the view has read to the end; a failed question about the end is asked again until `deadline`."""
    try:
        return catch_up.reached()
    except KafkaCallError as exc:
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"{exc} (tried for {CATCH_UP_TIMEOUT_S:g}s)") from exc
        catch_up.ask_again()
        return False


def read_group_stats(settings: Settings) -> dict[TP, RunningAverage]:
    """Every input partition's committed state, read from the stats topic up to its end (the --stats view).

    Raises:
        BrokerUnavailableError: the broker is unreachable, or reading stopped moving
            on before the end for CATCH_UP_TIMEOUT_S (an end that could not be asked
            for, while leadership moves, say, is asked for again until then).
    """
    admin = connect_admin(settings)
    require_grants(admin, settings, "stats")  # first: a topic it may not read looks absent
    counts = partition_counts(admin)
    del admin  # start-up only: dropped before reading
    if settings.stats_topic not in counts:
        return {}
    tail = KafkaStatsTail(settings)
    try:
        view = StatsView(tail, settings.stats_topic, stats_keys(settings, counts))
        catch_up = view.catch_up()
        position, deadline = -1, time.monotonic() + CATCH_UP_TIMEOUT_S
        while not _reached(catch_up, deadline):
            view.poll(timeout_s=0.1)
            if view.position() > position:
                position, deadline = view.position(), time.monotonic() + CATCH_UP_TIMEOUT_S
            elif time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"reading {settings.stats_topic} stopped at offset {position} for {CATCH_UP_TIMEOUT_S:g}s "
                    "before its end; a consumer's transaction on it may still be open"
                )
    finally:
        tail.close()
    return dict(sorted(view.table.states.items()))
