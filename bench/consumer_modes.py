"""Consumer throughput with and without transactions, measured in one run on one machine.

Produces one set of orders, then consumes it from the start with fresh groups,
alternating exactly-once and at-least-once (A B A B ...), and prints the median and
the range of each. Needs a running broker (scripts/broker.sh up).

    .venv/bin/python bench/consumer_modes.py [--orders 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = re.compile(r"Throughput: (\d+) records in ([\d.]+)s")
MODES = ("exactly-once", "at-least-once")


def run(script: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    base = {"ORDERS_TOPIC": f"{prefix}-orders", "SCHEMA_REGISTRY_URL": ""}
    print(f"Producing {args.orders} orders to {base['ORDERS_TOPIC']} ...", flush=True)
    run(
        "producer.py",
        base,
        "--count",
        str(args.orders),
        "--rate",
        "0",
        "--invalid-rate",
        "0.05",
        "--poison-rate",
        "0.01",
        "--seed",
        "1",
        "--quiet",
    )
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(1, args.rounds + 1):
        for mode in MODES:
            run_id = f"{prefix}-{mode}-{round_}"
            env = {
                **base,
                "RETRY_TOPIC": f"{run_id}-retry",
                "DLQ_TOPIC": f"{run_id}-dlq",
                "STATS_TOPIC": f"{run_id}-stats",
                "CONSUMER_GROUP": f"{run_id}-group",
            }
            out = run(
                "consumer.py",
                env,
                "--delivery",
                mode,
                "--idle-exit",
                "2",
                "--quiet",
                "--batch-size",
                str(args.batch_size),
            )
            match = THROUGHPUT.search(out)
            if match is None:
                sys.exit(f"no throughput line in:\n{out}")
            records, seconds = int(match[1]), float(match[2])
            rates[mode].append(records / seconds)
            print(
                f"round {round_} {mode:13} {records} records in {seconds:.2f}s = {records / seconds:,.0f}/s", flush=True
            )

    print()
    print(f"| consumer ({args.orders} orders, batch {args.batch_size}) | median orders/s | min-max |")
    print("|---|---|---|")
    for mode in MODES:
        values = rates[mode]
        print(f"| {mode} | {statistics.median(values):,.0f} | {min(values):,.0f}-{max(values):,.0f} |")
    ratio = statistics.median(rates["exactly-once"]) / statistics.median(rates["at-least-once"])
    print(f"\nexactly-once / at-least-once: {ratio:.2f}")
    print(
        f"Reproduce: .venv/bin/python bench/consumer_modes.py --orders {args.orders} --rounds {args.rounds} "
        f"--batch-size {args.batch_size}"
    )


if __name__ == "__main__":
    main()
