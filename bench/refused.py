"""Deciding a poll of the records the fast lane refuses, this checkout beside another commit, in one process each.

    python -m bench.refused [--base REF] [--count N] [--passes P]

The consumer's work per poll, without the broker: real confluent-kafka `Message`s
(made before timing, in polls of 500) turned into records and decided, as
`KafkaEdge.poll` and the consumer's `decide` do it (single-object wire format, no
downstream call). One line per kind of record, in microseconds per record: the valid
orders the fast lane takes, and the hostile kinds it refuses (poison values, oversize
values, Confluent-framed values with no registry, records with headers, forged retry
headers). The bare binding's own per-record work on the same messages (`error()` and
`value()`) is timed beside them.

With --base, REF is checked out under .cache/bench/ (as `bench.compare` does). Each
checkout runs in a process of its own, pinned to the same core, and they take turns
pass by pass: this machine's speed drifts by half within a minute, so each figure is
the fastest pass, and head / base is the median of the ratios of the passes side by
side (below 1.00: faster).
Header names that are not UTF-8 cannot be made without a broker (confluent-kafka
reads them from librdkafka's message only), so that kind is left out here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Message

ROOT = Path(__file__).resolve().parent.parent
POLL = 500
RETRY_TOPIC = "orders-retry"
KINDS = (
    "valid orders",
    "poison values",
    "Confluent framing, no registry",
    "oversize values (2 MiB)",
    "valid, a header on every second",
    "valid, a header on each",
    "retries with forged headers",
)


def messages(kind: str, count: int, rng: random.Random) -> list[Any]:
    """`count` consumed messages of a kind, on partition 0 of their topic, in offset order."""
    schema = _module("orderpipe.serde.schemas").load_order_schema()
    factory = _module("orderpipe.model.generator").OrderFactory(rng, "BENCH")
    topic, made = "orders", []
    # A few values shared by all the messages: a message made here holds its value, not a copy.
    oversize = [rng.randbytes(2 * 1024 * 1024) for _ in range(4)] if kind.startswith("oversize") else []
    for offset in range(count):
        headers: list[tuple[str, str | bytes | None]] | None = None
        order = factory.make(lambda order: b"").order
        if kind == "poison values":
            value = rng.randbytes(rng.randint(20, 200))
        elif kind == "Confluent framing, no registry":
            value = b"\x00\x00\x00\x00\x07" + schema.encode_body(order)
        elif kind.startswith("oversize"):
            value = oversize[offset % len(oversize)]
        else:
            value = schema.encode_single_object(order)
        if kind == "valid, a header on each" or (kind == "valid, a header on every second" and offset % 2):
            headers = [("trace", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
        if kind == "retries with forged headers":
            topic = RETRY_TOPIC
            headers = [("retry.attempt", b"1"), ("retry.not-before", b"99999999999999"), ("original.topic", b"x")]
        made.append(
            Message(
                topic=topic,
                partition=0,
                offset=offset,
                key=order.order_id.encode(),
                value=value,
                headers=headers,
                timestamp=(1, 1_700_000_000_000 + offset),
            )
        )
    return made


def _module(name: str) -> Any:
    """A module of the orderpipe on the path: the checkout being timed (see `worker`)."""
    return importlib.import_module(name)


def decider() -> Any:
    """The consumer's per-poll work, as the checkout on the path has it."""
    decoder = _module("orderpipe.serde.codec").OrderDecoder(
        _module("orderpipe.serde.schemas").load_order_schema(),
        None,
        wire_format=_module("orderpipe.config.settings").SINGLE_OBJECT,
    )
    max_cents = 1_000_000_00
    intake = _module("orderpipe.core.intake")
    policy = _module("orderpipe.core.routing").RetryPolicy()
    edge = _module("orderpipe.kafka.messages")
    to_records = getattr(edge, "incoming_runs", None) or edge.incoming_records
    try:
        plan_batch = _module("orderpipe.core.batch_plan").plan_batch
    except ImportError:  # a commit from before the planning had a module of its own
        plan_batch = _module("orderpipe.core.routing").plan_batch
    if hasattr(intake, "record_processing"):
        process, fast = intake.record_processing(decoder, max_cents)
    else:  # a commit from before it: as its consumer did
        fast, validate = intake.Intake(decoder, max_cents), _module("orderpipe.model.order").validate

        def process(record: Any) -> Any:
            return fast(record.value) or validate(decoder.decode(record.value), max_cents)

    def on_error(error: Any, topic: Any) -> None:
        raise RuntimeError(error)

    def decide(poll: list[Any], now_ms: int) -> Any:
        return plan_batch(to_records(poll, RETRY_TOPIC, on_error), now_ms, process, policy, 1_048_588, fast=fast)

    return decide


def bare(poll: list[Any], now_ms: int) -> None:
    for message in poll:
        message.error()
        message.value()


def one_pass(work: Any, polls: list[list[Any]], records: int) -> float:
    """Microseconds per record of one pass over the polls."""
    now_ms = 1_700_000_000_000 + 10**9
    started = time.perf_counter()
    for poll in polls:
        work(poll, now_ms)
    return (time.perf_counter() - started) / records * 1e6


def worker(tree: str, count: int, seed: int) -> None:
    """In a process of its own, for the code in `tree`: times one pass for each line read ("KIND" or "bare KIND")."""
    sys.path.insert(0, tree)
    decide = decider()
    polls: dict[str, tuple[list[list[Any]], int]] = {}
    for kind in KINDS:
        made = messages(kind, count, random.Random(seed))
        polls[kind] = ([made[i : i + POLL] for i in range(0, count, POLL)], count)
    # As the consumer runs: the messages are set aside with start-up's objects.
    with _module("orderpipe.programs.runtime").gc_tuned_for_throughput():
        print("ready", flush=True)
        for line in sys.stdin:
            kind = line.strip()
            work = bare if kind.startswith("bare ") else decide
            print(one_pass(work, *polls[kind.removeprefix("bare ")]), flush=True)


class Worker:
    """A worker process for one checkout, pinned to one core (the same for every worker)."""

    def __init__(self, tree: Path, count: int, seed: int) -> None:
        argv = [sys.executable, __file__, "--worker", str(tree), "--count", str(count), "--seed", str(seed)]
        if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
            argv = ["taskset", "-c", str(max(os.sched_getaffinity(0))), *argv]
        environ = {**os.environ, "PYTHONPATH": ""}
        self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environ)
        if self._read() != "ready":
            sys.exit(f"the worker for {tree} did not start")

    def _read(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def time(self, kind: str) -> float:
        assert self._process.stdin is not None
        self._process.stdin.write(kind + "\n")
        self._process.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refused", description=__doc__.splitlines()[0])
    parser.add_argument("--base", metavar="REF", help="also time this commit's code, taking turns")
    parser.add_argument("--count", type=int, default=20_000, help="records per kind (default 20,000)")
    parser.add_argument("--passes", type=int, default=15, help="passes per kind and checkout (default 15)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.count, args.seed)
        return 0
    trees: dict[str, Path] = {"head": ROOT}
    if args.base:
        sys.path.insert(0, str(ROOT))
        trees = {"base": _module("bench.compare").worktree(args.base), "head": ROOT}
    workers = {label: Worker(tree, args.count, args.seed) for label, tree in trees.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for kind in KINDS:
        for number in range(args.passes):  # the checkouts take turns pass by pass, each going first in turn
            for label, each in sorted(workers.items(), reverse=bool(number % 2)):
                times.setdefault((label, kind), []).append(each.time(kind))
            times.setdefault(("bare", kind), []).append(workers["head"].time("bare " + kind))
    for each in workers.values():
        each.close()
    print(table(args, times))
    return 0


def table(args: argparse.Namespace, times: dict[tuple[str, str], list[float]]) -> str:
    base = f" --base {args.base}" if args.base else ""
    lines = [
        f"Command: python -m bench.refused{base} --count {args.count} --passes {args.passes} --seed {args.seed}",
        f"µs per record to make the records of a poll of {POLL} and decide them: the fastest of {args.passes} "
        "passes (a shared machine only ever slows a pass down). The checkouts take turns pass by pass; head / base "
        "is the median of the ratios of the passes side by side (and the middle half of them).",
        "",
        "| kind | bare binding | "
        + ("base | " if args.base else "")
        + "head | head / bare |"
        + (" head / base |" if args.base else ""),
        "|---|---|---|---|" + ("---|---|" if args.base else ""),
    ]
    for kind in KINDS:
        head, binding = min(times[("head", kind)]), min(times[("bare", kind)])
        row = f"| {kind} | {binding:.2f} | "
        if args.base:
            row += f"{min(times[('base', kind)]):.2f} | "
        row += f"{head:.2f} | {head / binding:.0f} |"
        if args.base:  # each pair of passes side by side, then the median of their ratios
            ratios = sorted(h / b for h, b in zip(times[("head", kind)], times[("base", kind)], strict=True))
            quarter = len(ratios) // 4
            row += f" {statistics.median(ratios):.2f} ({ratios[quarter]:.2f}-{ratios[-1 - quarter]:.2f}) |"
        lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
