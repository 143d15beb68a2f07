"""Property: any record at all (bytes, keys, headers, timestamps) ends processed, retried, dead-lettered or deferred.

Hypothesis writes the records a hostile client could; they go through the real
decoding, validation and routing (routing.plan_batch), as the consumer runs them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orderpipe.core.batch_plan import CLOCK_SKEW_MS, BatchPlan, plan_batch
from orderpipe.core.intake import Intake
from orderpipe.core.routing import DeadLetter, Processed, Retry, RetryPolicy
from orderpipe.errors import DeserializationError, NotReady
from orderpipe.model.order import Order, ValidOrder, validate
from orderpipe.model.records import PIPELINE_HEADERS, UNREADABLE_HEADERS, Incoming, record_bytes, runs_of
from orderpipe.serde.codec import CONFLUENT_MAGIC, OrderDecoder
from orderpipe.serde.schemas import SINGLE_OBJECT_MAGIC, load_order_schema

SCHEMA = load_order_schema()
V1 = load_order_schema(1)
POLICY = RetryPolicy(max_retries=3, backoff_ms=100, backoff_max_ms=400)
NOW = 1_700_000_000_000
LIMIT = 4_000


def lookup(schema_id: int) -> Any:
    """A registry stand-in: id 1 is the order schema, even ids are being looked up, odd ones unknown."""
    if schema_id == 1:
        return SCHEMA.parsed
    if schema_id % 2 == 0:
        raise NotReady(f"schema id {schema_id} is being looked up", 100)
    raise DeserializationError(f"schema id {schema_id} is unknown to the registry")


DECODER = OrderDecoder(SCHEMA, lookup)


def process(record: Incoming) -> ValidOrder:
    order = validate(DECODER.decode(record.value), 10_000_000)
    if record.offset % 5 == 0:
        raise TimeoutError("inventory service timed out")
    return order


orders = st.builds(
    Order,
    st.text(max_size=80),
    st.text(max_size=300),
    st.floats(width=32),
    st.integers(-(2**31), 2**31 - 1),
    st.one_of(st.none(), st.text(max_size=80)),
)
values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.binary(max_size=6000),
    orders.map(SCHEMA.encode_single_object),
    orders.map(V1.encode_single_object),
    orders.map(lambda o: CONFLUENT_MAGIC + (1).to_bytes(4, "big") + SCHEMA.encode_body(o)),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=50)).map(
        lambda t: CONFLUENT_MAGIC + t[0].to_bytes(4, "big") + t[1]
    ),
    st.binary(max_size=60).map(lambda b: SINGLE_OBJECT_MAGIC + SCHEMA.fingerprint + b),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.binary(max_size=12),
    st.just(b"9" * 5000),
)
header_names = st.one_of(st.sampled_from(sorted(PIPELINE_HEADERS)), st.text(max_size=20))
headers = st.lists(st.tuples(header_names, st.one_of(numbers, st.binary(max_size=3000))), max_size=6).map(tuple)
records = st.builds(
    Incoming,
    topic=st.sampled_from(["orders", "orders-retry"]),
    partition=st.integers(0, 2),
    offset=st.integers(0, 50),
    timestamp=st.integers(-1, 2**62),
    key=st.one_of(st.none(), st.binary(max_size=100), st.binary(min_size=3000, max_size=5000)),
    value=values,
    headers=headers,
    from_retry_topic=st.booleans(),
    unreadable=st.sampled_from(["", UNREADABLE_HEADERS]),
)


def in_order(batch: list[Incoming]) -> list[Incoming]:
    """The batch with offsets counting up per partition, as a consumer receives them."""
    next_offset: dict[tuple[str, int], int] = {}
    renumbered = []
    for record in batch:
        tp = (record.topic, record.partition)
        offset = next_offset.get(tp, record.offset)
        next_offset[tp] = offset + 1
        renumbered.append(record._replace(offset=offset))
    return renumbered


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=12).map(in_order))
def test_every_record_is_decided_or_deferred_and_nothing_raises(batch: list[Incoming]) -> None:
    plan = plan_batch(runs_of(batch), NOW, process, POLICY, LIMIT)
    # What it adds up while deciding (retries and dead letters, totals) is what its decisions add up to.
    assert plan == BatchPlan.of(plan.decisions, plan.commits, plan.deferred)
    decided = [(d.record.topic, d.record.partition, d.record.offset) for d in plan.decisions]
    stopped = {(d.topic, d.partition): d.offset for d in plan.deferred}
    for record in batch:
        tp = (record.topic, record.partition)
        before_the_stop = record.offset < stopped.get(tp, 2**63)
        assert decided.count((*tp, record.offset)) == (1 if before_the_stop else 0), "decided once, up to a stop"
    for deferred in plan.deferred:
        assert deferred.due_ms <= NOW + POLICY.backoff_max_ms + CLOCK_SKEW_MS
    for decision in plan.decisions:
        if isinstance(decision, DeadLetter):
            assert record_bytes(decision.key, decision.value, decision.headers) <= LIMIT
            assert decision.value in (decision.record.value, None)
        elif isinstance(decision, Retry):
            assert record_bytes(decision.record.key, decision.record.value, decision.headers) <= LIMIT
            assert 1 <= decision.attempt <= POLICY.max_retries
        else:
            assert isinstance(decision, Processed)
            assert not decision.record.unreadable


def read_only(record: Incoming) -> ValidOrder:
    return validate(DECODER.decode(record.value), 10_000_000)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=12).map(in_order))
def test_the_intakes_fast_lane_plans_a_batch_as_processing_each_record_does(batch: list[Incoming]) -> None:
    fast = plan_batch(runs_of(batch), NOW, read_only, POLICY, LIMIT, fast=Intake(DECODER, 10_000_000))
    general = plan_batch(runs_of(batch), NOW, read_only, POLICY, LIMIT)
    assert comparable(fast) == comparable(general)


def comparable(plan: BatchPlan) -> tuple[Any, ...]:
    """A plan with each exception as its class and message (two runs raise equal ones, not the same)."""

    def plain(decision: Any) -> Any:
        error = getattr(decision, "error", None)
        return decision if error is None else decision._replace(error=(type(error), str(error)))

    return (
        tuple(plain(d) for d in plan.decisions),
        plan.commits,
        plan.deferred,
        tuple(plain(d) for d in plan.routed),
        plan.totals,
    )


plain_records = records.map(lambda r: r._replace(topic="orders", from_retry_topic=False, unreadable=""))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_records, max_size=20).map(in_order), st.integers(0, 25))
def test_plain_runs_plan_as_whole_records_do_and_make_a_decision_only_when_read(
    batch: list[Incoming], head: int
) -> None:
    # Records of the orders topic, headers or none, make plain runs: the fast lane reads
    # their values alone, and steps aside for each record it does not take (a schema
    # being looked up among them stops the partition there).
    fast = plan_batch(runs_of(batch), NOW, read_only, POLICY, LIMIT, fast=Intake(DECODER, 10_000_000))
    general = plan_batch(runs_of(batch), NOW, read_only, POLICY, LIMIT)
    assert comparable(fast) == comparable(general)
    assert len(fast.decisions) == len(tuple(fast.decisions))
    assert fast.decisions[:head] == tuple(fast.decisions)[:head]
    if fast.decisions:
        assert fast.decisions[-1] == tuple(fast.decisions)[-1]
