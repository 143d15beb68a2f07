"""Helpers for unit tests that drive the whole consumer through the in-memory twin of the edge."""

from __future__ import annotations

import io
import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from orderpipe.config.settings import Settings
from orderpipe.consumer.loop import ConsumerLoop
from orderpipe.consumer.reporting import ConsumerSummary
from orderpipe.core.routing import Decision, Processed
from orderpipe.core.status import ConsumerReading, View
from orderpipe.core.topics import STATS_TOPIC_CONFIG
from orderpipe.kafka.registry import connect_registry
from orderpipe.kafka.twin.cluster import TwinCluster
from orderpipe.kafka.twin.edge import open_twin_edge
from orderpipe.model.generator import Generated, OrderFactory
from orderpipe.model.order import Order, ValidOrder
from orderpipe.observe.console import QUIET, Console
from orderpipe.programs.consumer_app import (
    EXACTLY_ONCE,
    ConsumerOptions,
    OrderConsumer,
    RegistryOpener,
    simulated_outage,
)
from orderpipe.serde.schemas import load_order_schema
from tests.audit import Audit, audit_topics

T = TypeVar("T")
SCHEMA = load_order_schema()
SETTINGS = Settings(retry_backoff_ms=100, retry_backoff_max_ms=400)
TRANSACTIONAL_ID = f"{SETTINGS.consumer_group}.twin.0"


def new_cluster(settings: Settings = SETTINGS, partitions: int = 3) -> TwinCluster:
    cluster = TwinCluster()
    for name in (settings.orders_topic, settings.retry_topic, settings.dlq_topic):
        cluster.create_topic(name, partitions)
    cluster.create_topic(settings.stats_topic, 1, STATS_TOPIC_CONFIG)
    return cluster


def encoded(order_id: str, product: str = "Mouse", price: float = 19.99) -> bytes:
    return SCHEMA.encode_single_object(Order(order_id, product, price))


def produce_orders(
    cluster: TwinCluster,
    count: int,
    *,
    seed: int = 1,
    invalid_rate: float = 0.1,
    poison_rate: float = 0.05,
    settings: Settings = SETTINGS,
) -> list[Generated]:
    """Writes `count` generated orders (some invalid, some undecodable) to the orders topic."""
    factory = OrderFactory(random.Random(seed), f"T{seed}", invalid_rate, poison_rate, settings.max_order_price_cents)
    made = [factory.make(SCHEMA.encode_single_object) for _ in range(count)]
    for generated in made:
        cluster.produce(settings.orders_topic, generated.key.encode(), generated.value)
    return made


@dataclass
class Twin:
    """A consumer on the twin, what it decided (in order) and what it printed and logged."""

    consumer: OrderConsumer
    decisions: list[Decision] = field(default_factory=list)
    out: io.StringIO = field(default_factory=io.StringIO)
    log: io.StringIO = field(default_factory=io.StringIO)


def twin_consumer(
    cluster: TwinCluster,
    *,
    settings: Settings = SETTINGS,
    downstream: Callable[[ValidOrder], None] | None = None,
    failure_rate: float = 0.0,
    seed: int = 0,
    transactional_id: str = TRANSACTIONAL_ID,
    options: ConsumerOptions | None = None,
    verbosity: int = QUIET,
    open_registry: RegistryOpener | None = None,
    console: Console | None = None,
    view: View[ConsumerReading] | None = None,
) -> Twin:
    """A consumer of the twin cluster, quiet, with a fixed transactional id (as a restart on one machine has).

    `console` replaces the one writing to `Twin.out`; `view` is the live panel (orderpipe.observe.terminal).
    """
    decisions: list[Decision] = []
    out = io.StringIO()

    @contextmanager
    def claim(_group: str) -> Iterator[str]:
        yield transactional_id

    consumer = OrderConsumer(
        settings,
        options or ConsumerOptions(idle_exit_s=5.0, delivery=EXACTLY_ONCE),
        console or Console(verbosity, out=out, err=out),
        downstream or simulated_outage(random.Random(seed), failure_rate),
        on_decision=decisions.append,
        clock=cluster.clock,
        open_edge=partial(open_twin_edge, cluster),
        claim=claim,
        open_registry=connect_registry if open_registry is None else open_registry,
        view=view,
    )
    return Twin(consumer, decisions, out, _capture_warnings())


def _capture_warnings() -> io.StringIO:
    """The package's log lines from now on (warnings and up), for assertions."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logging.getLogger("orderpipe").addHandler(handler)
    return stream


def turns(loop: ConsumerLoop, count: int, *others: ConsumerLoop) -> None:
    """Turns each loop `count` times, taking turns (consumers of one group side by side)."""
    for _ in range(count):
        for each in (loop, *others):
            each.turn()


def turn_until(loop: ConsumerLoop, condition: Callable[[], T | None], limit: int = 10_000) -> T:
    """Turns the loop until `condition()` is truthy (in virtual time); returns it."""
    for _ in range(limit):
        result = condition()
        if result:
            return result
        loop.turn()
    raise AssertionError(f"not reached within {limit} turns")


def processed(twin: Twin, order_id: str) -> bool:
    return any(isinstance(d, Processed) and d.order.order_id == order_id for d in twin.decisions)


def run(twin: Twin) -> ConsumerSummary:
    """Runs the consumer until it has been idle for its idle limit (in virtual time)."""
    return twin.consumer.run(threading.Event())


def audit(cluster: TwinCluster, settings: Settings = SETTINGS) -> Audit:
    return audit_topics(cluster.records, settings)


def assert_exact(cluster: TwinCluster, settings: Settings = SETTINGS) -> Audit:
    """Every order counted or dead-lettered once, nothing written twice, no transaction left open."""
    result = audit(cluster, settings)
    assert result.exact, result.describe()
    assert cluster.transactions.open_count() == 0
    return result
