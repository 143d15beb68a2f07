"""Routing on the real broker: DLQ headers, poison bytes, retries, non-blocking."""

import time
from collections import defaultdict

from confluent_kafka.admin import AdminClient

from orderpipe.core.routing import Decision, Processed, Retry
from orderpipe.model.order import Order, ValidOrder
from orderpipe.serde.schemas import load_order_schema
from tests.clients import client_config
from tests.integration.helpers import Pipeline, running_consumer, wait_for

SCHEMA = load_order_schema()


def test_an_invalid_order_reaches_the_dlq_with_every_header(pipeline: Pipeline) -> None:
    value = SCHEMA.encode_single_object(Order("O-INVALID-1", "Keyboard", -5.0))
    started_ms = int(time.time() * 1000)
    with running_consumer(pipeline.settings):
        [sent] = pipeline.produce([(b"O-INVALID-1", value, [("trace-id", b"t-42")])])
        [dead] = pipeline.read(pipeline.settings.dlq_topic, at_least=1)
    assert (dead.key, dead.value) == (b"O-INVALID-1", value)
    failed_at = int(dead.headers.pop("dlq.failed-at"))
    assert started_ms <= failed_at <= int(time.time() * 1000)
    assert dead.headers == {
        "trace-id": "t-42",
        "retry.attempt": "0",
        "dlq.reason": "validation",
        "error.class": "ValidationError",
        "error.message": "price must be > 0",
        "original.topic": pipeline.settings.orders_topic,
        "original.partition": str(sent.partition()),
        "original.offset": str(sent.offset()),
        "original.timestamp": str(sent.timestamp()[1]),
    }
    assert dead.partition == sent.partition()  # same key, same partition number


def test_a_poison_record_reaches_the_dlq_byte_for_byte(pipeline: Pipeline) -> None:
    poison = b"\xc3\x01" + bytes(range(256)) * 2
    with running_consumer(pipeline.settings):
        pipeline.produce([(b"O-POISON-1", poison, [])])
        [dead] = pipeline.read(pipeline.settings.dlq_topic, at_least=1)
    assert dead.value == poison
    assert dead.key == b"O-POISON-1"
    assert (dead.headers["dlq.reason"], dead.headers["error.class"]) == ("deserialization", "DeserializationError")
    assert dead.headers["retry.attempt"] == "0"


def test_transient_failures_retry_three_times_then_dead_letter(pipeline: Pipeline) -> None:
    def always_down(_order: ValidOrder) -> None:
        raise TimeoutError("inventory service timed out")

    value = SCHEMA.encode_single_object(Order("O-DOWN-1", "Mouse", 19.99))
    with running_consumer(pipeline.settings, always_down):
        [sent] = pipeline.produce([(b"O-DOWN-1", value, [("trace-id", b"t-7")])])
        [dead] = pipeline.read(pipeline.settings.dlq_topic, at_least=1)
    retries = sorted(pipeline.read(pipeline.settings.retry_topic), key=lambda r: r.offset)

    assert [r.headers["retry.attempt"] for r in retries] == ["1", "2", "3"]
    due = [int(r.headers["retry.not-before"]) for r in retries]
    # Backoff 100 ms doubling (RETRY_BACKOFF_MS=100). Retry n+1 was decided no earlier
    # than retry n was due, and is due its own backoff after that decision.
    for record, backoff in zip(retries, (100, 200, 400), strict=True):
        assert int(record.headers["retry.not-before"]) <= record.timestamp + backoff
    assert due[1] - due[0] >= 200
    assert due[2] - due[1] >= 400
    assert int(dead.headers["dlq.failed-at"]) >= due[2], "the last retry ran before it was due"
    for record in [*retries, dead]:
        assert len(record.header_names) == len(set(record.header_names)), "headers were appended, not replaced"
        assert record.value == value
        assert record.headers["trace-id"] == "t-7"
        assert record.headers["original.offset"] == str(sent.offset())
        assert record.headers["original.partition"] == str(sent.partition())
        assert record.headers["error.class"] == "TimeoutError"
    assert (dead.headers["dlq.reason"], dead.headers["retry.attempt"]) == ("retries-exhausted", "3")
    assert "retry.not-before" not in dead.headers


def test_a_retried_order_is_processed_once_the_failure_clears(pipeline: Pipeline) -> None:
    calls: dict[str, int] = defaultdict(int)

    def flaky(order: ValidOrder) -> None:
        calls[order.order_id] += 1
        if calls[order.order_id] <= 2:
            raise ConnectionError("payment service unavailable")

    value = SCHEMA.encode_single_object(Order("O-FLAKY-1", "Webcam", 45.5))
    with running_consumer(pipeline.settings, flaky) as running:
        pipeline.produce([(b"O-FLAKY-1", value, [])])
        wait_for(lambda: any(isinstance(d, Processed) for _, d in running.decisions), what="the order processed")
    kinds = [(type(d).__name__, d.record.attempt) for _, d in running.decisions]
    assert kinds == [("Retry", 0), ("Retry", 1), ("Processed", 2)]
    assert running.consumer.summary.average.sum_cents == 4550
    assert pipeline.read(pipeline.settings.dlq_topic) == []


def test_a_retry_not_yet_due_does_not_hold_up_fresh_orders(pipeline: Pipeline) -> None:
    settings = pipeline.with_env(RETRY_BACKOFF_MS="4000", RETRY_BACKOFF_MAX_MS="4000").settings
    failed_once: set[str] = set()

    def fails_first_try_of_a(order: ValidOrder) -> None:
        if order.order_id == "O-A" and order.order_id not in failed_once:
            failed_once.add(order.order_id)
            raise TimeoutError("inventory service timed out")

    def processed(order_id: str) -> tuple[float, Processed] | None:
        return next(
            ((t, d) for t, d in running.decisions if isinstance(d, Processed) and d.order.order_id == order_id), None
        )

    with running_consumer(settings, fails_first_try_of_a) as running:
        Pipeline(pipeline.env).produce([(b"O-A", SCHEMA.encode_single_object(Order("O-A", "Monitor", 120.0)), [])])
        _, retry = wait_for(lambda: next(((t, d) for t, d in running.decisions if isinstance(d, Retry)), None))
        assert isinstance(retry, Retry)
        # A fresh order, produced after A failed and while A's retry waits for its due time.
        pipeline.produce([(b"O-B", SCHEMA.encode_single_object(Order("O-B", "Mouse", 20.0)), [])])
        b_done, _ = wait_for(lambda: processed("O-B"), what="O-B processed")
        a_done, _ = wait_for(lambda: processed("O-A"), timeout=15, what="O-A processed after its backoff")

    assert b_done * 1000 < retry.not_before, "the fresh order waited for the retry"
    assert a_done * 1000 >= retry.not_before, "the retry ran before it was due"
    assert running.consumer.summary.processed == 2


def test_a_paused_retry_partition_is_resumed_after_a_rebalance(pipeline: Pipeline) -> None:
    """A second consumer joins and leaves while a retry waits: both rebalances take the
    paused partition away from the first consumer and give it back, and the retry must
    still run when due (librdkafka keeps an application's pause across reassignment)."""
    settings = pipeline.with_env(ORDERS_PARTITIONS="1", RETRY_BACKOFF_MS="8000", RETRY_BACKOFF_MAX_MS="8000").settings
    failed_once: set[str] = set()

    def fails_first_try(order: ValidOrder) -> None:
        if order.order_id not in failed_once:
            failed_once.add(order.order_id)
            raise TimeoutError("inventory service timed out")

    admin = AdminClient(client_config(settings.bootstrap_servers))

    def members() -> int:
        groups = admin.describe_consumer_groups([settings.consumer_group], request_timeout=10)
        return len(groups[settings.consumer_group].result(timeout=15).members)

    decisions: list[tuple[float, Decision]] = []
    with running_consumer(settings, fails_first_try, decisions):
        pipeline.produce([(b"O-A", SCHEMA.encode_single_object(Order("O-A", "Monitor", 120.0)), [])])
        _, retry = wait_for(lambda: next(((t, d) for t, d in decisions if isinstance(d, Retry)), None))
        assert isinstance(retry, Retry)
        with running_consumer(settings, fails_first_try, decisions):
            wait_for(lambda: members() == 2, what="the second consumer in the group")
        wait_for(lambda: members() == 1, what="the second consumer gone")
        assert time.time() * 1000 < retry.not_before, "both rebalances happened while the retry was paused"
        wait_for(lambda: any(isinstance(d, Processed) for _, d in decisions), timeout=20, what="the retry processed")
    assert [type(d).__name__ for _, d in decisions] == ["Retry", "Processed"]
