"""Reading `orders-stats` at the edge: the latest committed state of every input partition.

The reader is a plain consumer assigned to the stats topic's one partition, outside
any group, reading with read_committed from the beginning. The consumer uses it in
two ways: it tails the topic between batches (the other consumers' partitions for
the group-wide average), and it catches up to the end before it takes over
partitions (their last committed state). The stats view uses it once and exits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from config import Settings
from orderpipe.console import Console
from orderpipe.errors import BrokerUnavailableError, DeserializationError
from orderpipe.kafka_clients import CONNECT_TIMEOUT_S, connect_admin, create_client
from orderpipe.money import RunningAverage
from orderpipe.stats import decode_stats, topic_of_key

__all__ = ["StatsReader", "read_group_stats"]

CATCH_UP_TIMEOUT_S = 60.0


class StatsReader:
    """Keeps `latest`, each stats key's latest committed value.

    Args:
        admin: kept to ask for the topic's high watermark (the end including open
            transactions, which a read_committed consumer cannot report).
    """

    def __init__(
        self,
        settings: Settings,
        admin: AdminClient,
        console: Console,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admin = admin
        self._console = console
        self._clock = clock
        self._topic = settings.stats_topic
        self._tp = TopicPartition(self._topic, 0)
        self._consumer = create_client(
            Consumer,
            {
                **settings.kafka_client_config(),
                # Required by the client, never joined: the reader is assigned, not subscribed.
                "group.id": f"{settings.consumer_group}.stats-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
        self._consumer.assign([TopicPartition(self._topic, 0, OFFSET_BEGINNING)])
        self.latest: dict[str, RunningAverage] = {}
        self.next_offsets: dict[str, int] = {}

    def poll(self, timeout_s: float = 0.0) -> None:
        """Takes in whatever committed updates have arrived, waiting at most `timeout_s`."""
        for message in self._consumer.consume(1000, timeout_s):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise BrokerUnavailableError(f"reading {self._topic} failed: {error.str()}")
                continue
            raw_key, value = message.key(), message.value()
            key = raw_key.decode("utf-8", errors="replace") if raw_key else ""
            if value is None:
                self.latest.pop(key, None)  # a tombstone: the key was deleted on purpose
                self.next_offsets.pop(key, None)
                continue
            try:
                self.latest[key], next_offset = decode_stats(value)
            except DeserializationError as exc:
                self._console.error(f"⚠ Ignoring {self._topic} record {key!r} at offset {message.offset()}: {exc}")
                continue
            if next_offset is None:
                self.next_offsets.pop(key, None)
            else:
                self.next_offsets[key] = next_offset

    def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Reads everything written to the topic before this call, once its transactions have ended.

        Raises:
            BrokerUnavailableError: the end was not reached within `timeout_s`, which
                means a transaction on the topic stayed open (or the broker is gone).
        """
        deadline = self._clock() + timeout_s
        end = self._high_watermark(timeout_s)
        while self._position() < end:
            if self._clock() > deadline:
                raise BrokerUnavailableError(
                    f"could not read {self._topic} up to offset {end} within {timeout_s:g}s; a consumer's "
                    "transaction on it may still be open (it ends when that consumer restarts or its "
                    "transaction.timeout.ms runs out)"
                )
            self.poll(0.1)

    def _high_watermark(self, timeout_s: float) -> int:
        try:
            futures = self._admin.list_offsets(
                {self._tp: OffsetSpec.latest()},  # type: ignore[no-untyped-call]
                isolation_level=IsolationLevel.READ_UNCOMMITTED,
                request_timeout=timeout_s,
            )
            return int(futures[self._tp].result(timeout=timeout_s).offset)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"could not find the end of {self._topic}: {exc}") from exc

    def _position(self) -> int:
        position = self._consumer.position([self._tp])[0].offset
        return position if position >= 0 else 0

    def close(self) -> None:
        self._consumer.close()


def read_group_stats(settings: Settings, console: Console) -> dict[str, RunningAverage]:
    """Every input partition's committed state, read from `orders-stats` up to its end.

    Raises:
        BrokerUnavailableError: the broker is unreachable or the end was not reached.
    """
    admin = connect_admin(settings)
    if settings.stats_topic not in admin.list_topics(timeout=CONNECT_TIMEOUT_S).topics:
        return {}
    reader = StatsReader(settings, admin, console)
    try:
        reader.catch_up()
    finally:
        reader.close()
    wanted = (settings.orders_topic, settings.retry_topic)
    return {key: state for key, state in sorted(reader.latest.items()) if topic_of_key(key) in wanted}
