"""`dlq.py list` and `dlq.py replay`: the dead letters on the DLQ topic, read once to its end, filtered.

`list` prints them. `replay` puts them back on `orders` exactly once (orderpipe.core.replay
explains the ledger): with its own transactional id, `<consumer group>.dlq-replay`,
it first fences any earlier replay of the group still running and aborts what that
one left open, then reads the ledger, then replays the matching records that are not
in it, REPLAY_BATCH to a transaction, each with its ledger entry (the transactional
producer is orderpipe.kafka.replay_writer's).

Values are decoded to find each order's id: single-object Avro directly, Confluent
framing through the schema registry when one is configured (each new schema id is
looked up once, for at most LOOKUP_WAIT_S). A value that does not decode leaves the
id unknown; the record is listed (and replayed) all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from orderpipe.config.settings import Settings
from orderpipe.core.dead_letters import DlqEntry, DlqFilter, dead_letter, summary_line
from orderpipe.core.replay import Ledger, Replayed, ledger_topic, replayed_record
from orderpipe.core.topics import (
    PRODUCER_MESSAGE_MAX_BYTES,
    compaction_problem,
    ledger_spec,
    missing_sentence,
    missing_topics,
)
from orderpipe.errors import ConfigError
from orderpipe.kafka.admin import create_topics, partition_counts, require_grants, topic_configs, wait_for_leaders
from orderpipe.kafka.clients import connect_admin
from orderpipe.kafka.reader import read_to_end
from orderpipe.kafka.registry import RegistryLookup, connect_registry
from orderpipe.kafka.replay_writer import CALL_TIMEOUT_S, ReplayWriter, replay_writer
from orderpipe.model.order import Order
from orderpipe.model.records import Incoming
from orderpipe.serde.codec import schema_id_of
from orderpipe.serde.wire import order_decoder, raw_reader

__all__ = ["ReplayTally", "list_dead_letters", "replay_dead_letters", "replay_transactional_id"]

LOOKUP_WAIT_S = 5.0
# Records replayed per transaction.
REPLAY_BATCH = 500
# How long a ledger topic just created may take to get its leader.
TOPIC_READY_S = 30.0


def list_dead_letters(
    settings: Settings,
    wanted: DlqFilter,
    *,
    limit: int | None,
    show: Callable[[DlqEntry], None],
) -> str:
    """Shows each matching dead letter (the first `limit`); returns the summary line, which counts them all.

    Raises:
        BrokerUnavailableError, RegistryUnavailableError: named, with how to start one.
        ConfigError: the principal may not read the DLQ topic.
    """
    connect_admin(settings)  # an unreachable broker or a login that cannot succeed, in one sentence
    with ExitStack() as stack:
        decode = _decoder(settings, stack)
        matched: list[DlqEntry] = []
        for record in read_to_end(settings, settings.dlq_topic, "dlq-reader"):
            letter = dead_letter(record, decode)
            if wanted.matches(letter, record.timestamp):
                if limit is None or len(matched) < limit:
                    show(letter)
                matched.append(letter)
        return summary_line(matched)


def _decoder(settings: Settings, stack: ExitStack) -> Callable[[bytes | None], Order]:
    raw = raw_reader(settings)
    if not settings.schema_registry_url:
        return order_decoder(settings, None, raw).decode
    lookup = RegistryLookup(stack.enter_context(connect_registry(settings)))
    stack.callback(lookup.close)
    decoder = order_decoder(settings, lookup, raw)

    def decode(value: bytes | None) -> Order:
        schema_id = schema_id_of(value)
        if schema_id is not None:
            lookup.resolve([schema_id], LOOKUP_WAIT_S)
        return decoder.decode(value)

    return decode


def replay_transactional_id(settings: Settings) -> str:
    """The replay's transactional id: the ledger's name, so that a replay fences any other of the same DLQ topic.

    One per ledger, not per consumer group: two replays with other groups would
    otherwise both read the same ledger and both replay the same records.
    """
    return ledger_topic(settings.dlq_topic)


@dataclass
class ReplayTally:
    """What a replay did (or, with --dry-run, would do)."""

    replayed: int = 0
    already: int = 0  # matched, but in the ledger: replayed by an earlier run
    truncated: int = 0  # matched, but the DLQ holds only part of the record: not replayed
    too_large: int = 0  # matched, but larger than a producer may send once its provenance header is added
    ledger_unreadable: int = 0

    def lines(self, dry_run: bool) -> list[str]:
        """The closing lines; the last is `replayed N records` (`would replay N records`)."""
        notes = []
        if self.already:
            notes.append(f"{self.already} matching records were replayed before and are skipped")
        if self.truncated:
            notes.append(
                f"{self.truncated} matching records are skipped because the DLQ holds only part of them "
                "(dlq.truncated); their whole records are where their original.* headers point"
            )
        if self.too_large:
            notes.append(
                f"{self.too_large} matching records are skipped because with the dlq.replayed-from header they "
                f"would be larger than the {PRODUCER_MESSAGE_MAX_BYTES} bytes a producer may send"
            )
        if self.ledger_unreadable:
            notes.append(f"{self.ledger_unreadable} ledger entries were unreadable; their records count as replayed")
        verb = "would replay" if dry_run else "replayed"
        return [*notes, f"{verb} {self.replayed} records"]


def replay_dead_letters(
    settings: Settings,
    wanted: DlqFilter,
    *,
    dry_run: bool,
    show: Callable[[DlqEntry], None],
    batch_size: int = REPLAY_BATCH,
) -> ReplayTally:
    """Puts the matching dead letters not replayed before back on `orders`, exactly once.

    `show` is called for each record once its transaction committed (at once with `dry_run`,
    which writes nothing, creates nothing and fences nothing).

    Raises:
        BrokerUnavailableError, RegistryUnavailableError: named, with how to start one.
        ConfigError: a topic is missing, or the principal lacks a permission (named).
        FatalKafkaError: a newer replay of the same DLQ topic fenced this one.
    """
    admin = connect_admin(settings)
    if not dry_run:
        require_grants(admin, settings, "dlq")  # READ on an empty ledger, say, would be missed until it has entries
    counts = partition_counts(admin)
    orders = settings.orders_topic
    if orders not in counts:
        raise ConfigError(missing_sentence([spec for spec in missing_topics(settings, counts) if spec.name == orders]))
    ledger_name = ledger_topic(settings.dlq_topic)
    tally = ReplayTally()
    with ExitStack() as stack:
        writer, ledger = _open_ledger(admin, settings, ledger_name, counts, dry_run=dry_run, stack=stack)
        tally.ledger_unreadable = ledger.unreadable
        decode = _decoder(settings, stack)
        batch: list[tuple[Incoming, Replayed, DlqEntry]] = []

        def flush() -> None:
            if writer is not None:
                writer.write([(record, again) for record, again, _ in batch])
            for _, _, letter in batch:
                show(letter)
            tally.replayed += len(batch)
            batch.clear()

        for record in read_to_end(settings, settings.dlq_topic, "dlq-reader"):
            letter = dead_letter(record, decode)
            if not wanted.matches(letter, record.timestamp):
                continue
            if ledger.holds(record):
                tally.already += 1
            elif letter.truncated is not None:
                tally.truncated += 1
            elif (again := replayed_record(record, counts[orders])).size > PRODUCER_MESSAGE_MAX_BYTES:
                tally.too_large += 1  # librdkafka would refuse it, and with it every replay after this one
            else:
                batch.append((record, again, letter))
                if len(batch) >= batch_size:
                    flush()
        flush()
    return tally


def _open_ledger(
    admin: AdminClient, settings: Settings, name: str, counts: dict[str, int], *, dry_run: bool, stack: ExitStack
) -> tuple[ReplayWriter | None, Ledger]:
    """The ledger of earlier replays, read to its end, and (unless `dry_run`) the writer that appends to it.

    Without `dry_run` the ledger topic is created if missing, else checked first, and
    the writer is opened on `stack` before the ledger is read.
    """
    writer = None
    if not dry_run:
        if name not in counts:
            _create_ledger(admin, settings, name)
        else:
            _check_ledger(admin, name)
        writer = stack.enter_context(replay_writer(settings, name, replay_transactional_id(settings)))
    ledger = Ledger()
    # Read only now: the writer's start aborted whatever an earlier run left open.
    if not dry_run or name in counts:
        for entry in read_to_end(settings, name, "dlq-ledger-reader"):
            ledger.read(entry.key, entry.value)
    return writer, ledger


def _check_ledger(admin: AdminClient, name: str) -> None:
    """An existing ledger must be compacted: with deletion by age its entries expire, and their records replay again.

    A principal that may not describe the topic's configuration gets a warning and goes on.
    """
    config = topic_configs(admin, [name]).get(name, {})
    problem = compaction_problem(name, config, "its entries expire and their records are replayed again")
    if problem is not None:
        raise ConfigError(problem)


def _create_ledger(admin: AdminClient, settings: Settings, name: str) -> None:
    """Creates the ledger topic (where CREATE_TOPICS allows) and waits until it has a leader."""
    spec = ledger_spec(settings, name)
    if not settings.create_topics:
        raise ConfigError(missing_sentence([spec]))
    create_topics(admin, [spec])
    wait_for_leaders(admin, name, TOPIC_READY_S, CALL_TIMEOUT_S)
