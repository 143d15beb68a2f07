"""The fast path of the common record: whenever it answers, it answers what decoding and validating answer."""

from __future__ import annotations

import io
import random

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderpipe.core.intake import Intake, record_processing
from orderpipe.errors import DeserializationError, ValidationError
from orderpipe.model.generator import OrderFactory
from orderpipe.model.order import Order, ValidOrder, validate
from orderpipe.model.records import Incoming
from orderpipe.serde.codec import CONFLUENT_MAGIC, OrderDecoder
from orderpipe.serde.schemas import SINGLE_OBJECT_MAGIC, load_order_schema
from orderpipe.serde.wire import CONFLUENT, RAW

SCHEMA = load_order_schema()
V1 = load_order_schema(1)
MAX = 10_000_000
HEADER = SINGLE_OBJECT_MAGIC + SCHEMA.fingerprint
INTAKE = Intake(OrderDecoder(SCHEMA), MAX)


def general(value: bytes) -> ValidOrder | None:
    """fastavro's reading of a single-object version 2 value, then validation; None where either refuses."""
    if not value.startswith(HEADER):
        return None
    buffer = io.BytesIO(value[len(HEADER) :])
    try:
        record = fastavro.schemaless_reader(buffer, SCHEMA.parsed, SCHEMA.parsed)
    except Exception:
        return None
    if buffer.tell() != len(value) - len(HEADER) or not isinstance(record, dict):
        return None
    try:
        return validate(Order.from_record(record), MAX)
    except ValidationError:
        return None


def agrees(value: bytes) -> bool:
    """Whether Intake answers the general path's order or None; True when it answered."""
    fast = INTAKE(value)
    if fast is None:
        return False
    assert fast == general(value), value
    return True


def mutations(value: bytes, rng: random.Random, count: int) -> list[bytes]:
    found = []
    for _ in range(count):
        data = bytearray(value)
        where = rng.randrange(len(data) + 1)
        choice = rng.randrange(3)
        if choice == 0 and where < len(data):
            data[where] = rng.randrange(256)
        elif choice == 1:
            del data[where:]
        else:
            data[where:where] = rng.randbytes(rng.randrange(1, 4))
        found.append(bytes(data))
    return found


def test_valid_generated_orders_take_the_fast_path_and_every_mutation_agrees() -> None:
    rng = random.Random(5)
    factory = OrderFactory(rng, "FAST", invalid_rate=0.3, poison_rate=0.1, max_price_cents=MAX)
    values = [value for _, value in factory.fill(2000, SCHEMA.encode_single_object, HEADER).records if value]
    taken = sum(agrees(value) for value in values)
    assert taken == sum(general(value) is not None for value in values) > 1000  # every valid one is taken
    for value in values[:500]:
        for mutated in mutations(value, rng, 8):
            agrees(mutated)


orders = st.builds(
    Order,
    st.text(max_size=40),
    st.text(max_size=40),
    st.floats(width=32),
    st.integers(-100, 2000),
    st.one_of(st.none(), st.text(max_size=40)),
)


@given(orders, st.binary(max_size=2))
def test_any_order_with_or_without_a_tail_agrees(order: Order, tail: bytes) -> None:
    value = SCHEMA.encode_single_object(order)
    agrees(value)
    agrees(value + tail)
    agrees(value[:-1])


@given(st.binary(max_size=30))
def test_any_bytes_after_the_header_agree(body: bytes) -> None:
    agrees(HEADER + body)


def test_prices_at_the_limits_agree() -> None:
    for price in (0.001, 0.004, 0.005, 0.006, 0.01, 0.125, 99_999.99, 100_000.0, 100_000.01, 1e30, -1.0, 0.0):
        for customer in (None, "C-1", " ", "\u200b", "é" * 31):
            agrees(SCHEMA.encode_single_object(Order("O-1", "Keyboard", price, 1, customer)))


def test_fields_at_the_edges_of_the_lookup_tables_agree() -> None:
    for order_id in ("", "-", "---", "_a", "a b", "é", "O-1", "x" * 63, "x" * 64):
        for product in ("", " ", "\t", "Keyboard", "é" * 31):
            for quantity in (0, 1, 63, 64, 1000, 1001, -1):
                for customer in (None, "", " ", "C-1"):
                    agrees(SCHEMA.encode_single_object(Order(order_id, product, 12.5, quantity, customer)))


def test_other_framings_and_settings_take_the_general_path() -> None:
    order = Order("O-1", "Keyboard", 10.0, 1, None)
    assert INTAKE(SCHEMA.encode_single_object(order)) == validate(order, MAX)
    assert INTAKE(V1.encode_single_object(order)) is None  # version 1's layout
    assert INTAKE(CONFLUENT_MAGIC + b"\x00\x00\x00\x01" + SCHEMA.encode_body(order)) is None
    assert INTAKE(None) is None
    for wire_format in (CONFLUENT, RAW):
        decoder = OrderDecoder(SCHEMA, wire_format=wire_format, raw=lambda _: order)
        assert Intake(decoder, MAX)(SCHEMA.encode_single_object(order)) is None


def test_a_run_of_values_is_read_up_to_the_first_one_the_fast_path_does_not_take() -> None:
    valid = [SCHEMA.encode_single_object(Order(f"ORD-{i}", "Desk", 1.25 * i, 2, None)) for i in range(1, 5)]
    values: list[bytes | None] = [*valid[:2], b"not an order", *valid[2:], None]
    orders: list[ValidOrder] = []
    remaining = iter(values)
    assert INTAKE.read(remaining, orders) == (2, 125 + 250)
    assert orders == [INTAKE(value) for value in valid[:2]]
    # The value it did not take was taken from the iterator: the next read goes on after it.
    assert INTAKE.read(remaining) == (2, 375 + 500)  # counted, with no order made
    assert INTAKE.read(remaining) == (0, 0)
    assert next(remaining, "end") == "end"


def test_without_a_downstream_call_the_intake_is_the_fast_lane_and_the_processing_reads_in_full() -> None:
    factory = OrderFactory(random.Random(3), "P")
    value = SCHEMA.encode_single_object(factory.make(lambda order: b"").order)
    record = Incoming("orders", 0, 1, 0, None, value)
    process, fast = record_processing(OrderDecoder(SCHEMA), MAX)
    assert fast is not None
    assert process(record) == fast(value) == general(value)
    # What the intake refuses is read in full, and fails as the general path does.
    bad = Incoming("orders", 0, 2, 0, None, value[:-1])
    with pytest.raises(DeserializationError):
        process(bad)


def test_with_a_downstream_call_there_is_no_fast_lane_and_each_order_is_handed_on() -> None:
    factory = OrderFactory(random.Random(4), "P")
    value = SCHEMA.encode_single_object(factory.make(lambda order: b"").order)
    handed: list[ValidOrder] = []
    process, fast = record_processing(OrderDecoder(SCHEMA), MAX, handed.append)
    assert fast is None
    assert [process(Incoming("orders", 0, 1, 0, None, value))] == handed == [general(value)]
