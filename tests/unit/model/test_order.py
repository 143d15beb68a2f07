"""Validation rules of docs/wire-formats.md, one row per rule."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderpipe.errors import ValidationError
from orderpipe.model.money import to_cents
from orderpipe.model.order import Order, ValidOrder, validate

MAX = 10_000_000  # $100,000.00

INVALID = [
    (Order("", "Keyboard", 10.0), "orderId must not be empty"),
    (Order("O" * 65, "Keyboard", 10.0), "orderId must be at most 64 characters"),
    (Order("O-1!", "Keyboard", 10.0), "orderId may only contain"),
    (Order("O 1", "Keyboard", 10.0), "orderId may only contain"),
    (Order("O-é", "Keyboard", 10.0), "orderId may only contain"),
    (Order("O-1\n", "Keyboard", 10.0), "orderId may only contain"),
    (Order("O-1", "", 10.0), "product must not be blank"),
    (Order("O-1", "  \t ", 10.0), "product must not be blank"),
    (Order("O-1", "x" * 201, 10.0), "product must be at most 200 characters"),
    (Order("O-1", "Keyboard", math.nan), "price must be a finite number"),
    (Order("O-1", "Keyboard", math.inf), "price must be a finite number"),
    (Order("O-1", "Keyboard", -math.inf), "price must be a finite number"),
    (Order("O-1", "Keyboard", 0.0), "price must be > 0"),
    (Order("O-1", "Keyboard", -0.01), "price must be > 0"),
    (Order("O-1", "Keyboard", 100000.01), "price must be at most $100,000.00"),
    (Order("O-1", "Keyboard", 100000.004), "price must be at most $100,000.00"),
    (Order("O-1", "Keyboard", 0.004), "price must be at least $0.01 once rounded"),
    (Order("O-1", "Keyboard", 10.0, 0), "quantity must be from 1 to 1000, got 0"),
    (Order("O-1", "Keyboard", 10.0, -3), "quantity must be from 1 to 1000, got -3"),
    (Order("O-1", "Keyboard", 10.0, 1001), "quantity must be from 1 to 1000, got 1001"),
    (Order("O-1", "Keyboard", 10.0, 2, ""), "customerId must not be blank"),
    (Order("O-1", "Keyboard", 10.0, 2, " \t"), "customerId must not be blank"),
    (Order("O-1", "Keyboard", 10.0, 2, "C" * 65), "customerId must be at most 64 characters, got 65"),
    (Order("O-1", "Keyboard", 10.0, 2, "C-1\n"), "customerId may only contain printable characters"),
    (Order("O-1", "Keyboard", 10.0, 2, "C-\u202e1"), "customerId may only contain printable characters"),
]


@pytest.mark.parametrize(("order", "message"), INVALID, ids=[m + f"[{i}]" for i, (_, m) in enumerate(INVALID)])
def test_invalid_orders_are_rejected_with_the_broken_rule(order: Order, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        validate(order, MAX)


@pytest.mark.parametrize(
    ("order", "cents"),
    [
        (Order("O-1", "Keyboard", 45.5), 4550),
        (Order("a" * 64, "x" * 200, 0.01), 1),
        (Order("Ab_9-z", "Mouse", 100000.0), 10_000_000),
        (Order("O-1", "Keyboard", 45.5, 1000, "C" * 64), 4550),
        (Order("O-1", "Keyboard", 45.5, 3, "Jürgen Müller #7"), 4550),
    ],
)
def test_valid_orders_pass_with_their_price_in_cents(order: Order, cents: int) -> None:
    expected = ValidOrder(order.order_id, order.product, cents, order.quantity, order.customer_id)
    assert validate(order, MAX) == expected


def test_the_price_in_cents_is_of_one_order_whatever_its_quantity() -> None:
    assert validate(Order("O-1", "Keyboard", 45.5, 7), MAX).price_cents == 4550


def test_a_version_1_record_reads_with_the_defaults_and_round_trips() -> None:
    order = Order.from_record({"orderId": "O-1", "product": "Keyboard", "price": 45.5})
    assert (order.quantity, order.customer_id) == (1, None)
    full = Order("O-2", "Mouse", 9.5, 4, "C-9")
    assert Order.from_record(full.to_record()) == full


def test_the_price_limit_is_a_setting() -> None:
    with pytest.raises(ValidationError):
        validate(Order("O-1", "Keyboard", 50.01), 5000)
    assert validate(Order("O-1", "Keyboard", 50.0), 5000).price_cents == 5000


@given(st.floats(min_value=0.0, max_value=100_000.0, width=32, exclude_min=True))
def test_a_valid_price_rounds_to_cents_as_money_to_cents_does(price: float) -> None:
    try:
        cents = validate(Order("O-1", "Keyboard", price), 10_000_000).price_cents
    except ValidationError:  # below half a cent
        assert to_cents(price) == 0
    else:
        assert cents == to_cents(price)


def test_a_price_exactly_half_a_cent_away_rounds_to_even() -> None:
    # 0.125 and 0.375 are exact in binary: 12.5 and 37.5 cents round to 12 and 38.
    assert validate(Order("O-1", "Keyboard", 0.125), 10_000_000).price_cents == 12
    assert validate(Order("O-1", "Keyboard", 0.375), 10_000_000).price_cents == 38
