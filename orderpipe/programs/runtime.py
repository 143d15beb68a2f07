"""What every program does around its work: settings loaded, output set up and scrubbed, signals, exit codes.

Exit codes: 0 success; 1 runtime failure (broker or registry unreachable, records not
delivered); 2 configuration problem (bad flag or setting), as argparse also uses;
3 (consumer) a Kafka call or the shutdown overran its limit and the watchdog ended
the process (orderpipe.kafka.watchdog); 130 a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType

from orderpipe.config.settings import ENV_NAMES, Settings
from orderpipe.errors import OrderPipeError
from orderpipe.kafka.clients import librdkafka_logger
from orderpipe.observe.console import NORMAL, QUIET, VERBOSE, Console
from orderpipe.observe.terminal import LiveConsole, terminal_screen
from orderpipe.text import ScrubbedStream, Scrubber

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "LoadSettings",
    "gc_tuned_for_throughput",
    "program_console",
    "run_program",
    "scrubbed_output",
    "settings_overrides",
    "setup_output",
    "stop_on_signals",
    "verbosity_of",
]


# Builds the settings from flag values keyed by environment variable name (None: not
# given); the entry scripts pass config.load_settings, the one reader of the environment.
LoadSettings = Callable[[Mapping[str, str | None]], Settings]


def verbosity_of(args: argparse.Namespace) -> int:
    return QUIET if args.quiet else VERBOSE if args.verbose else NORMAL


@contextmanager
def program_console(verbosity: int, plain: bool) -> Iterator[Console | LiveConsole]:
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
def gc_tuned_for_throughput() -> Iterator[None]:
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


def setup_output(verbosity: int) -> None:
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
def stop_on_signals() -> Iterator[threading.Event]:
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


def settings_overrides(args: argparse.Namespace) -> dict[str, str | None]:
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

    Print an unexpected exception's traceback inside the block (`run_program` does), or
    Python prints it unscrubbed once the streams are back.
    """
    scrub = Scrubber(settings.secrets())
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbedStream(sys.stdout, scrub), ScrubbedStream(sys.stderr, scrub)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def run_program(args: argparse.Namespace, load_settings: LoadSettings, body: Callable[[Settings], int]) -> int:
    """Loads the settings and runs `body` with them, output scrubbed; an error becomes its sentence and exit code."""
    try:
        settings = load_settings(settings_overrides(args))
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
