"""The order factory: reproducible by seed, and its bad records really are bad."""

import random

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
