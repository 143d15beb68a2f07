"""Scale-out: the group's orders/s with 1, 2 and 3 exactly-once consumers on 6 partitions of the cluster.

    scripts/broker.sh cluster up
    .venv/bin/python -m bench.scale_out [--orders N] [--consumers 1 2 3]

For each group size, a fresh pipeline (6 partitions, replication 3, min ISR 2) gets
that many consumer.py processes in one group; once the group is stable (every member
holds partitions), producer.py sends N orders as fast as it can, and the consumers
read until idle. Each prints its records and the span from its first batch to its
last commit; the group's rate is all records over the longest span (they run side
by side). The consumers read while the producer sends, and the consumers, the
producer and the three brokers share this machine's cores: the table shows what one
machine gives, not what several would.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.audit import pipeline_env
from tests.clients import client_config

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = "127.0.0.1:29091,127.0.0.1:29092,127.0.0.1:29093"
PARTITIONS = 6
THROUGHPUT = re.compile(r"Throughput: (\d+) records in ([\d.]+)s")


def _env(prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        **pipeline_env(BOOTSTRAP, prefix),
        "ORDERS_PARTITIONS": str(PARTITIONS),
        "REPLICATION_FACTOR": "3",
    }


def group_rate(orders: int, consumers: int) -> tuple[int, float]:
    """(records read by the group, seconds of the longest consumer span) for one group size."""
    env = _env(f"scale-{uuid.uuid4().hex[:8]}")
    python = sys.executable
    quiet: dict[str, Any] = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL}
    subprocess.run([python, "consumer.py", "--idle-exit", "1", "--quiet"], check=True, **quiet)  # makes the topics
    runs = [
        subprocess.Popen(
            [python, "consumer.py", "--idle-exit", "5", "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(consumers)
    ]
    _wait_for_stable_group(env["CONSUMER_GROUP"], consumers)
    subprocess.run([python, "producer.py", "--count", str(orders), "--rate", "0", "--quiet"], check=True, **quiet)
    records, span = 0, 0.0
    for run in runs:
        output, _ = run.communicate(timeout=900)
        match = THROUGHPUT.search(output)
        if run.returncode != 0 or match is None:
            raise SystemExit(f"a consumer failed (exit {run.returncode}):\n{output}")
        records += int(match.group(1))
        span = max(span, float(match.group(2)))
    return records, span


def _wait_for_stable_group(group: str, members: int, timeout_s: float = 120.0) -> None:
    admin = AdminClient(client_config(BOOTSTRAP))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        except KafkaException:
            described = None
        if described is not None and len(described.members) == members and str(described.state).endswith("STABLE"):
            return
        time.sleep(0.2)
    raise SystemExit(f"group {group} did not reach {members} stable members within {timeout_s:g}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=60_000)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    print(f"{args.orders} orders on {PARTITIONS} partitions of the three-node cluster (replication 3, min ISR 2)")
    print("| consumers | records | longest span | group orders/s |")
    print("|---|---|---|---|")
    for consumers in args.consumers:
        records, span = group_rate(args.orders, consumers)
        print(f"| {consumers} | {records} | {span:.2f} s | {records / span:,.0f} |")
    print(f"Reproduce: scripts/broker.sh cluster up && .venv/bin/python -m bench.scale_out --orders {args.orders}")


if __name__ == "__main__":
    main()
