"""The order as decoded from the wire, and the rules that make one valid."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from orderpipe.errors import ValidationError
from orderpipe.model.money import format_cents

__all__ = [
    "MAX_CUSTOMER_ID_LENGTH",
    "MAX_ORDER_ID_LENGTH",
    "MAX_PRODUCT_LENGTH",
    "MAX_QUANTITY",
    "ORDER_ID_PATTERN",
    "Order",
    "ValidOrder",
    "validate",
]

MAX_ORDER_ID_LENGTH = 64
MAX_PRODUCT_LENGTH = 200
MAX_QUANTITY = 1000
MAX_CUSTOMER_ID_LENGTH = 64
ORDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class Order(NamedTuple):
    """An order exactly as the Avro record carries it (price is a float32 in dollars).

    The fields follow the newest schema version (`order.avsc`); a field that an older
    version lacks has the default that version's records are read with, the same
    default as in the schema file (a unit test holds them equal).

    Orders and the other per-record values are named tuples: immutable, and cheap
    to make at a hundred thousand a second.
    """

    order_id: str
    product: str
    price: float
    quantity: int = 1
    customer_id: str | None = None

    def to_record(self) -> dict[str, object]:
        """The Avro record of the newest version (a writer of an older version ignores the fields it lacks)."""
        return {
            "orderId": self.order_id,
            "product": self.product,
            "price": self.price,
            "quantity": self.quantity,
            "customerId": self.customer_id,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Order:
        """The order of a decoded record; a field missing from it (a version 1 record) takes its default."""
        return cls(
            record["orderId"],
            record["product"],
            record["price"],
            record.get("quantity", 1),
            record.get("customerId"),
        )


class ValidOrder(NamedTuple):
    """An order that passed validation, with its price converted to integer cents.

    The running average is of `price_cents` alone: the price of an order, whatever its quantity.
    """

    order_id: str
    product: str
    price_cents: int
    quantity: int = 1
    customer_id: str | None = None


def validate(order: Order, max_price_cents: int) -> ValidOrder:
    """Checks an order against the validation rules of docs/wire-formats.md ("Where each record goes").

    Version 2's fields: `quantity` must be from 1 to MAX_QUANTITY; `customerId` may be
    null, and otherwise must not be blank, must be at most MAX_CUSTOMER_ID_LENGTH
    characters and printable (no control, format or separator characters but the
    space: `str.isprintable`), since it is shown on the console and in DLQ listings.

    Raises:
        ValidationError: with the first broken rule, phrased for the DLQ header.
    """
    order_id, product, price = order.order_id, order.product, order.price
    if not order_id:
        raise ValidationError("orderId must not be empty")
    if len(order_id) > MAX_ORDER_ID_LENGTH:
        raise ValidationError(f"orderId must be at most {MAX_ORDER_ID_LENGTH} characters, got {len(order_id)}")
    if not ORDER_ID_PATTERN.fullmatch(order_id):
        raise ValidationError("orderId may only contain A-Z, a-z, 0-9, '_' and '-'")
    if not product.strip():
        raise ValidationError("product must not be blank")
    if len(product) > MAX_PRODUCT_LENGTH:
        raise ValidationError(f"product must be at most {MAX_PRODUCT_LENGTH} characters, got {len(product)}")
    if not math.isfinite(price):
        raise ValidationError(f"price must be a finite number, got {price}")
    if price <= 0:
        raise ValidationError("price must be > 0")
    # Exact: the float as a ratio of integers, compared without a decimal repr in between,
    # and rounded to cents half to even (money.to_cents, written out: this runs per record).
    numerator, denominator = price.as_integer_ratio()
    numerator *= 100
    if numerator > max_price_cents * denominator:
        raise ValidationError(f"price must be at most {format_cents(max_price_cents)}, got {price:.2f}")
    cents, remainder = divmod(numerator, denominator)
    if 2 * remainder > denominator or (2 * remainder == denominator and cents % 2 == 1):
        cents += 1
    if cents == 0:
        raise ValidationError(f"price must be at least $0.01 once rounded to cents, got {price}")
    quantity, customer_id = order.quantity, order.customer_id
    if not 1 <= quantity <= MAX_QUANTITY:
        raise ValidationError(f"quantity must be from 1 to {MAX_QUANTITY}, got {quantity}")
    if customer_id is not None:
        if not customer_id.strip():
            raise ValidationError("customerId must not be blank (null when there is none)")
        if len(customer_id) > MAX_CUSTOMER_ID_LENGTH:
            raise ValidationError(
                f"customerId must be at most {MAX_CUSTOMER_ID_LENGTH} characters, got {len(customer_id)}"
            )
        if not customer_id.isprintable():
            raise ValidationError("customerId may only contain printable characters")
    return ValidOrder(order_id, product, cents, quantity, customer_id)
