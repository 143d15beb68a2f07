"""Scale-out: the group's orders/s with 1, 2 and 3 exactly-once consumers on 6 partitions.

    scripts/broker.sh cluster up
    .venv/bin/python -m bench.scale_out [--orders N] [--consumers 1 2 3]
    .venv/bin/python -m bench.scale_out --cpu 0.25 [--broker single]     (as root: capped consumers)

For each group size, a fresh pipeline (6 partitions, replication 3, min ISR 2) gets
that many consumer.py processes in one group; once the group is stable (every member
holds partitions), producer.py sends N orders as fast as it can, and the consumers
read until idle. Each prints its records and the span from its first batch to its
last commit; the group's rate is all records over the longest span (they run side
by side). The consumers read while the producer sends, and the consumers, the
producer and the three brokers share this machine's cores: the table shows what one
machine gives, not what several would.

`--cpu F` simulates machines instead: each consumer runs in a cgroup of its own
(cgroup v1 cpu controller, /sys/fs/cgroup/cpu/orderpipe-scale-N/) whose quota is F
of one core, joined before the program starts; the producer and the brokers are
not capped. As long as the consumers' caps together leave room for the rest, the
group's rate then shows what more consumers give, each with a core share of its
own. After each run an audit of the topics (tests/audit.py) checks that every
order was counted once. `--broker single` uses scripts/broker.sh's single broker
(127.0.0.1:9092, replication 1), whose one JVM leaves the cores more room.
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

from config import load_settings
from tests.audit import audit_topics, pipeline_env
from tests.clients import client_config
from tests.integration.helpers import read_topic

ROOT = Path(__file__).resolve().parents[1]
BROKERS = {
    "cluster": ("127.0.0.1:29091,127.0.0.1:29092,127.0.0.1:29093", 3, "scripts/broker.sh cluster up"),
    "single": ("127.0.0.1:9092", 1, "scripts/broker.sh up"),
}
PARTITIONS = 6
THROUGHPUT = re.compile(r"Throughput: (\d+) records in ([\d.]+)s")
CGROUPS = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


def _env(bootstrap: str, replication: int, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        **pipeline_env(bootstrap, prefix),
        "ORDERS_PARTITIONS": str(PARTITIONS),
        "REPLICATION_FACTOR": str(replication),
    }


def cpu_cgroup(index: int, share: float) -> Path:
    """A cgroup v1 cpu group capped at `share` of one core (made, or its quota reset); needs root."""
    group = CGROUPS / f"orderpipe-scale-{index}"
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(int(share * PERIOD_US)))
    return group


def remove_cgroups() -> None:
    """Removes the groups cpu_cgroup made, each empty once its consumer has exited (a group still in use stays)."""
    for group in CGROUPS.glob("orderpipe-scale-*"):
        try:
            group.rmdir()
        except OSError as exc:  # a process still in it: the kernel refuses, and the run's own error matters more
            print(f"{group} stays: {exc.strerror}", file=sys.stderr)


def _consumer_command(python: str, share: float | None, index: int) -> list[str]:
    command = [python, "consumer.py", "--idle-exit", "5", "--quiet"]
    if share is None:
        return command
    procs = cpu_cgroup(index, share) / "cgroup.procs"
    # The shell joins the group, then becomes the consumer: capped from its first instruction.
    return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *command]


def group_rate(broker: str, orders: int, consumers: int, share: float | None) -> tuple[int, float, str]:
    """(records read by the group, seconds of the longest consumer span, the audit) for one group size."""
    bootstrap, replication, _ = BROKERS[broker]
    env = _env(bootstrap, replication, f"scale-{uuid.uuid4().hex[:8]}")
    python = sys.executable
    quiet: dict[str, Any] = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL}
    subprocess.run([python, "consumer.py", "--idle-exit", "1", "--quiet"], check=True, **quiet)  # makes the topics
    runs = [
        subprocess.Popen(_consumer_command(python, share, i), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for i in range(consumers)
    ]
    _wait_for_stable_group(bootstrap, env["CONSUMER_GROUP"], consumers)
    subprocess.run([python, "producer.py", "--count", str(orders), "--rate", "0", "--quiet"], check=True, **quiet)
    records, span = 0, 0.0
    for run in runs:
        output, _ = run.communicate(timeout=900)
        match = THROUGHPUT.search(output)
        if run.returncode != 0 or match is None:
            raise SystemExit(f"a consumer failed (exit {run.returncode}):\n{output}")
        records += int(match.group(1))
        span = max(span, float(match.group(2)))
    audit = audit_topics(lambda topic: read_topic(bootstrap, topic), load_settings(environ=env, env_file=None))
    if not audit.exact or audit.expected.count != orders:
        raise SystemExit(f"the audit found the orders not counted exactly once: {audit.describe()}")
    return records, span, f"{audit.expected.count} counted once"


def _wait_for_stable_group(bootstrap: str, group: str, members: int, timeout_s: float = 120.0) -> None:
    admin = AdminClient(client_config(bootstrap))
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
    parser.add_argument("--cpu", type=float, help="cap each consumer at this share of one core (cgroup v1, root)")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="cluster")
    args = parser.parse_args()
    start = BROKERS[args.broker][2]
    where = "the three-node cluster (replication 3, min ISR 2)" if args.broker == "cluster" else "the single broker"
    cap = f"each consumer capped at {args.cpu:g} of a core" if args.cpu else "consumers not capped"
    print(f"{args.orders} orders on {PARTITIONS} partitions of {where}; {cap}; producer and brokers not capped")
    print("| consumers | records | longest span | group orders/s | vs one | audit |")
    print("|---|---|---|---|---|---|")
    first = None
    try:
        for consumers in args.consumers:
            records, span, audit = group_rate(args.broker, args.orders, consumers, args.cpu)
            rate = records / span
            first = first or rate
            print(f"| {consumers} | {records} | {span:.2f} s | {rate:,.0f} | {rate / first:.2f}x | {audit} |")
    finally:
        if args.cpu:
            remove_cgroups()
    options = f" --cpu {args.cpu:g}" if args.cpu else ""
    options += f" --broker {args.broker}" if args.broker != "cluster" else ""
    consumers = " ".join(str(n) for n in args.consumers)
    print(
        f"Reproduce: {start} && .venv/bin/python -m bench.scale_out --orders {args.orders} "
        f"--consumers {consumers}{options}"
    )


if __name__ == "__main__":
    main()
