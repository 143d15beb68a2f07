"""Command lines of producer.py, consumer.py and dlq.py: each one's flags, and what it runs with them.

The flags they share are in orderpipe/programs/flags.py; what every program does
around its work (settings, output, signals, exit codes) in orderpipe/programs/runtime.py.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence

from orderpipe.config.settings import Settings
from orderpipe.core.dead_letters import DlqEntry, DlqFilter, parse_since
from orderpipe.core.ports import TP
from orderpipe.core.routing import REASONS
from orderpipe.core.status import ConsumerTracker, ProducerTracker
from orderpipe.kafka.clients import FLUSH_TIMEOUT_S
from orderpipe.kafka.stats_tail import read_group_stats
from orderpipe.kafka.watchdog import WATCHDOG, WATCHDOG_GRACE_S, watching
from orderpipe.model.money import RunningAverage
from orderpipe.observe.console import NORMAL, VERBOSE
from orderpipe.observe.terminal import (
    DeadLetterTable,
    LiveConsole,
    LiveView,
    consumer_panel,
    producer_progress,
    terminal_screen,
)
from orderpipe.programs.consumer_app import (
    AT_LEAST_ONCE,
    DEFAULT_COMMIT_INTERVAL_MS,
    EXACTLY_ONCE,
    ConsumerOptions,
    OrderConsumer,
    simulated_outage,
    wire_label,
)
from orderpipe.programs.dlq_app import REPLAY_BATCH, list_dead_letters, replay_dead_letters
from orderpipe.programs.flags import add_common_flags, add_connection_flags, add_plain_flag, fraction, within
from orderpipe.programs.producer_app import ProducerOptions, run_producer
from orderpipe.programs.runtime import (
    LoadSettings,
    gc_tuned_for_throughput,
    program_console,
    run_program,
    setup_output,
    stop_on_signals,
    verbosity_of,
)

__all__ = ["consumer_main", "dlq_main", "producer_main"]

# The largest values the flags take: beyond them a run is a mistake, not a load test.
MAX_COUNT = 10**12
MAX_RATE = 1_000_000.0
MAX_IDLE_EXIT_S = 86_400.0
# A batch is one transaction, held in memory whole; librdkafka consumes at most 1e6 at once.
MAX_BATCH_SIZE = 100_000
# Longer than the transaction timeout, a batch would outlive the transaction that commits it.
MAX_COMMIT_INTERVAL_MS = 10_000
# After a stop signal, an at-least-once consumer may still flush for FLUSH_TIMEOUT_S.
AT_LEAST_ONCE_SHUTDOWN_S = FLUSH_TIMEOUT_S + WATCHDOG_GRACE_S


def _producer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="producer.py", description="Publish random orders, Avro-encoded, to the orders topic."
    )
    parser.add_argument(
        "--count", type=within(int, 0, MAX_COUNT), metavar="N", help="stop after N orders (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--rate",
        type=within(float, 0, MAX_RATE),
        default=2.0,
        metavar="R",
        help="orders per second (default 2; 0 = as fast as possible)",
    )
    parser.add_argument(
        "--invalid-rate", type=fraction, default=0.0, metavar="F", help="fraction of orders made invalid on purpose"
    )
    parser.add_argument(
        "--poison-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of records that are not decodable at all",
    )
    parser.add_argument(
        "--schema-version",
        type=within(int, 1, 1000),
        metavar="N",
        help="write version N of the order schema (schemas/order-vN.avsc; default: the newest, order.avsc)",
    )
    add_common_flags(parser)
    return parser


def _consumer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer.py",
        description="Consume orders: validate, keep a running average, retry transient failures, dead-letter the rest.",
    )
    parser.add_argument(
        "--failure-rate",
        type=fraction,
        default=0.0,
        metavar="F",
        help="probability that processing an order fails transiently",
    )
    parser.add_argument(
        "--idle-exit",
        type=within(float, 0, MAX_IDLE_EXIT_S, strict=True),
        metavar="SECONDS",
        help="exit once nothing arrived and nothing was due for this long",
    )
    parser.add_argument("--group", metavar="G", help="consumer group (CONSUMER_GROUP, default order-pipeline)")
    parser.add_argument(
        "--batch-size",
        type=within(int, 1, MAX_BATCH_SIZE),
        default=ConsumerOptions.batch_size,
        metavar="N",
        help=f"most records handled per batch, and so per transaction (default {ConsumerOptions.batch_size})",
    )
    parser.add_argument(
        "--commit-interval-ms",
        type=within(int, 1, MAX_COMMIT_INTERVAL_MS),
        metavar="MS",
        help="longest a batch waits to fill before it is committed: the transaction interval "
        f"(default {DEFAULT_COMMIT_INTERVAL_MS[EXACTLY_ONCE]} exactly-once, "
        f"{DEFAULT_COMMIT_INTERVAL_MS[AT_LEAST_ONCE]} at-least-once)",
    )
    parser.add_argument(
        "--delivery",
        choices=(EXACTLY_ONCE, AT_LEAST_ONCE),
        default=EXACTLY_ONCE,
        help="exactly-once (default): each batch's records, stats and offsets in one transaction; "
        "at-least-once: produce, then commit (for comparison)",
    )
    parser.add_argument(
        "--report-latency",
        action="store_true",
        help="at exit, print the p50/p99/p99.9 latency from record timestamp to commit (for bench/)",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print the group-wide count, sum and running average from the stats topic and exit",
    )
    add_common_flags(parser)
    return parser


def producer_main(load_settings: LoadSettings, argv: Sequence[str] | None = None) -> int:
    """Entry point of producer.py; returns the process exit code."""
    args = _producer_parser().parse_args(argv)

    def main(settings: Settings) -> int:
        options = ProducerOptions(
            args.count, args.rate, args.invalid_rate, args.poison_rate, args.seed, args.schema_version
        )
        verbosity = verbosity_of(args)
        setup_output(verbosity)
        with stop_on_signals() as stop, gc_tuned_for_throughput(), program_console(verbosity, args.plain) as console:
            view = None
            if isinstance(console, LiveConsole):
                view = LiveView(console, ProducerTracker(args.count), producer_progress)
            summary = run_producer(settings, options, console, stop, view)
        return 0 if summary.failed == 0 else 1

    return run_program(args, load_settings, main)


def _print_stats(topic: str, states: dict[TP, RunningAverage], verbosity: int) -> None:
    """The stats view: one line for scripts and people, and one per partition with --verbose."""
    total = RunningAverage()
    for (input_topic, partition), state in states.items():
        total += state
        if verbosity >= VERBOSE:
            counted = f"count {state.count}, sum_cents {state.sum_cents}, average {state.describe()}"
            print(f"{input_topic}-{partition}: {counted}")
    print(f"{topic}: count {total.count}, sum_cents {total.sum_cents}, running average {total.describe()}")


def consumer_main(load_settings: LoadSettings, argv: Sequence[str] | None = None) -> int:
    """Entry point of consumer.py; returns the process exit code."""
    args = _consumer_parser().parse_args(argv)

    def main(settings: Settings) -> int:
        verbosity = verbosity_of(args)
        setup_output(verbosity)
        if args.stats:
            _print_stats(settings.stats_topic, read_group_stats(settings), verbosity)
            return 0
        options = ConsumerOptions(
            idle_exit_s=args.idle_exit,
            batch_size=args.batch_size,
            commit_interval_ms=args.commit_interval_ms,
            delivery=args.delivery,
            report_latency=args.report_latency,
        )
        downstream = simulated_outage(random.Random(args.seed), args.failure_rate)
        # From a stop signal on, the consumer has its transaction timeout to finish and close
        # (at-least-once: as long as its flush may take).
        shutdown_limit_s = (
            options.transaction_timeout_ms / 1000 if options.delivery == EXACTLY_ONCE else AT_LEAST_ONCE_SHUTDOWN_S
        )
        with (
            stop_on_signals() as stop,
            watching(WATCHDOG, shutdown_limit_s),
            gc_tuned_for_throughput(),
            program_console(verbosity, args.plain) as console,
        ):
            view = None
            if isinstance(console, LiveConsole):
                tracker = ConsumerTracker(settings.retry_topic, settings.consumer_group, wire_label(settings))
                view = LiveView(console, tracker, consumer_panel)
            OrderConsumer(settings, options, console, downstream, view=view).run(stop)
        return 0

    return run_program(args, load_settings, main)


def _dlq_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlq.py", description="Inspect the dead-letter topic and replay it.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="one line per dead letter, then a count by reason")
    _dlq_filters(listing)
    listing.add_argument(
        "--limit", type=within(int, 1, MAX_COUNT), metavar="N", help="at most N lines (the count covers all)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    add_plain_flag(listing)
    replay = commands.add_parser(
        "replay",
        help="put the matching dead letters back on the orders topic, exactly once",
        description="Re-publish matching dead letters to the orders topic with their original key and value, "
        "exactly once: a record replayed by any earlier run (whatever its filter) is skipped.",
    )
    _dlq_filters(replay)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; write nothing")
    replay.add_argument(
        "--batch-size",
        type=within(int, 1, MAX_BATCH_SIZE),
        default=REPLAY_BATCH,
        metavar="N",
        help=f"records replayed per transaction (default {REPLAY_BATCH})",
    )
    replay.add_argument("--quiet", action="store_true", help="only the closing lines, not one line per record")
    return parser


def _dlq_filters(command: argparse.ArgumentParser) -> None:
    """The filters, group and connection flags both dlq.py commands take."""
    command.add_argument("--reason", choices=REASONS, help="only dead letters with this reason")
    command.add_argument("--order-id", metavar="ID", help="only dead letters of this order")
    command.add_argument(
        "--since", metavar="TIME", help="only those dead-lettered since: 90s, 30m, 2h, 7d, or an ISO 8601 time"
    )
    command.add_argument("--group", metavar="G", help="consumer group (CONSUMER_GROUP), which names the reader")
    command.add_argument("--verbose", action="store_true", help="Kafka client diagnostics too")
    command.set_defaults(quiet=False)
    add_connection_flags(command)


def dlq_main(load_settings: LoadSettings, argv: Sequence[str] | None = None) -> int:
    """Entry point of dlq.py; returns the process exit code."""
    args = _dlq_parser().parse_args(argv)

    def main(settings: Settings) -> int:
        setup_output(VERBOSE if args.verbose else NORMAL)
        since_ms = parse_since(args.since, int(time.time() * 1000)) if args.since else None
        wanted = DlqFilter(args.reason, args.order_id, since_ms)
        topic = settings.dlq_topic
        if args.command == "list":
            screen = None if args.json else terminal_screen(sys.stdout, args.plain)
            if screen is not None:
                table = DeadLetterTable(screen, topic)
                counted = list_dead_letters(settings, wanted, limit=args.limit, show=table.add)
                table.close()
                print(counted)
                return 0

            def show(letter: DlqEntry) -> None:
                print(json.dumps(letter.as_json()) if args.json else letter.line(topic))

            print(list_dead_letters(settings, wanted, limit=args.limit, show=show))
            return 0

        def replayed(letter: DlqEntry) -> None:
            if not args.quiet:
                print(f"{'would replay' if args.dry_run else '↻ replayed'} {letter.line(topic)}")

        tally = replay_dead_letters(settings, wanted, dry_run=args.dry_run, show=replayed, batch_size=args.batch_size)
        for line in tally.lines(args.dry_run):
            print(line)
        return 0

    return run_program(args, load_settings, main)
