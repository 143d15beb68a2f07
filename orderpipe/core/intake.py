"""The common record's fast path: a single-object order decoded and validated in one pass.

Nearly every record a consumer reads is a valid order written with the newest
schema, single-object. `Intake` reads such a value straight into a `ValidOrder`,
with no `Order` in between and no call per field. It takes only that common shape
(every length in one byte, a known header, nothing left over) and answers None for
anything else, or for any doubt; the general path (`OrderDecoder.decode`, then
`validate`) then decides and explains. Whenever it answers, the answer is what the
general path gives: tests/unit/core/test_intake.py holds the two equal over mutated
records. `Intake.read` takes a plain run's values in one loop (orderpipe/core/batch_plan.py),
so that a value costs no call of its own. Pure: no Kafka.

Its walk over the layout repeats the direct reader's (`_read_v2` in orderpipe/serde/direct.py) on purpose:
a helper shared by the two would cost a call per record, the cost this module is
here to save; both are held to fastavro by the tests.
"""

from __future__ import annotations

import string
import struct
from collections.abc import Callable, Iterable

from orderpipe.model.order import MAX_QUANTITY, ValidOrder, validate
from orderpipe.model.records import Incoming
from orderpipe.serde.codec import OrderDecoder

__all__ = ["Intake", "record_processing"]

_FLOAT = struct.Struct("<f")
_HEADER = 10  # the single-object header: two magic bytes and the fingerprint
_new_tuple = tuple.__new__
# Byte by byte, whether it is a one-byte zigzag varint of a length from 1 to 63 (even,
# from 2 to 0x7E), and of a quantity from 1 to MAX_QUANTITY: one lookup for each check.
_ONE_BYTE = bytes(int(byte & 0x81 == 0 and byte >= 2) for byte in range(256))
_QUANTITY = bytes(int(byte & 0x81 == 0 and 1 <= byte >> 1 <= MAX_QUANTITY) for byte in range(256))
_ID_BYTES = (string.ascii_letters + string.digits + "_-").encode()


class Intake:
    """Reads the common record's value as a valid order, or answers None.

    Args:
        decoder: the consumer's decoder; its known version-2 fingerprints are the
            headers taken (none when it does not read single-object records).
        max_price_cents: MAX_ORDER_PRICE in cents.
    """

    def __init__(self, decoder: OrderDecoder, max_price_cents: int) -> None:
        # A tuple for bytes.startswith, which compares in place (a slice would be a new object to hash).
        self._headers = tuple(decoder.order_layout_headers())
        self._max_price_cents = max_price_cents

    def __call__(self, value: bytes | None) -> ValidOrder | None:
        orders: list[ValidOrder] = []
        self.read((value,), orders)
        return orders[0] if orders else None

    def read(self, values: Iterable[bytes | None], orders: list[ValidOrder] | None = None) -> tuple[int, int]:
        """Reads `values` as valid orders, up to the first one it does not take (taken from an iterator too).

        Returns how many it read and their cents added up; each order is added to
        `orders` if given (without it, none is made: `__call__` makes it again when asked).
        """
        headers, max_cents, unpack, new = self._headers, self._max_price_cents, _FLOAT.unpack_from, _new_tuple
        count = total = 0
        for value in values:
            if value is None or not value.startswith(headers):
                break
            try:
                # Each length is one zigzag varint byte: even (not negative), below 0x80, and here not 0.
                length = value[_HEADER]
                if not _ONE_BYTE[length]:
                    break
                id_end = _HEADER + 1 + (length >> 1)
                length = value[id_end]
                if not _ONE_BYTE[length]:
                    break
                product_start = id_end + 1
                product_end = product_start + (length >> 1)
                quantity = value[product_end + 4]
                if not _QUANTITY[quantity]:
                    break
                branch = value[product_end + 5]
                if branch == 0:
                    if product_end + 6 != len(value):
                        break
                    customer_id = None
                else:
                    length = value[product_end + 6]
                    if branch != 2 or not _ONE_BYTE[length] or product_end + 7 + (length >> 1) != len(value):
                        break
                    customer_id = value[product_end + 7 :].decode()
                    # At most 63 bytes, so within MAX_CUSTOMER_ID_LENGTH characters.
                    if customer_id.isspace() or not customer_id.isprintable():
                        break
                order_id = value[_HEADER + 1 : id_end]
                # ORDER_ID_PATTERN on the bytes: stripping its characters from a non-empty id leaves nothing.
                if order_id.strip(_ID_BYTES):
                    break
                product = value[product_start:product_end].decode()  # UTF-8, strict; naming it costs a lookup
            except (IndexError, UnicodeDecodeError):
                break
            # Both at most 63 bytes: within their length limits.
            if product.isspace():
                break
            # A float32's 24-bit significand times 100 (5 bits) fits a double's 53: the
            # product is exact, and round() takes it half to even, as money.to_cents does.
            hundredfold = unpack(value, product_end)[0] * 100.0
            # NaN, negative, infinite, too high and 0-cent prices (0.5 rounds to 0) take the general path.
            if not 0.5 < hundredfold <= max_cents:
                break
            cents = round(hundredfold)
            count += 1
            total += cents
            if orders is not None:  # the id's bytes are ASCII: the stripping above left nothing else
                orders.append(new(ValidOrder, (order_id.decode(), product, cents, quantity >> 1, customer_id)))
        return count, total


def record_processing(
    decoder: OrderDecoder, max_price_cents: int, downstream: Callable[[ValidOrder], None] | None = None
) -> tuple[Callable[[Incoming], ValidOrder], Intake | None]:
    """The consumer's processing of a record for `plan_batch` (orderpipe/core/batch_plan.py), and its fast lane.

    Without a downstream call, reading the order is all there is to processing: the
    intake is the fast lane and takes the common record itself, and the processing
    reads in full what it does not take (not offering it to the intake a second
    time). With one, the processing reads the order (the intake first) and hands it
    on, and there is no fast lane.
    """
    intake = Intake(decoder, max_price_cents)

    def in_full(record: Incoming) -> ValidOrder:
        return validate(decoder.decode(record.value), max_price_cents)

    if downstream is None:
        return in_full, intake

    def read_then_call(record: Incoming) -> ValidOrder:
        order = intake(record.value) or in_full(record)
        downstream(order)
        return order

    return read_then_call, None
