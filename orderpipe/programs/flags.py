"""The command-line flags the programs share, and argparse types that name the range a number must be in."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from orderpipe.config.settings import WIRE_FORMATS

__all__ = ["add_common_flags", "add_connection_flags", "add_plain_flag", "fraction", "within"]


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def within(
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


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    add_connection_flags(parser)
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
    add_plain_flag(parser)
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("--quiet", action="store_true", help="periodic summaries only")
    volume.add_argument("--verbose", action="store_true", help="every line, plus Kafka client diagnostics")


def add_plain_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain lines on a terminal too: no live redraws, no colour (as NO_COLOR=1 or TERM=dumb; "
        "piped output is always plain)",
    )


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
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
