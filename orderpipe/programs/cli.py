"""Command lines of producer.py and consumer.py: flags, settings, signals, exit codes.

Exit codes: 0 success; 1 runtime failure (broker or registry unreachable, records not
delivered); 2 configuration problem (bad flag or setting), as argparse also uses;
3 (consumer) a Kafka call or the shutdown overran its limit and the watchdog ended
the process (orderpipe.kafka.watchdog).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType

from orderpipe.config.settings import ENV_NAMES, WIRE_FORMATS, Settings
from orderpipe.core.dead_letters import DeadLetter, DlqFilter, parse_since
from orderpipe.core.ports import TP
from orderpipe.core.routing import REASONS
from orderpipe.core.status import ConsumerTracker, ProducerTracker
from orderpipe.errors import OrderPipeError
from orderpipe.kafka.clients import FLUSH_TIMEOUT_S, librdkafka_logger
from orderpipe.kafka.stats_tail import read_group_stats
from orderpipe.kafka.watchdog import WATCHDOG, WATCHDOG_GRACE_S, watching
from orderpipe.model.money import RunningAverage
from orderpipe.observe.console import NORMAL, QUIET, VERBOSE, Console
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
from orderpipe.programs.producer_app import ProducerOptions, run_producer
from orderpipe.text import ScrubbedStream, Scrubber

__all__ = ["LoadSettings", "consumer_main", "dlq_main", "producer_main"]

# Builds the settings from flag values keyed by environment variable name (None: not
# given); the entry scripts pass config.load_settings, the one reader of the environment.
LoadSettings = Callable[[Mapping[str, str | None]], Settings]

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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def _within(
    kind: type[int] | type[float], minimum: float, maximum: float, strict: bool = False
) -> Callable[[str], float]:
    """An argparse type for finite numbers from minimum (exclusive when strict) to maximum."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
            ok = math.isfinite(value) and (value > minimum if strict else value >= minimum) and value <= maximum
        except (ValueError, OverflowError):
            ok = False
        if not ok:
            noun = "whole number" if kind is int else "number"
            low = f"more than {minimum:g}" if strict else f"from {minimum:g}"
            raise argparse.ArgumentTypeError(f"expected a {noun} {low} to {maximum:g}, got {text[:50]!r}")
        return value

    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    _connection(parser)
    parser.add_argument(
        "--metrics-port",
        metavar="PORT",
        help="serve Prometheus /metrics and /healthz on PORT or HOST:PORT, 0 = any free port "
        "(METRICS_PORT; default: off)",
    )
    parser.add_argument(
        "--wire-format",
        metavar="F",
        help=f"Avro wire format: {', '.join(WIRE_FORMATS[:-1])} or {WIRE_FORMATS[-1]} (AVRO_WIRE_FORMAT, default auto)",
    )
    parser.add_argument(
        "--writer-schema",
        metavar="FILE",
        help="with --wire-format raw: the Avro schema file bare bodies are written with (AVRO_WRITER_SCHEMA)",
    )
    parser.add_argument("--seed", type=int, help="seed for reproducible runs")
    _plain(parser)
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("--quiet", action="store_true", help="periodic summaries only")
    volume.add_argument("--verbose", action="store_true", help="every line, plus Kafka client diagnostics")


def _plain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain lines on a terminal too: no live redraws, no colour (as NO_COLOR=1 or TERM=dumb; "
        "piped output is always plain)",
    )


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka brokers (KAFKA_BOOTSTRAP_SERVERS, default localhost:9092)",
    )
    parser.add_argument(
        "--schema-registry-url",
        metavar="URL",
        help="schema registry, e.g. http://localhost:8081/apis/ccompat/v7 (SCHEMA_REGISTRY_URL; empty: no registry)",
    )


def _producer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="producer.py", description="Publish random orders, Avro-encoded, to the orders topic."
    )
    parser.add_argument(
        "--count", type=_within(int, 0, MAX_COUNT), metavar="N", help="stop after N orders (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--rate",
        type=_within(float, 0, MAX_RATE),
        default=2.0,
        metavar="R",
        help="orders per second (default 2; 0 = as fast as possible)",
    )
    parser.add_argument(
        "--invalid-rate", type=_fraction, default=0.0, metavar="F", help="fraction of orders made invalid on purpose"
    )
    parser.add_argument(
        "--poison-rate",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="fraction of records that are not decodable at all",
    )
    parser.add_argument(
        "--schema-version",
        type=_within(int, 1, 1000),
        metavar="N",
        help="write version N of the order schema (schemas/order-vN.avsc; default: the newest, order.avsc)",
    )
    _common(parser)
    return parser


def _consumer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer.py",
        description="Consume orders: validate, keep a running average, retry transient failures, dead-letter the rest.",
    )
    parser.add_argument(
        "--failure-rate",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="probability that processing an order fails transiently",
    )
    parser.add_argument(
        "--idle-exit",
        type=_within(float, 0, MAX_IDLE_EXIT_S, strict=True),
        metavar="SECONDS",
        help="exit once nothing arrived and nothing was due for this long",
    )
    parser.add_argument("--group", metavar="G", help="consumer group (CONSUMER_GROUP, default order-pipeline)")
    parser.add_argument(
        "--batch-size",
        type=_within(int, 1, MAX_BATCH_SIZE),
        default=ConsumerOptions.batch_size,
        metavar="N",
        help=f"most records handled per batch, and so per transaction (default {ConsumerOptions.batch_size})",
    )
    parser.add_argument(
        "--commit-interval-ms",
        type=_within(int, 1, MAX_COMMIT_INTERVAL_MS),
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
    _common(parser)
    return parser


def _verbosity(args: argparse.Namespace) -> int:
    return QUIET if args.quiet else VERBOSE if args.verbose else NORMAL


@contextmanager
def _console(verbosity: int, plain: bool) -> Iterator[Console | LiveConsole]:
    """The console: a LiveConsole when stdout is a terminal that takes live redraws, else the plain one.

    The live view is closed on every way out, leaving its last drawing above whatever follows.
    """
    screen = terminal_screen(sys.stdout, plain)
    if screen is None:
        yield Console(verbosity)
        return
    console = LiveConsole(verbosity, screen, err_is_terminal=sys.stderr.isatty())
    try:
        yield console
    finally:
        console.close()


# The collector runs once this many objects were made and not freed (Python's default: 700).
GC_YOUNG_THRESHOLD = 50_000


@contextmanager
def _gc_tuned_for_throughput() -> Iterator[None]:
    """Fewer collector passes over the objects each record makes, while a program runs.

    A record makes several short-lived objects, and Python's default collects the young
    ones every 700 allocations, each pass also visiting what the start-up made. The
    start-up's objects are set aside (`gc.freeze`), and the young generation is
    collected every GC_YOUNG_THRESHOLD allocations: still every batch or two, so
    garbage with cycles (a failed record's exception and traceback) stays bounded.
    Both are undone at the end (the programs also run inside the tests' process).
    """
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _setup_output(verbosity: int) -> None:
    """Console lines go to stdout, line by line; diagnostics go through `logging` to stderr.

    Warnings are always shown; --verbose shows the package's debug lines and
    librdkafka's own log (the clients' `logger` setting routes it into logging).
    """
    # Line by line even into a pipe, so a person or a test sees events as they happen.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    verbose = verbosity >= VERBOSE
    logging.getLogger("orderpipe").setLevel(logging.DEBUG if verbose else logging.WARNING)
    librdkafka_logger().setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C or SIGTERM; a second Ctrl-C exits at once.

    The previous handlers come back when the block ends, so `main(argv)` can be
    called from tests and other programs.
    """
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _settings_overrides(args: argparse.Namespace) -> dict[str, str | None]:
    overrides = {
        "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap_servers,
        "SCHEMA_REGISTRY_URL": args.schema_registry_url,
        "CONSUMER_GROUP": getattr(args, "group", None),
        "METRICS_PORT": getattr(args, "metrics_port", None),
        "AVRO_WIRE_FORMAT": getattr(args, "wire_format", None),
        "AVRO_WRITER_SCHEMA": getattr(args, "writer_schema", None),
    }
    assert set(overrides) <= set(ENV_NAMES)
    return overrides


@contextmanager
def scrubbed_output(settings: Settings) -> Iterator[None]:
    """stdout and stderr take out every secret the settings hold until the block ends, whoever writes there.

    Print an unexpected exception's traceback inside the block (`_run` does), or
    Python prints it unscrubbed once the streams are back.
    """
    scrub = Scrubber(settings.secrets())
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(sys.stdout, scrub), ScrubbedStream(sys.stderr, scrub)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace, load_settings: LoadSettings, body: Callable[[Settings], int]) -> int:
    """Loads the settings and runs `body` with them, output scrubbed; an error becomes its sentence and exit code."""
    try:
        settings = load_settings(_settings_overrides(args))
    except OrderPipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    with scrubbed_output(settings):
        try:
            return body(settings)
        except OrderPipeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("Interrupted twice: exiting without a clean shutdown.", file=sys.stderr)
            return 130
        except Exception:  # a bug: its traceback, scrubbed, and Python's exit code for it
            traceback.print_exc()
            return 1


def producer_main(load_settings: LoadSettings, argv: Sequence[str] | None = None) -> int:
    """Entry point of producer.py; returns the process exit code."""
    args = _producer_parser().parse_args(argv)

    def main(settings: Settings) -> int:
        options = ProducerOptions(
            args.count, args.rate, args.invalid_rate, args.poison_rate, args.seed, args.schema_version
        )
        verbosity = _verbosity(args)
        _setup_output(verbosity)
        with _stop_on_signals() as stop, _gc_tuned_for_throughput(), _console(verbosity, args.plain) as console:
            view = None
            if isinstance(console, LiveConsole):
                view = LiveView(console, ProducerTracker(args.count), producer_progress)
            summary = run_producer(settings, options, console, stop, view)
        return 0 if summary.failed == 0 else 1

    return _run(args, load_settings, main)


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
        verbosity = _verbosity(args)
        _setup_output(verbosity)
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
            _stop_on_signals() as stop,
            watching(WATCHDOG, shutdown_limit_s),
            _gc_tuned_for_throughput(),
            _console(verbosity, args.plain) as console,
        ):
            view = None
            if isinstance(console, LiveConsole):
                tracker = ConsumerTracker(settings.retry_topic, settings.consumer_group, wire_label(settings))
                view = LiveView(console, tracker, consumer_panel)
            OrderConsumer(settings, options, console, downstream, view=view).run(stop)
        return 0

    return _run(args, load_settings, main)


def _dlq_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlq.py", description="Inspect the dead-letter topic and replay it.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="one line per dead letter, then a count by reason")
    _dlq_filters(listing)
    listing.add_argument(
        "--limit", type=_within(int, 1, MAX_COUNT), metavar="N", help="at most N lines (the count covers all)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    _plain(listing)
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
        type=_within(int, 1, MAX_BATCH_SIZE),
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
    _connection(command)


def dlq_main(load_settings: LoadSettings, argv: Sequence[str] | None = None) -> int:
    """Entry point of dlq.py; returns the process exit code."""
    args = _dlq_parser().parse_args(argv)

    def main(settings: Settings) -> int:
        _setup_output(VERBOSE if args.verbose else NORMAL)
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

            def show(letter: DeadLetter) -> None:
                print(json.dumps(letter.as_json()) if args.json else letter.line(topic))

            print(list_dead_letters(settings, wanted, limit=args.limit, show=show))
            return 0

        def replayed(letter: DeadLetter) -> None:
            if not args.quiet:
                print(f"{'would replay' if args.dry_run else '↻ replayed'} {letter.line(topic)}")

        tally = replay_dead_letters(settings, wanted, dry_run=args.dry_run, show=replayed, batch_size=args.batch_size)
        for line in tally.lines(args.dry_run):
            print(line)
        return 0

    return _run(args, load_settings, main)
