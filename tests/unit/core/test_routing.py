"""Routing: one test per row of the routing table, the headers and the backoff."""

import gc
from collections.abc import Iterable

import pytest

from orderpipe.core.batch_plan import CLOCK_SKEW_MS, Deferred, plan_batch
from orderpipe.core.routing import DeadLetter, Processed, Retry, RetryPolicy, backoff_ms, decide
from orderpipe.errors import DeserializationError, NotReady, ValidationError
from orderpipe.model.order import ValidOrder
from orderpipe.model.records import UNREADABLE_HEADERS, Incoming, Run, record_bytes, runs_of

NOW = 1_700_000_000_000
POLICY = RetryPolicy(max_retries=3, backoff_ms=1000, backoff_max_ms=30000)
ORDER = ValidOrder("O-1", "Keyboard", 4550)


def fresh(offset: int = 17, headers: tuple[tuple[str, bytes], ...] = (("trace-id", b"abc"),)) -> Incoming:
    return Incoming("orders", 2, offset, NOW - 5000, b"O-1", b"\xc3\x01value", headers)


def as_retry(record: Incoming, decision: Retry, offset: int = 3) -> Incoming:
    """The record as the consumer reads it back from the retry topic."""
    return Incoming("orders-retry", 2, offset, NOW, record.key, record.value, decision.headers, from_retry_topic=True)


def after_three_retries(record: Incoming) -> Incoming:
    """The record as read back for its third and last retry."""
    for _ in range(3):
        decision = decide(record, RuntimeError("boom"), NOW, POLICY)
        assert isinstance(decision, Retry)
        record = as_retry(record, decision)
    return record


def hdrs(decision: Retry | DeadLetter) -> dict[str, str]:
    return {k: v.decode() for k, v in decision.headers}


def test_processed_orders_are_counted_and_produce_nothing() -> None:
    assert decide(fresh(), ORDER, NOW, POLICY) == Processed(fresh(), ORDER)


def test_deserialization_errors_go_to_the_dlq_without_retry() -> None:
    decision = decide(fresh(), DeserializationError("bad magic"), NOW, POLICY)
    assert isinstance(decision, DeadLetter)
    assert decision.reason == "deserialization"
    assert hdrs(decision)["retry.attempt"] == "0"


def test_invalid_orders_go_to_the_dlq_without_retry() -> None:
    decision = decide(fresh(), ValidationError("price must be > 0"), NOW, POLICY)
    assert isinstance(decision, DeadLetter)
    assert hdrs(decision) == {
        "trace-id": "abc",
        "retry.attempt": "0",
        "dlq.reason": "validation",
        "error.class": "ValidationError",
        "error.message": "price must be > 0",
        "original.topic": "orders",
        "original.partition": "2",
        "original.offset": "17",
        "original.timestamp": str(NOW - 5000),
        "dlq.failed-at": str(NOW),
    }


def test_transient_failures_are_retried_with_attempt_and_due_time() -> None:
    decision = decide(fresh(), TimeoutError("inventory service timed out"), NOW, POLICY)
    assert isinstance(decision, Retry)
    assert (decision.attempt, decision.not_before) == (1, NOW + 1000)
    assert hdrs(decision) == {
        "trace-id": "abc",
        "retry.attempt": "1",
        "retry.not-before": str(NOW + 1000),
        "error.class": "TimeoutError",
        "error.message": "inventory service timed out",
        "original.topic": "orders",
        "original.partition": "2",
        "original.offset": "17",
        "original.timestamp": str(NOW - 5000),
    }


def test_retries_keep_the_origin_and_replace_pipeline_headers() -> None:
    record = fresh()
    attempts = []
    for _ in range(3):
        decision = decide(record, RuntimeError("boom"), NOW, POLICY)
        assert isinstance(decision, Retry)
        attempts.append(decision.attempt)
        record = as_retry(record, decision, offset=decision.attempt)
        assert len(record.headers) == 1 + 8  # producer header + the pipeline's own, never appended
        assert hdrs(decision)["original.offset"] == "17"
    assert attempts == [1, 2, 3]


def test_a_failure_on_the_last_retry_goes_to_the_dlq_as_retries_exhausted() -> None:
    final = decide(after_three_retries(fresh()), KeyError("sku"), NOW, POLICY)
    assert isinstance(final, DeadLetter)
    h = hdrs(final)
    assert (final.reason, h["dlq.reason"], h["retry.attempt"]) == ("retries-exhausted", "retries-exhausted", "3")
    assert (h["error.class"], h["original.topic"], h["original.offset"]) == ("KeyError", "orders", "17")
    assert "retry.not-before" not in h


def test_a_retry_that_succeeds_is_processed() -> None:
    decision = decide(fresh(), RuntimeError("boom"), NOW, POLICY)
    assert isinstance(decision, Retry)
    assert isinstance(decide(as_retry(fresh(), decision), ORDER, NOW, POLICY), Processed)


def test_zero_max_retries_dead_letters_the_first_transient_failure() -> None:
    decision = decide(fresh(), RuntimeError("boom"), NOW, RetryPolicy(max_retries=0))
    assert isinstance(decision, DeadLetter)
    assert decision.reason == "retries-exhausted"


def test_error_messages_are_cut_to_1_kib_on_a_character_boundary() -> None:
    decision = decide(fresh(), RuntimeError("é" * 2000), NOW, POLICY)
    message = dict(decision.headers)["error.message"]  # type: ignore[union-attr]
    assert len(message) <= 1024
    assert message.decode("utf-8") == "é" * 512


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 16000), (6, 30000), (10, 30000)],
)
def test_backoff_doubles_per_attempt_up_to_the_cap(attempt: int, expected: int) -> None:
    assert backoff_ms(attempt, POLICY) == expected


def _retry_record(partition: int, offset: int, due: int) -> Incoming:
    headers = (("retry.attempt", b"1"), ("retry.not-before", str(due).encode()))
    return Incoming("orders-retry", partition, offset, NOW, b"k", b"v", headers, from_retry_topic=True)


def test_plan_batch_defers_a_retry_partition_at_its_first_record_not_yet_due() -> None:
    records = [
        _retry_record(0, 10, NOW - 1),  # due: processed
        _retry_record(0, 11, NOW + 500),  # not due: pause partition 0 here
        fresh(offset=40),  # orders keep flowing
        _retry_record(0, 12, NOW - 1),  # behind the deferred one: read again later
        _retry_record(1, 5, NOW),  # due exactly now
    ]
    seen: list[tuple[str, int, int]] = []

    def process(record: Incoming) -> ValidOrder:
        seen.append((record.topic, record.partition, record.offset))
        return ORDER

    plan = plan_batch(runs_of(records), NOW, process, POLICY)
    assert seen == [("orders-retry", 0, 10), ("orders", 2, 40), ("orders-retry", 1, 5)]
    assert plan.deferred == (Deferred("orders-retry", 0, 11, NOW + 500),)
    assert plan.commits == {("orders-retry", 0): 11, ("orders", 2): 41, ("orders-retry", 1): 6}


def test_plan_batch_routes_every_exception_the_processing_raises() -> None:
    def process(record: Incoming) -> ValidOrder:
        raise {0: DeserializationError("x"), 1: ValidationError("y"), 2: ZeroDivisionError("z")}[record.offset]

    plan = plan_batch(runs_of([fresh(offset=i) for i in range(3)]), NOW, process, POLICY)
    kinds = [(type(d).__name__, getattr(d, "reason", None)) for d in plan.decisions]
    assert kinds == [("DeadLetter", "deserialization"), ("DeadLetter", "validation"), ("Retry", None)]
    assert plan.commits == {("orders", 2): 3}


def test_headers_that_are_not_utf8_or_numbers_count_as_missing() -> None:
    record = Incoming("orders", 0, 1, NOW, None, b"", (("retry.attempt", b"\xff"), ("original.offset", b"x")))
    assert record.attempt == 0
    assert record.origin.offset == 1
    assert record.label == "(no key)"


def test_a_dlq_record_replayed_onto_orders_starts_afresh() -> None:
    record = after_three_retries(fresh())
    dead = decide(record, RuntimeError("boom"), NOW, POLICY)
    assert isinstance(dead, DeadLetter)  # carries retry.attempt=3 and the old origin
    replayed = Incoming("orders", 0, 99, NOW + 1, record.key, record.value, dead.headers)
    assert (replayed.attempt, replayed.not_before) == (0, None)
    decision = decide(replayed, RuntimeError("boom"), NOW + 1, POLICY)
    assert isinstance(decision, Retry)
    assert decision.attempt == 1
    assert hdrs(decision)["original.offset"] == "99"
    assert "dlq.reason" not in hdrs(decision)


def test_a_due_time_no_retry_of_ours_can_have_counts_as_due_now() -> None:
    """Due at most the record's own timestamp plus the longest backoff (plus clock skew)."""
    latest = NOW + POLICY.backoff_max_ms + CLOCK_SKEW_MS
    on_time = _retry_record(0, 1, latest)  # written NOW, due as late as a retry can be
    forged = _retry_record(1, 1, latest + 1)
    far = _retry_record(2, 1, 10**18)
    seen: list[int] = []

    def process(record: Incoming) -> ValidOrder:
        seen.append(record.partition)
        return ORDER

    plan = plan_batch(runs_of([on_time, forged, far]), NOW + 1, process, POLICY)
    assert plan.deferred == (Deferred("orders-retry", 0, 1, latest),)
    assert seen == [1, 2]


def test_a_retry_record_timestamped_in_the_future_is_bounded_by_now() -> None:
    future = _retry_record(0, 1, NOW + 10**9)._replace(timestamp=NOW + 10**9 - 1)
    plan = plan_batch(runs_of([future]), NOW, lambda r: ORDER, POLICY)
    assert plan.deferred == ()
    assert len(plan.decisions) == 1


def test_absurd_pipeline_headers_never_stall_or_crash() -> None:
    cases = [
        (("retry.attempt", b"-5"), ("retry.not-before", b"-1")),
        (("retry.attempt", b"9" * 5000), ("retry.not-before", b"9" * 5000)),
        (("retry.attempt", b"\xff"), ("retry.not-before", b"soon")),
        (("original.partition", b"1e9"), ("original.offset", b"-")),
        (),
    ]
    records = [
        Incoming("orders-retry", p, 1, NOW, b"k", b"v", headers, from_retry_topic=True)
        for p, headers in enumerate(cases)
    ]
    plan = plan_batch(runs_of(records), NOW, lambda r: ORDER, POLICY)
    assert [type(d).__name__ for d in plan.decisions] == ["Processed"] * len(cases)
    assert plan.deferred == ()


def test_a_record_not_ready_defers_its_partition_only() -> None:
    def process(record: Incoming) -> ValidOrder:
        if record.partition == 0:
            raise NotReady("schema id 7 is being looked up", 50)
        return ORDER

    records = [fresh(offset=1)._replace(partition=0), fresh(offset=2)._replace(partition=0), fresh(offset=5)]
    plan = plan_batch(runs_of(records), NOW, process, POLICY)
    assert plan.deferred == (Deferred("orders", 0, 1, NOW + 50),)
    assert plan.commits == {("orders", 0): 1, ("orders", 2): 6}
    assert [d.record.offset for d in plan.decisions] == [5]


def test_a_record_with_unreadable_headers_is_dead_lettered_without_them() -> None:
    record = fresh()._replace(headers=(), unreadable=UNREADABLE_HEADERS)
    plan = plan_batch(runs_of([record]), NOW, lambda r: ORDER, POLICY)
    (dead,) = plan.decisions
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "deserialization"
    assert hdrs(dead)["dlq.truncated"] == "headers (unreadable)"
    assert (dead.key, dead.value) == (record.key, record.value)


def test_a_dlq_copy_too_large_leaves_out_what_does_not_fit() -> None:
    limit = 20_000
    error = DeserializationError("bad")
    big_value = fresh()._replace(value=b"v" * limit)
    dead = decide(big_value, error, NOW, POLICY, limit)
    assert isinstance(dead, DeadLetter)
    assert (dead.key, dead.value) == (b"O-1", None)
    assert hdrs(dead)["dlq.truncated"] == f"value ({limit} bytes)"
    assert hdrs(dead)["trace-id"] == "abc"
    assert hdrs(dead)["original.offset"] == "17"
    assert record_bytes(dead.key, dead.value, dead.headers) <= limit

    everything = fresh(headers=(("h", b"x" * limit),))._replace(key=b"k" * limit, value=b"v" * limit)
    dead = decide(everything, error, NOW, POLICY, limit)
    assert isinstance(dead, DeadLetter)
    assert (dead.key, dead.value) == (None, None)
    assert hdrs(dead)["dlq.truncated"] == f"value ({limit} bytes), headers (1), key ({limit} bytes)"

    big_headers = fresh(headers=(("h", b"x" * limit),))
    dead = decide(big_headers, error, NOW, POLICY, limit)
    assert isinstance(dead, DeadLetter)
    assert (dead.key, dead.value) == (big_headers.key, big_headers.value)
    assert hdrs(dead)["dlq.truncated"] == "headers (1)"
    assert record_bytes(dead.key, dead.value, dead.headers) <= limit

    small = decide(fresh(), error, NOW, POLICY, limit)
    assert isinstance(small, DeadLetter)
    assert small.value == fresh().value
    assert "dlq.truncated" not in hdrs(small)


def test_a_retry_copy_too_large_is_dead_lettered_instead() -> None:
    limit = 20_000
    record = fresh(headers=(("h", b"x" * limit),))
    decision = decide(record, TimeoutError("slow"), NOW, POLICY, limit)
    assert isinstance(decision, DeadLetter)
    assert decision.reason == "retries-exhausted"
    assert hdrs(decision)["dlq.truncated"] == "headers (1)"
    assert isinstance(decide(fresh(), TimeoutError("slow"), NOW, POLICY, limit), Retry)


class EveryValueAnOrder:
    """A fast lane that reads every value as ORDER and notes which it was offered."""

    def __init__(self) -> None:
        self.offered: list[bytes | None] = []

    def __call__(self, value: bytes | None) -> ValidOrder | None:
        self.offered.append(value)
        return ORDER

    def read(self, values: Iterable[bytes | None], orders: list[ValidOrder] | None = None) -> tuple[int, int]:
        taken = list(values)
        self.offered += taken
        if orders is not None:
            orders += [ORDER] * len(taken)
        return len(taken), len(taken) * ORDER.price_cents


def test_the_fast_lane_reads_retries_that_are_due_and_never_one_that_is_not() -> None:
    due, waiting = _retry_record(0, 10, NOW - 1), _retry_record(0, 11, NOW + 500)
    due, waiting = due._replace(value=b"due"), waiting._replace(value=b"waiting")

    def process(record: Incoming) -> ValidOrder:
        raise AssertionError(f"the fast lane took {record}")

    fast = EveryValueAnOrder()
    plan = plan_batch(runs_of([due, waiting]), NOW, process, POLICY, fast=fast)
    assert fast.offered == [b"due"]
    assert list(plan.decisions) == [Processed(due, ORDER)]
    assert plan.deferred == (Deferred("orders-retry", 0, 11, NOW + 500),)


def test_a_failure_keeps_no_traceback_so_failed_records_leave_no_cycles_to_the_collector() -> None:
    def process(record: Incoming) -> ValidOrder:
        try:
            int(record.value or b"")
        except ValueError as exc:
            raise DeserializationError("not an order") from exc
        raise AssertionError("a poison value was read")

    collecting = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        plan = plan_batch(runs_of([fresh(offset=i) for i in range(50)]), NOW, process, POLICY)
        assert [d.reason for d in plan.routed if isinstance(d, DeadLetter)] == ["deserialization"] * 50
        error = plan.routed[0].error
        assert error.__traceback__ is None
        assert error.__cause__ is not None
        assert error.__cause__.__traceback__ is None
        del plan, error
        assert gc.collect() == 0  # all freed as soon as the plan was: no cycles
    finally:
        if collecting:
            gc.enable()


def test_decisions_the_fast_lane_read_are_made_when_read_and_only_once() -> None:
    whole = [fresh(offset=i, headers=()) for i in range(3)]
    made: list[int] = []

    def record(index: int) -> Incoming:
        made.append(index)
        return whole[index]

    run = Run(
        "orders",
        2,
        from_retry_topic=False,
        plain=True,
        values=[r.value for r in whole],
        first_offset=0,
        last_offset=2,
        record=record,
    )
    plan = plan_batch([run], NOW, lambda r: ORDER, POLICY, fast=EveryValueAnOrder())
    assert made == []
    assert plan.totals == {("orders", 2): [3, 3 * ORDER.price_cents]}
    assert list(plan.decisions) == list(plan.decisions) == [Processed(r, ORDER) for r in whole]
    assert made == [0, 1, 2]
