"""The consumer assembled: its options, its start-up, its loop and its final summary.

`OrderConsumer.run` acquires what the consumer needs in one ExitStack (the instance
slot that gives it a stable transactional id, the Kafka edge, the schema registry),
so a failure at any step closes what was already opened; then it runs the
`ConsumerLoop` until stopped or idle. The edge is passed in as an opener: the
confluent-kafka one by default, the in-memory twin (`orderpipe.kafka.twin`) in unit tests.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from orderpipe.clock import SYSTEM_CLOCK, Clock
from orderpipe.config.settings import Settings
from orderpipe.consumer.committer import AtLeastOnceCommitter, Committer, TransactionalCommitter
from orderpipe.consumer.instance import claim_slot
from orderpipe.consumer.loop import ConsumerLoop
from orderpipe.consumer.reporting import ConsumerSummary, Reporter
from orderpipe.core.acls import require
from orderpipe.core.batch_plan import BatchPlan, plan_batch
from orderpipe.core.effects import OutputTopics
from orderpipe.core.health import Health
from orderpipe.core.intake import record_processing
from orderpipe.core.latency import LatencyHistogram
from orderpipe.core.ports import EdgeOpener, EdgeOptions, KafkaEdge
from orderpipe.core.replicas import ReplicaWatch, min_isr_of
from orderpipe.core.routing import Decision, RetryPolicy
from orderpipe.core.stats import StatsKeys
from orderpipe.core.stats_view import StatsView
from orderpipe.core.status import ConsumerReading, View
from orderpipe.core.topics import (
    largest_record,
    missing_sentence,
    missing_topics,
    partition_warning,
    stats_keys,
    topic_problems,
    weak_topics,
)
from orderpipe.errors import ConfigError, FatalKafkaError
from orderpipe.kafka.edge import open_kafka_edge
from orderpipe.kafka.registry import RegistryLookup, connect_registry
from orderpipe.kafka.watchdog import WATCHDOG
from orderpipe.model.order import ValidOrder
from orderpipe.model.records import Run
from orderpipe.observe.console import Console
from orderpipe.observe.metrics import ConsumerMetrics
from orderpipe.observe.metrics_http import serving
from orderpipe.serde.codec import OrderDecoder, schema_id_of
from orderpipe.serde.wire import CONFLUENT, RAW, SINGLE_OBJECT, order_decoder, raw_reader
from orderpipe.text import Scrubber, printable, redact

__all__ = [
    "AT_LEAST_ONCE",
    "DEFAULT_COMMIT_INTERVAL_MS",
    "EXACTLY_ONCE",
    "ConsumerOptions",
    "Downstream",
    "OrderConsumer",
    "simulated_outage",
    "wire_label",
]

log = logging.getLogger(__name__)

# The work done for a valid order after validation (a simulated downstream call in
# this project); raising any exception makes the order a transient failure.
Downstream = Callable[[ValidOrder], None]
# Connects to the schema registry the settings name (a context manager: closed with the consumer).
RegistryOpener = Callable[[Settings], AbstractContextManager[Any]]
# Yields the transactional id of this consumer process for a group, held until the block ends.
SlotClaimer = Callable[[str], AbstractContextManager[str]]
EXACTLY_ONCE = "exactly-once"
AT_LEAST_ONCE = "at-least-once"
DEFAULT_COMMIT_INTERVAL_MS = {EXACTLY_ONCE: 100, AT_LEAST_ONCE: 5}
# The longest a batch waits for the schema look-ups of its new ids; records whose id is
# still unanswered then wait on their own partition (registry.RegistryLookup).
LOOKUP_WAIT_S = 0.2


class Topics(NamedTuple):
    """What the consumer learnt of its topics at start.

    Attributes:
        stats_keys: which stats keys are its group's.
        largest_record: the largest record its output topics take.
        min_isr: the min.insync.replicas of each output topic.
    """

    stats_keys: StatsKeys
    largest_record: int
    min_isr: dict[str, int]


@dataclass(frozen=True)
class ConsumerOptions:
    """How the consumer runs; the defaults are what consumer.py uses.

    Attributes:
        batch_size: the most records one batch (and so one transaction) holds.
        commit_interval_ms: the longest a batch waits to fill before it is committed:
            the transaction interval. None takes the delivery mode's default
            (DEFAULT_COMMIT_INTERVAL_MS): a transaction costs a few milliseconds of
            round trips, an offset commit much less.
        session_timeout_ms, max_poll_interval_ms, transaction_timeout_ms: see EdgeOptions.
    """

    idle_exit_s: float | None = None
    batch_size: int = 10_000
    commit_interval_ms: int | None = None
    delivery: str = EXACTLY_ONCE
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    transaction_timeout_ms: int = 10_000
    report_latency: bool = False

    @property
    def commit_interval_s(self) -> float:
        interval = self.commit_interval_ms
        return (DEFAULT_COMMIT_INTERVAL_MS[self.delivery] if interval is None else interval) / 1000

    def edge(self, transactional_id: str | None, stats_cb: Callable[[str], None] | None = None) -> EdgeOptions:
        return EdgeOptions(
            transactional_id,
            self.session_timeout_ms,
            self.max_poll_interval_ms,
            self.transaction_timeout_ms,
            stats_cb,
        )


@contextmanager
def claim_transactional_id(group: str) -> Iterator[str]:
    """The lowest free instance slot of the group on this machine, as a transactional id (consumer/instance.py)."""
    slot = claim_slot(group)
    try:
        yield slot.transactional_id
    finally:
        slot.release()


class OrderConsumer:
    """The consumer: construct it, then `run` it until stopped or idle.

    Args:
        downstream: called for every valid order; an exception is a transient failure (None: no call).
        on_decision: called with each decision after its batch was committed.
        clock: the time (SYSTEM_CLOCK); the twin's virtual clock in unit tests.
        open_edge: connects to Kafka (confluent-kafka by default).
        claim: gives this process its transactional id (an instance slot by default).
        open_registry: connects to the schema registry (confluent-kafka's client by default).
        view: the live panel on a terminal (orderpipe.observe.terminal); None prints the periodic summary lines.
    """

    def __init__(
        self,
        settings: Settings,
        options: ConsumerOptions,
        console: Console,
        downstream: Downstream | None,
        *,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        open_edge: EdgeOpener = open_kafka_edge,
        claim: SlotClaimer = claim_transactional_id,
        open_registry: RegistryOpener = connect_registry,
        view: View[ConsumerReading] | None = None,
    ) -> None:
        self._settings, self._options, self._console = settings, options, console
        self._downstream = downstream
        self._clock, self._open_edge, self._claim = clock, open_edge, claim
        self._open_registry = open_registry
        self.summary = ConsumerSummary()
        self._reporter = Reporter(
            console,
            self.summary,
            settings.max_retries,
            latency=LatencyHistogram() if options.report_latency else None,
            on_decision=on_decision,
            view=view,
        )
        # With METRICS_PORT set: the series and the health state /metrics and /healthz answer from.
        self.metrics = (
            ConsumerMetrics(
                Health(settings.bootstrap_servers, clock.monotonic, needs_commits=True, overdue=WATCHDOG.overdue),
                clock.monotonic,
            )
            if settings.metrics_port
            else None
        )

    def run(self, stop: threading.Event) -> ConsumerSummary:
        """Consumes until `stop` is set or the idle limit passes, then closes and prints the summary.

        Raises:
            ConfigError: the Kafka client settings were rejected.
            BrokerUnavailableError, RegistryUnavailableError: at start-up.
            FatalKafkaError: the transactional producer was fenced or failed for good.
            DeliveryError: at-least-once only, a retry or DLQ record was not
                acknowledged (its batch was not committed).
        """
        with self.open() as loop:
            # What start-up made (modules, settings, clients) lives as long as the program:
            # frozen, the collector stops walking it again each time a batch's objects age.
            gc.freeze()
            try:
                # Taken before closing: closing revokes the partitions and drops their state from memory.
                self.summary.average = loop.run(stop)
            except FatalKafkaError as exc:
                if self.metrics is not None:  # /healthz says so while the consumer closes
                    # Served over HTTP, past the scrubbing of stdout and stderr: scrubbed here.
                    scrub = Scrubber(self._settings.secrets())
                    self.metrics.health.failure = scrub(redact(printable(f"failed: {exc}", 300)))
                raise
        self._reporter.final()
        return self.summary

    @contextmanager
    def open(self) -> Iterator[ConsumerLoop]:
        """Starts up (slot, edge, topics, registry, transactions, subscription) and yields the loop.

        Everything is acquired in one ExitStack: a failure at any step, or the end of
        the block, closes what was opened.
        """
        settings, options, metrics = self._settings, self._options, self.metrics
        raw = raw_reader(settings)  # a writer schema for bare bodies that cannot carry an order: before connecting
        with ExitStack() as stack:
            if metrics is not None and settings.metrics_port is not None:
                url = stack.enter_context(serving(settings.metrics_port, metrics.registry, metrics.health))
                self._console.info(f"Metrics on {url}/metrics (health: /healthz)")
            transactional_id = (
                stack.enter_context(self._claim(settings.consumer_group)) if options.delivery == EXACTLY_ONCE else None
            )
            stats_cb = None if metrics is None else metrics.health.on_stats
            edge = stack.enter_context(self._open_edge(settings, options.edge(transactional_id, stats_cb)))
            counts, configs = _set_up_topics(settings, edge)
            edge.finish_setup()  # the admin client's work is done: no admin request runs on the running path
            lookup = None
            if settings.schema_registry_url:
                client = stack.enter_context(self._open_registry(settings))
                lookup = RegistryLookup(client, clock=self._clock.monotonic)
                stack.callback(lookup.close)
            committer: Committer = (
                TransactionalCommitter(edge, transactional_id, self._clock)
                if transactional_id is not None
                else AtLeastOnceCommitter(edge)
            )
            committer.start()
            outputs = (settings.retry_topic, settings.dlq_topic, settings.stats_topic)
            topics = Topics(
                stats_keys(settings, counts),
                largest_record(settings, configs),
                min_isr_of({t: configs.get(t, {}) for t in outputs}, settings.min_isr),
            )
            loop = self._loop(edge, committer, order_decoder(settings, lookup, raw), lookup, topics)
            edge.subscribe((settings.orders_topic, settings.retry_topic))
            wire = wire_label(settings)
            self._console.info(
                f"Consuming {settings.orders_topic}, {settings.retry_topic} as group {settings.consumer_group} from "
                f"{settings.bootstrap_servers} ({wire}; {committer.mode}). Ctrl-C to stop."
            )
            if metrics is not None:
                metrics.health.start()
            yield loop

    def _loop(
        self,
        edge: KafkaEdge,
        committer: Committer,
        decoder: OrderDecoder,
        lookup: RegistryLookup | None,
        topics: Topics,
    ) -> ConsumerLoop:
        settings, options = self._settings, self._options
        policy = RetryPolicy(settings.max_retries, settings.retry_backoff_ms, settings.retry_backoff_max_ms)
        max_price_cents = settings.max_order_price_cents

        process, fast = record_processing(decoder, max_price_cents, self._downstream)

        def decide(runs: Sequence[Run], now_ms: int) -> BatchPlan:
            if lookup is not None:
                # The batch's new schema ids are looked up together, for a bounded time.
                ids = (i for run in runs for value in run.values if (i := schema_id_of(value)) is not None)
                lookup.resolve(ids, LOOKUP_WAIT_S)
            return plan_batch(runs, now_ms, process, policy, topics.largest_record, fast=fast)

        outputs = (settings.retry_topic, settings.dlq_topic, settings.stats_topic)
        replicas = ReplicaWatch(
            lambda: edge.in_sync_replicas(outputs),
            topics.min_isr,
            settings.min_isr,
            doing="the consumer waits for its commit",
            report=lambda line: log.warning("⚠ %s", line),
            monotonic=self._clock.monotonic,
        )
        return ConsumerLoop(
            edge,
            committer,
            StatsView(edge.stats, settings.stats_topic, topics.stats_keys, self._clock.monotonic),
            self._reporter,
            decide,
            outputs=OutputTopics(
                settings.retry_topic, settings.dlq_topic, settings.stats_topic, settings.consumer_group
            ),
            batch_size=options.batch_size,
            interval_s=options.commit_interval_s,
            idle_exit_s=options.idle_exit_s,
            clock=self._clock,
            replicas=replicas,
            metrics=self.metrics,
        )


def wire_label(settings: Settings) -> str:
    """What the start line says the consumer reads."""
    registry = f"the schema registry at {settings.registry_address}"
    fmt = settings.avro_wire_format
    if fmt == RAW:
        return f"bare Avro bodies written with {settings.avro_writer_schema}"
    if fmt == CONFLUENT:
        return f"Confluent-framed Avro only, {registry}"
    if fmt == SINGLE_OBJECT:
        return "single-object Avro only"
    if settings.schema_registry_url:
        return f"single-object or Confluent-framed Avro, {registry}"
    return "single-object Avro, no schema registry"


def simulated_outage(rng: Any, rate: float) -> Downstream | None:
    """A downstream call that times out with probability `rate` (for `--failure-rate`); None when it never fails."""
    if rate <= 0:
        return None

    def call(_order: ValidOrder) -> None:
        if rng.random() < rate:
            raise TimeoutError("inventory service timed out")

    return call


def _set_up_topics(settings: Settings, edge: KafkaEdge) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """The start-up checks through the edge's admin client: permissions first, then the topics.

    Missing topics are created where allowed; each topic's partition count and
    configuration come back (those just created as they were asked for).

    Raises:
        ConfigError: a permission, topic or topic setting the consumer needs is missing.
    """
    require(settings, "consumer", edge.permissions)  # first: a topic it may not use looks absent
    counts = edge.partition_counts()
    missing = missing_topics(settings, counts)
    if missing and not settings.create_topics:
        raise ConfigError(missing_sentence(missing))
    edge.create_topics(missing)
    counts.update((spec.name, spec.partitions) for spec in missing)
    outputs = (settings.retry_topic, settings.dlq_topic, settings.stats_topic)
    # Topics just created are as asked for (and a cluster may not describe them yet).
    created = {spec.name: dict(spec.config) for spec in missing}
    read = [t for t in (settings.orders_topic, *outputs) if t not in created]
    configs = {**edge.topic_configs(read), **created}
    problems = topic_problems(settings, counts, configs)
    if problems:
        raise ConfigError("; ".join(problems))
    replication = {**edge.replication_factors(), **{s.name: s.replication_factor for s in missing}}
    for warning in weak_topics(settings, replication, configs):
        log.warning("⚠ %s", warning)
    if (partitions := partition_warning(settings, counts)) is not None:
        log.warning("⚠ %s", partitions)
    return counts, configs
