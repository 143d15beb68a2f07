"""`dlq.py list`: the dead letters on the DLQ topic, read once to its end, filtered and printed.

Values are decoded to find each order's id: single-object Avro directly, Confluent
framing through the schema registry when one is configured (each new schema id is
looked up once, for at most LOOKUP_WAIT_S). A value that does not decode leaves the
id unknown; the record is listed all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

from orderpipe.codec import OrderDecoder, load_order_schema, schema_id_of
from orderpipe.dead_letters import DeadLetter, DlqFilter, dead_letter, summary_line
from orderpipe.kafka_clients import connect_admin
from orderpipe.kafka_reader import read_to_end
from orderpipe.order import Order
from orderpipe.registry import RegistryLookup, connect_registry
from orderpipe.settings import Settings

__all__ = ["list_dead_letters"]

LOOKUP_WAIT_S = 5.0


def list_dead_letters(
    settings: Settings,
    wanted: DlqFilter,
    *,
    limit: int | None,
    show: Callable[[DeadLetter], None],
) -> str:
    """Shows each matching dead letter (the first `limit`); returns the summary line, which counts them all.

    Raises:
        BrokerUnavailableError, RegistryUnavailableError: named, with how to start one.
        ConfigError: the principal may not read the DLQ topic.
    """
    connect_admin(settings)  # an unreachable broker or a login that cannot succeed, in one sentence
    with ExitStack() as stack:
        decode = _decoder(settings, stack)
        matched: list[DeadLetter] = []
        for record in read_to_end(settings, settings.dlq_topic, "dlq-reader"):
            letter = dead_letter(record, decode)
            if wanted.matches(letter, record.timestamp):
                if limit is None or len(matched) < limit:
                    show(letter)
                matched.append(letter)
        return summary_line(matched)


def _decoder(settings: Settings, stack: ExitStack) -> Callable[[bytes | None], Order]:
    if not settings.schema_registry_url:
        return OrderDecoder(load_order_schema()).decode
    lookup = RegistryLookup(stack.enter_context(connect_registry(settings)))
    stack.callback(lookup.close)
    decoder = OrderDecoder(load_order_schema(), lookup)

    def decode(value: bytes | None) -> Order:
        schema_id = schema_id_of(value)
        if schema_id is not None:
            lookup.resolve([schema_id], LOOKUP_WAIT_S)
        return decoder.decode(value)

    return decode
