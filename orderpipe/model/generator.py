"""Random, realistic orders, and the deliberately bad ones used to exercise the DLQ.

Pure: the random generator is passed in, so `--seed` makes a run reproducible.
OrderIds carry a per-run prefix chosen by the caller, so they stay unique across runs.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Protocol, TypeVar

from orderpipe.model.order import MAX_PRODUCT_LENGTH, MAX_QUANTITY, Order

__all__ = ["PRODUCTS", "Filled", "Generated", "Kind", "OrderEncoder", "OrderFactory", "Rng", "base36"]

T = TypeVar("T")

# Share of orders with a customerId (the others have none, null on the wire).
CUSTOMER_RATE = 0.5
# Quantities are drawn from 1 to this.
MAX_GENERATED_QUANTITY = 5

# (product, lowest price in cents, highest price in cents)
PRODUCTS: tuple[tuple[str, int, int], ...] = (
    ("Keyboard", 2500, 15000),
    ("Mouse", 1000, 8000),
    ("Monitor", 12000, 90000),
    ("USB-C Cable", 500, 2500),
    ("Laptop Stand", 2000, 7000),
    ("Headphones", 3000, 35000),
    ("Webcam", 2500, 12000),
    ("Desk Lamp", 1500, 6000),
    ("Office Chair", 9000, 60000),
    ("Notebook", 200, 1500),
)


class Rng(Protocol):
    """What the factory needs from a random generator (random.Random fits)."""

    def random(self) -> float: ...

    def randint(self, a: int, b: int) -> int: ...

    def choice(self, seq: tuple[T, ...]) -> T: ...

    def randbytes(self, n: int) -> bytes: ...


class OrderEncoder(Protocol):
    """Turns an order into record value bytes, in either wire format."""

    def __call__(self, order: Order) -> bytes: ...


class Kind:
    VALID = "valid"
    INVALID = "invalid"
    POISON = "poison"


class Filled(NamedTuple):
    """A slice of records made in bulk: (key, value) pairs, how many of each kind, and the valid orders' total."""

    records: list[tuple[bytes, bytes | None]]
    invalid: int
    poison: int
    valid_sum_cents: int

    @property
    def valid(self) -> int:
        return len(self.records) - self.invalid - self.poison


class Generated(NamedTuple):
    """One record to publish: key, value bytes, what kind it is and the order behind it."""

    key: str
    value: bytes | None
    kind: str
    order: Order
    price_cents: int | None  # set for valid orders: what the consumer should count


_BASE36_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def base36(number: int) -> str:
    """Writes a non-negative number in digits and upper-case letters (short, id-safe)."""
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = _BASE36_DIGITS[rest] + text
        if number == 0:
            return text


# Every number below 36**2 as two base-36 digits, and 36**2 itself as three: two of them
# write any customer number up to 36**4 (leading zeros are then stripped).
_BASE36_PAIRS = (*(a + b for a in _BASE36_DIGITS for b in _BASE36_DIGITS), "100")
# Avro's zigzag varint of 0 to 63 is one byte: twice the number.
_SHORT_LENGTHS = tuple(bytes((2 * n,)) for n in range(64))
_FLOAT = struct.Struct("<f")


def _customer_number(number: int) -> str:
    """base36(number) for 1 <= number <= 36**4, by two table lookups."""
    return (_BASE36_PAIRS[number // 1296] + _BASE36_PAIRS[number % 1296]).lstrip("0")


# The ways `_invalid` breaks an order; the quantity ones need schema version 2 on the wire.
_MUTATIONS = (
    "zero-price",
    "negative-price",
    "too-expensive",
    "nan-price",
    "blank-product",
    "long-product",
    "bad-order-id",
)
_QUANTITY_MUTATIONS = ("zero-quantity", "too-many")


class OrderFactory:
    """Makes the n-th order of a run; bad orders are mixed in at the given rates.

    Args:
        rng: the random generator (seeded for reproducible runs).
        run_id: a prefix unique to this run, e.g. derived from the start time.
        max_price_cents: MAX_ORDER_PRICE, so "too expensive" orders really are.
        version_2_fields: False when the orders are written with schema version 1,
            which has no quantity or customerId: every order then has the defaults
            (quantity 1, no customer), as the consumer reads such a record, and no
            invalid order is one for its quantity.
    """

    def __init__(
        self,
        rng: Rng,
        run_id: str,
        invalid_rate: float = 0.0,
        poison_rate: float = 0.0,
        max_price_cents: int = 10_000_000,
        *,
        version_2_fields: bool = True,
    ) -> None:
        self._rng = rng
        self._version_2_fields = version_2_fields
        self._run_id = run_id
        self._invalid_rate = invalid_rate
        self._poison_rate = poison_rate
        self._max_price = max_price_cents / 100
        self._sequence = 0

    def next_order_id(self) -> str:
        self._sequence += 1
        return self._order_id(self._sequence)

    def _order_id(self, sequence: int) -> str:
        return f"O-{self._run_id}-{sequence:X}"

    def make(self, encode: OrderEncoder) -> Generated:
        """The next record; `encode` turns an order into value bytes (either wire format)."""
        return self._make(self.next_order_id(), encode)

    def _make(self, order_id: str, encode: OrderEncoder, roll: float | None = None) -> Generated:
        """The record of `order_id`; `roll` (drawn after the order's fields when not given) picks its kind."""
        rng = self._rng
        product, low, high = rng.choice(PRODUCTS)
        cents = rng.randint(low, high)
        order = Order(order_id, product, cents / 100)
        if self._version_2_fields:
            customer_id = f"C-{base36(rng.randint(1, 36**4))}" if rng.random() < CUSTOMER_RATE else None
            order = order._replace(quantity=rng.randint(1, MAX_GENERATED_QUANTITY), customer_id=customer_id)
        if roll is None:
            roll = rng.random()
        if roll < self._poison_rate:
            return Generated(order_id, self._poison(encode(order)), Kind.POISON, order, None)
        if roll < self._poison_rate + self._invalid_rate:
            bad = self._invalid(order)
            return Generated(bad.order_id, encode(bad), Kind.INVALID, bad, None)
        return Generated(order_id, encode(order), Kind.VALID, order, cents)

    def fill(self, count: int, encode: OrderEncoder, prefix: bytes | None) -> Filled:
        """The next `count` records, made in bulk.

        `prefix` is given when `encode` writes the order schema's version 2 layout
        (orderId, product, price, quantity, customerId) after a fixed header: then a
        valid order's value is put together from ready-made pieces, byte for byte what
        `encode` writes, with no Order made. Invalid and poison records, and every
        record without a prefix, are made one at a time by `make`. Valid orders come
        from the same distribution either way (a seed reproduces the slice).
        """
        if prefix is None or not self._version_2_fields:
            return self._fill_slowly(count, encode)
        rng = self._rng
        random = rng.random
        bad_rate = self._poison_rate + self._invalid_rate
        products = [(_SHORT_LENGTHS[len(name)] + name.encode(), low, high - low + 1) for name, low, high in PRODUCTS]
        product_count = len(products)
        quantities = [_SHORT_LENGTHS[n] for n in range(MAX_GENERATED_QUANTITY + 1)]
        pack, join = _FLOAT.pack, b"".join
        records: list[tuple[bytes, bytes | None]] = []
        append = records.append
        head = f"O-{self._run_id}-".encode()
        invalid = poison = valid_sum = 0
        for _ in range(count):
            self._sequence += 1
            roll = random()
            if roll < bad_rate:  # rare: made one at a time
                generated = self._make(self._order_id(self._sequence), encode, roll)
                append((generated.key.encode(), generated.value))
                poison, invalid = (poison + 1, invalid) if generated.kind == Kind.POISON else (poison, invalid + 1)
                continue
            key = b"%s%X" % (head, self._sequence)
            name, low, span = products[int(random() * product_count)]
            cents = low + int(random() * span)
            quantity = quantities[1 + int(random() * MAX_GENERATED_QUANTITY)]
            # customerId: union branch 1, a string (its length, then "C-" and the number), or 0, null.
            tail = b"\x00"
            if random() < CUSTOMER_RATE:
                customer = _customer_number(1 + int(random() * 36**4)).encode()
                tail = b"\x02%sC-%s" % (_SHORT_LENGTHS[len(customer) + 2], customer)
            append((key, join((prefix, _SHORT_LENGTHS[len(key)], key, name, pack(cents / 100), quantity, tail))))
            valid_sum += cents
        return Filled(records, invalid, poison, valid_sum)

    def _fill_slowly(self, count: int, encode: OrderEncoder) -> Filled:
        records: list[tuple[bytes, bytes | None]] = []
        invalid = poison = valid_sum = 0
        for _ in range(count):
            generated = self.make(encode)
            records.append((generated.key.encode(), generated.value))
            if generated.kind == Kind.POISON:
                poison += 1
            elif generated.kind == Kind.INVALID:
                invalid += 1
            else:
                valid_sum += generated.price_cents or 0
        return Filled(records, invalid, poison, valid_sum)

    def _invalid(self, order: Order) -> Order:
        """The order with one rule of `validate` (orderpipe/model/order.py) broken, chosen at random."""
        mutations = _MUTATIONS + _QUANTITY_MUTATIONS if self._version_2_fields else _MUTATIONS
        mutation = self._rng.choice(mutations)
        oid, product, price = order.order_id, order.product, order.price
        if mutation == "zero-price":
            return order._replace(price=0.0)
        if mutation == "negative-price":
            return order._replace(price=-price)
        if mutation == "too-expensive":
            return order._replace(price=self._max_price * 2)
        if mutation == "nan-price":
            return order._replace(price=float("nan"))
        if mutation == "blank-product":
            return order._replace(product="   ")
        if mutation == "long-product":
            return order._replace(product=product.ljust(MAX_PRODUCT_LENGTH + 1, "+"))
        if mutation == "zero-quantity":
            return order._replace(quantity=0)
        if mutation == "too-many":
            return order._replace(quantity=MAX_QUANTITY + 1)
        return order._replace(order_id=oid + "!")

    def _poison(self, encoded: bytes) -> bytes:
        """Bytes no decoder accepts: garbage, a truncated body or an unknown fingerprint."""
        mutation = self._rng.choice(("garbage", "truncated", "unknown-schema"))
        if mutation == "garbage":
            return b"\xde\xad" + self._rng.randbytes(14)
        if mutation == "truncated":
            header = 10 if encoded[:1] == b"\xc3" else 5
            return encoded[: header + 2]
        return b"\xc3\x01" + self._rng.randbytes(8) + encoded[10:]
