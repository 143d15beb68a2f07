"""Where a batch's time goes at a fixed offered rate: the consumer's calls to Kafka, timed one by one.

    python -m bench.latency_parts [--seconds 20] [--delivery at-least-once] [--rate 10000]

Runs `consumer.py --report-latency` with timers around the loop's turn, its poll, the
batch's decision and commit, and the edge's produce, flush and offset commit (the
at-least-once commit) or its transaction calls (exactly-once), while this checkout's
producer offers `--rate` orders/s; then prints the consumer's Latency line and, per
call, how often it ran and how long it took. It needs a running broker. The timers
wrap methods of the running consumer, so they cost it a little.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import consumer
from bench.compare import env
from bench.run import Process, run, wait_for_group_member

# (module, class, method, label): what the child process times.
TIMED = (
    ("orderpipe.consumer.loop", "ConsumerLoop", "turn", "loop turn"),
    ("orderpipe.kafka.edge", "ConfluentEdge", "poll", "poll"),
    ("orderpipe.consumer.loop", "ConsumerLoop", "_commit", "decide and commit"),
    ("orderpipe.kafka.edge_producer", "EdgeProducer", "produce", "produce"),
    ("orderpipe.kafka.edge_producer", "EdgeProducer", "flush", "flush"),
    ("orderpipe.kafka.edge_producer", "EdgeProducer", "commit_offsets", "commit offsets"),
    ("orderpipe.kafka.edge_producer", "EdgeProducer", "send_offsets", "send offsets (transaction)"),
    ("orderpipe.kafka.edge_producer", "EdgeProducer", "commit_transaction", "commit the transaction"),
)


def _timed(method: Callable[..., Any], times: list[float]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - started)

    return call


def _child(argv: list[str]) -> int:
    """In the consumer's process: wraps the calls, runs consumer.py's main, prints the table at exit."""
    timings: dict[str, list[float]] = {}
    for module_name, class_name, method, label in TIMED:
        cls = getattr(importlib.import_module(module_name), class_name)
        setattr(cls, method, _timed(getattr(cls, method), timings.setdefault(label, [])))

    def table() -> None:
        print("| call | times | mean ms | p50 ms | p99 ms | total s |\n|---|---|---|---|---|---|")
        for label, times in timings.items():
            if times:
                ordered = sorted(times)
                p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
                mean = statistics.mean(ordered)
                figures = f"{mean * 1e3:.2f} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {sum(ordered):.1f}"
                print(f"| {label} | {len(ordered)} | {figures} |")

    atexit.register(table)
    return consumer.main(argv)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--delivery", choices=("at-least-once", "exactly-once"), default="at-least-once")
    parser.add_argument("--rate", type=int, default=10_000)
    args = parser.parse_args()
    variables = env(f"parts-{uuid.uuid4().hex[:8]}")
    argv = ["--quiet", "--idle-exit", "3", "--delivery", args.delivery, "--report-latency"]
    timed = Process([sys.executable, "-m", "bench.latency_parts", "--child", *argv], variables)
    wait_for_group_member(variables["ORDERS_TOPIC"], variables["CONSUMER_GROUP"])
    count = str(int(args.rate * args.seconds))
    run([sys.executable, "producer.py", "--rate", str(args.rate), "--count", count, "--quiet"], variables)
    out = timed.wait().stdout
    latency = next((line for line in out.splitlines() if line.startswith("Latency:")), "no Latency line")
    print(f"{args.delivery} consumer at {args.rate:,} orders/s offered for {args.seconds:g} s")
    print(latency, "\n")
    print(out[out.index("| call |") :].strip() if "| call |" in out else out[-2000:])
    print(f"\nCommand: python -m bench.latency_parts --seconds {args.seconds:g} --delivery {args.delivery}")


if __name__ == "__main__":
    main()
