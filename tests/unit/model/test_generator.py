"""The order factory: reproducible by seed, and its bad records really are bad."""

import random

import pytest

from orderpipe.errors import DeserializationError, ValidationError
from orderpipe.model.generator import PRODUCTS, Filled, Generated, Kind, OrderFactory, _customer_number, base36
from orderpipe.model.order import validate
from orderpipe.serde.codec import OrderDecoder
from orderpipe.serde.schemas import SINGLE_OBJECT_MAGIC, OrderSchema, load_order_schema

SCHEMA = load_order_schema()
MAX = 10_000_000


def make(seed: int, n: int, run_id: str = "RUN") -> list[Generated]:
    factory = OrderFactory(random.Random(seed), run_id, invalid_rate=0.2, poison_rate=0.1, max_price_cents=MAX)
    return [factory.make(SCHEMA.encode_single_object) for _ in range(n)]


def test_a_seed_reproduces_the_orders_but_not_the_run_prefix() -> None:
    first, second = make(5, 50, "AAA"), make(5, 50, "BBB")
    assert [(g.kind, g.order.product, repr(g.order.price)) for g in first] == [
        (g.kind, g.order.product, repr(g.order.price)) for g in second
    ]
    assert {g.key for g in first}.isdisjoint(g.key for g in second)


def test_every_kind_behaves_as_labelled() -> None:
    decoder = OrderDecoder(SCHEMA)
    generated = make(11, 2000)
    counts = {kind: sum(g.kind == kind for g in generated) for kind in (Kind.VALID, Kind.INVALID, Kind.POISON)}
    assert counts[Kind.POISON] > 100
    assert counts[Kind.INVALID] > 300
    for g in generated:
        if g.kind == Kind.POISON:
            try:
                decoder.decode(g.value)
            except DeserializationError:
                continue
            raise AssertionError(f"poison record {g.key} decoded")
        order = decoder.decode(g.value)
        if g.kind == Kind.INVALID:
            try:
                validate(order, MAX)
            except ValidationError:
                continue
            raise AssertionError(f"invalid order {order} passed validation")
        assert validate(order, MAX).price_cents == g.price_cents
        assert g.key == order.order_id


def test_orders_carry_quantities_and_sometimes_a_customer_and_some_break_the_quantity_rule() -> None:
    generated = make(13, 2000)
    valid = [g.order for g in generated if g.kind == Kind.VALID]
    assert {o.quantity for o in valid} == {1, 2, 3, 4, 5}
    assert 0.3 < sum(o.customer_id is not None for o in valid) / len(valid) < 0.7
    assert all(validate(o, MAX).customer_id == o.customer_id for o in valid)
    broken = {g.order.quantity for g in generated if g.kind == Kind.INVALID}
    assert {0, 1001} <= broken


def test_orders_for_schema_version_1_have_the_defaults_and_read_back_as_generated() -> None:
    v1 = load_order_schema(1)
    factory = OrderFactory(random.Random(2), "V1", invalid_rate=0.3, max_price_cents=MAX, version_2_fields=False)
    decoder = OrderDecoder(SCHEMA)
    for g in (factory.make(v1.encode_single_object) for _ in range(500)):
        assert (g.order.quantity, g.order.customer_id) == (1, None)
        order = decoder.decode(g.value)
        assert (order.order_id, order.quantity, order.customer_id) == (g.key, 1, None)
        if g.kind == Kind.INVALID:
            with pytest.raises(ValidationError):
                validate(order, MAX)
        else:
            assert validate(order, MAX).price_cents == g.price_cents


def fill(seed: int, n: int, prefix: bytes | None, schema: OrderSchema = SCHEMA) -> Filled:
    factory = OrderFactory(random.Random(seed), "BULK", invalid_rate=0.2, poison_rate=0.1, max_price_cents=MAX)
    return factory.fill(n, schema.encode_single_object, prefix)


def test_orders_made_in_bulk_are_byte_for_byte_what_the_encoder_writes() -> None:
    prefix = SINGLE_OBJECT_MAGIC + SCHEMA.fingerprint
    filled = fill(17, 5000, prefix)
    decoder = OrderDecoder(SCHEMA)
    kinds = {Kind.VALID: 0, Kind.INVALID: 0, Kind.POISON: 0}
    total = 0
    valid = []
    for key, value in filled.records:
        try:
            order = decoder.decode(value)
        except DeserializationError:
            kinds[Kind.POISON] += 1
            continue
        assert key == order.order_id.encode()
        assert SCHEMA.encode_single_object(order) == value  # the same bytes, field by field
        try:
            total += validate(order, MAX).price_cents
        except ValidationError:
            kinds[Kind.INVALID] += 1
        else:
            kinds[Kind.VALID] += 1
            valid.append(order)
    assert (filled.valid, filled.invalid, filled.poison) == (kinds[Kind.VALID], kinds[Kind.INVALID], kinds[Kind.POISON])
    assert filled.valid_sum_cents == total
    assert filled.poison > 300
    assert filled.invalid > 700
    assert {o.product for o in valid} == {name for name, _, _ in PRODUCTS}
    assert {o.quantity for o in valid} >= {1, 2, 3, 4, 5}
    assert 0.3 < sum(o.customer_id is not None for o in valid) / len(valid) < 0.7


def test_bulk_orders_are_reproduced_by_a_seed_and_keep_numbering_after_single_ones() -> None:
    prefix = SINGLE_OBJECT_MAGIC + SCHEMA.fingerprint
    assert fill(3, 300, prefix) == fill(3, 300, prefix)
    factory = OrderFactory(random.Random(1), "SEQ")
    first = factory.make(SCHEMA.encode_single_object)
    filled = factory.fill(3, SCHEMA.encode_single_object, prefix)
    assert [first.key.encode(), *(key for key, _ in filled.records)] == [b"O-SEQ-1", b"O-SEQ-2", b"O-SEQ-3", b"O-SEQ-4"]


def test_without_a_prefix_or_with_version_1_orders_bulk_filling_makes_them_one_at_a_time() -> None:
    one_at_a_time = make(4, 1000, "BULK")
    filled = fill(4, 1000, None)
    assert filled.records == [(g.key.encode(), g.value) for g in one_at_a_time]
    assert filled.valid_sum_cents == sum(g.price_cents or 0 for g in one_at_a_time)
    assert filled.poison == sum(g.kind == Kind.POISON for g in one_at_a_time)
    v1 = load_order_schema(1)
    factory = OrderFactory(random.Random(2), "V1", max_price_cents=MAX, version_2_fields=False)
    again = OrderFactory(random.Random(2), "V1", max_price_cents=MAX, version_2_fields=False)
    filled = factory.fill(200, v1.encode_single_object, SINGLE_OBJECT_MAGIC + v1.fingerprint)
    assert filled.records == [
        (g.key.encode(), g.value) for g in (again.make(v1.encode_single_object) for _ in range(200))
    ]


@pytest.mark.parametrize(
    "number", [1, 35, 36, 1295, 1296, 1297, 46655, 46656, 36**4 - 1, 36**4, *range(1, 36**4, 9973)]
)
def test_customer_numbers_written_by_table_match_base36(number: int) -> None:
    assert _customer_number(number) == base36(number)
