"""The order factory: reproducible by seed, and its bad records really are bad."""

import random

import pytest

from orderpipe.codec import OrderDecoder, load_order_schema
from orderpipe.errors import DeserializationError, ValidationError
from orderpipe.generator import Generated, Kind, OrderFactory
from orderpipe.order import validate

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
