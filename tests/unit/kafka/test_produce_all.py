"""clients.produce_all, the producer program's hot loop: plain calls, and `produce` for a record not taken at once."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from orderpipe.errors import DeliveryError
from orderpipe.kafka.clients import poll_for, produce_all


class QueueProducer:
    """Takes records, refusing each call listed in `refusals` (by its index among all calls) with that error."""

    def __init__(self, refusals: dict[int, Exception]) -> None:
        self.refusals, self.calls, self.polled = refusals, 0, 0.0
        self.taken: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **_: Any) -> None:
        self.calls += 1
        if (refusal := self.refusals.get(self.calls)) is not None:
            raise refusal
        self.taken.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        self.polled += timeout
        return 0


def test_every_record_goes_out_in_order_and_a_full_queue_is_waited_out() -> None:
    producer = QueueProducer({2: BufferError(), 3: BufferError()})
    records: list[tuple[bytes, bytes | None]] = [(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", None)]
    produce_all(producer, "orders", records)  # type: ignore[arg-type]
    assert producer.taken == [("orders", b"k1", b"v1"), ("orders", b"k2", b"v2"), ("orders", b"k3", None)]
    assert producer.polled == pytest.approx(0.1), "the second refusal is served by produce's wait"


def test_a_record_librdkafka_refuses_is_named() -> None:
    refused = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    producer = QueueProducer({1: refused, 2: refused})
    with pytest.raises(DeliveryError, match="could not produce to orders"):
        produce_all(producer, "orders", [(b"k1", b"v" * 10)])  # type: ignore[arg-type]


class Chatty:
    """A client whose poll serves a callback at once the first `early` times (as librdkafka's returns early)."""

    def __init__(self, early: int) -> None:
        self.early = early
        self.asked: list[float] = []

    def poll(self, timeout: float) -> int:
        self.asked.append(timeout)
        if self.early:
            self.early -= 1
            return 1
        return 0


def test_a_backoff_polls_again_with_what_is_left_when_a_callback_cut_it_short() -> None:
    client = Chatty(early=2)
    poll_for(client, 5.0)  # type: ignore[arg-type]
    assert len(client.asked) == 3, "after two early returns the third poll waits out the rest"
    assert client.asked[0] == 5.0
    assert 0 < client.asked[2] <= client.asked[1] <= 5.0
    quiet = Chatty(early=0)
    poll_for(quiet, 0.1)  # type: ignore[arg-type]
    assert quiet.asked == [0.1], "a poll that waited the time out is not repeated"
