"""The order as decoded from the wire, and the rules that make one valid."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from orderpipe.errors import ValidationError
from orderpipe.money import format_cents, to_cents

__all__ = ["MAX_ORDER_ID_LENGTH", "MAX_PRODUCT_LENGTH", "Order", "ValidOrder", "validate"]

MAX_ORDER_ID_LENGTH = 64
MAX_PRODUCT_LENGTH = 200
_ORDER_ID = re.compile(r"[A-Za-z0-9_-]+")


class Order(NamedTuple):
    """An order exactly as the Avro record carries it (price is a float32 in dollars).

    Orders and the other per-record values are named tuples: immutable, and cheap
    to make at a hundred thousand a second.
    """

    order_id: str
    product: str
    price: float

    def to_record(self) -> dict[str, object]:
        return {"orderId": self.order_id, "product": self.product, "price": self.price}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Order:
        return cls(record["orderId"], record["product"], record["price"])


class ValidOrder(NamedTuple):
    """An order that passed validation, with its price converted to integer cents."""

    order_id: str
    product: str
    price_cents: int


def validate(order: Order, max_price_cents: int) -> ValidOrder:
    """Checks an order against the rules of DESIGN section 2.

    Raises:
        ValidationError: with the first broken rule, phrased for the DLQ header.
    """
    order_id, product, price = order.order_id, order.product, order.price
    if not order_id:
        raise ValidationError("orderId must not be empty")
    if len(order_id) > MAX_ORDER_ID_LENGTH:
        raise ValidationError(f"orderId must be at most {MAX_ORDER_ID_LENGTH} characters, got {len(order_id)}")
    if not _ORDER_ID.fullmatch(order_id):
        raise ValidationError("orderId may only contain A-Z, a-z, 0-9, '_' and '-'")
    if not product.strip():
        raise ValidationError("product must not be blank")
    if len(product) > MAX_PRODUCT_LENGTH:
        raise ValidationError(f"product must be at most {MAX_PRODUCT_LENGTH} characters, got {len(product)}")
    if not math.isfinite(price):
        raise ValidationError(f"price must be a finite number, got {price}")
    if price <= 0:
        raise ValidationError("price must be > 0")
    # Exact: the float as a ratio of integers, compared without a decimal repr in between.
    numerator, denominator = price.as_integer_ratio()
    if numerator * 100 > max_price_cents * denominator:
        raise ValidationError(f"price must be at most {format_cents(max_price_cents)}, got {price:.2f}")
    cents = to_cents(price)
    if cents == 0:
        raise ValidationError(f"price must be at least $0.01 once rounded to cents, got {price}")
    return ValidOrder(order_id, product, cents)
