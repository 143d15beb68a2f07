"""The producer at the edge: publishes generated orders to Kafka and checks every delivery."""

from __future__ import annotations

import functools
import random
import secrets
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from config import Settings
from orderpipe.codec import OrderSchema, load_order_schema
from orderpipe.console import Console
from orderpipe.errors import RegistryUnavailableError
from orderpipe.generator import Generated, Kind, OrderEncoder, OrderFactory, base36
from orderpipe.kafka_clients import connect_admin, create_client, ensure_topics, produce, producer_config
from orderpipe.money import RunningAverage, format_cents
from orderpipe.order import Order
from orderpipe.registry import START_REGISTRY_HINT, connect_registry

__all__ = ["ProducerOptions", "ProducerSummary", "run_producer"]

FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ProducerOptions:
    count: int | None = None
    rate: float = 2.0
    invalid_rate: float = 0.0
    poison_rate: float = 0.0
    seed: int | None = None


@dataclass
class ProducerSummary:
    """What a run sent, by kind, and what the broker acknowledged."""

    sent: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {Kind.VALID: 0, Kind.INVALID: 0, Kind.POISON: 0})
    delivered: int = 0
    failed: int = 0
    valid: RunningAverage = field(default_factory=RunningAverage)

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.by_kind.items())
        return (
            f"Producer summary: sent {self.sent} orders ({kinds}), delivered {self.delivered}, "
            f"failed {self.failed}; valid orders total {format_cents(self.valid.sum_cents)}, "
            f"average {self.valid.describe()}"
        )


def _encoder(settings: Settings, schema: OrderSchema) -> OrderEncoder:
    """The value encoder: Confluent wire format with a registry, single-object without."""
    if not settings.schema_registry_url:
        return schema.encode_single_object
    client = connect_registry(settings.schema_registry_url)
    subject = f"{settings.orders_topic}-value"
    try:
        client.register_schema(subject, Schema(schema.text, "AVRO"))
    except Exception as exc:
        raise RegistryUnavailableError(
            f"The schema registry at {settings.schema_registry_url} refused the order schema for subject "
            f"{subject} ({type(exc).__name__}: {exc}): {START_REGISTRY_HINT}."
        ) from exc
    serializer = AvroSerializer(client, schema.text, to_dict=lambda order, _ctx: order.to_record())
    context = SerializationContext(settings.orders_topic, MessageField.VALUE)

    def encode(order: Order) -> bytes:
        return serializer(order, context)  # type: ignore[no-any-return]

    return encode


def _describe(generated: Generated) -> str:
    order = generated.order
    if generated.kind == Kind.POISON:
        return f"poison record {generated.key} ({len(generated.value or b'')} undecodable bytes)"
    label = "Order" if generated.kind == Kind.VALID else "invalid order"
    return f"{label} {order.order_id} → {order.product.strip() or '(blank)'} → ${order.price:.2f}"


def run_producer(
    settings: Settings,
    options: ProducerOptions,
    console: Console,
    stop: threading.Event,
) -> ProducerSummary:
    """Publishes orders until `count` is reached or `stop` is set, then flushes.

    Raises:
        BrokerUnavailableError, RegistryUnavailableError: before anything is sent.
    """
    admin = connect_admin(settings)
    ensure_topics(admin, settings)
    schema = load_order_schema()
    encode = _encoder(settings, schema)
    producer = create_client(Producer, producer_config(settings))
    # The run id makes orderIds unique across runs; it is not drawn from the seeded
    # generator, so a seeded run repeats its orders but never their ids.
    run_id = base36(time.time_ns() // 1_000_000) + base36(secrets.randbelow(36 * 36)).rjust(2, "0")
    factory = OrderFactory(
        random.Random(options.seed),
        run_id,
        options.invalid_rate,
        options.poison_rate,
        settings.max_order_price_cents,
    )
    summary = ProducerSummary()
    wire = (
        "schema registry at " + settings.schema_registry_url if settings.schema_registry_url else "single-object Avro"
    )
    console.info(
        f"Producing to {settings.orders_topic} on {settings.bootstrap_servers} ({wire}); "
        f"rate {'unlimited' if options.rate == 0 else f'{options.rate:g}/s'}. Ctrl-C to stop."
    )

    def on_delivery(generated: Generated, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            summary.failed += 1
            console.error(f"✗ Not delivered: {_describe(generated)}: {error.str()}")
            return
        summary.delivered += 1
        console.event(f"✓ Sent: {_describe(generated)} (partition {message.partition()}, offset {message.offset()})")

    started = time.monotonic()
    last_count, last_time = 0, started
    while not stop.is_set() and (options.count is None or summary.sent < options.count):
        now = time.monotonic()
        console.tick(now)
        if options.rate > 0:
            wait = started + summary.sent / options.rate - now
            if wait > 0:
                producer.poll(min(wait, 0.2))  # serves delivery reports while waiting
                continue
        generated = factory.make(encode)
        produce(
            producer,
            settings.orders_topic,
            generated.key.encode("utf-8"),
            generated.value,
            on_delivery=functools.partial(on_delivery, generated),
        )
        producer.poll(0)
        summary.sent += 1
        summary.by_kind[generated.kind] += 1
        if generated.price_cents is not None:
            summary.valid = summary.valid.add(generated.price_cents)
        if console.summary_due(now):
            rate = (summary.sent - last_count) / max(now - last_time, 1e-9)
            last_count, last_time = summary.sent, now
            console.info(
                f"[producer] {rate:,.0f} orders/s | sent {summary.sent} | "
                f"delivered {summary.delivered} | failed {summary.failed}"
            )

    undelivered = producer.flush(FLUSH_TIMEOUT_S)
    if undelivered:
        summary.failed += undelivered
        console.error(f"✗ {undelivered} orders were still not acknowledged after {FLUSH_TIMEOUT_S:.0f}s")
    console.info(summary.describe())
    return summary
