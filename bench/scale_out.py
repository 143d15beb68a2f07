"""Scale-out: the group's orders/s with 1, 2 and 3 exactly-once consumers on 6 partitions.

    scripts/broker.sh cluster up
    .venv/bin/python -m bench.scale_out [--orders N] [--consumers 1 2 3] [--rounds R]
    .venv/bin/python -m bench.scale_out --cpu 0.15 [--broker single]     (as root: capped consumers)

For each group size, a fresh pipeline (6 partitions, replication 3, min ISR 2) gets
that many consumer.py processes in one group; once the group is stable (every member
holds partitions), producer.py sends N orders as fast as it can (`--producers P`: P
of them side by side, N in all), and the consumers read until idle. Each prints its
records and the span from its first batch to its last commit; the group's rate is
all records over the longest span (they run side by side). The consumers read while
the producer sends, and the consumers, the producer and the three brokers share this
machine's cores: the table shows what one machine gives, not what several would.
With --rounds, the group sizes take turns R times and the median ratio is printed.

`--cpu F` simulates machines instead: each consumer runs in a cgroup of its own
(cgroup v1 cpu controller, /sys/fs/cgroup/cpu/orderpipe-scale-N/) whose quota is F
of one core, joined before the program starts; the producer and the brokers are
not capped. That holds only while the producer sends faster than the group reads:
each row shows how long the producer took, and "fed by: the producer" marks a group
that read at 90% of the producer's rate or more, whose figure is then the
producer's (with the consumers' caps, the producer and the broker sharing two cores,
the sending slows as the group grows). After each run an audit of the topics
(tests/audit.py) checks that every order was counted once. `--broker single` uses
scripts/broker.sh's single broker (127.0.0.1:9092, replication 1), whose one JVM
leaves the cores more room.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
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
PRODUCER_THROUGHPUT = re.compile(r"Throughput: (\d+) orders in ([\d.]+)s")
CGROUPS = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
WEIGHT = 100 * 1024  # cpu.shares: a hundred times that of a process outside the groups


def _env(bootstrap: str, replication: int, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        **pipeline_env(bootstrap, prefix),
        "ORDERS_PARTITIONS": str(PARTITIONS),
        "REPLICATION_FACTOR": str(replication),
    }


def cpu_cgroup(index: int, share: float) -> Path:
    """A cgroup v1 cpu group capped at `share` of one core, made afresh (its counts start at 0); needs root."""
    group = CGROUPS / f"orderpipe-scale-{index}"
    if group.exists():
        group.rmdir()  # empty: the last run's consumer has exited
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(int(share * PERIOD_US)))
    # The quota caps the consumer; the weight makes sure it gets that much while the
    # producer and the broker keep the cores busy, as a machine of its own would.
    (group / "cpu.shares").write_text(str(WEIGHT))
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


def group_rate(
    broker: str, orders: int, consumers: int, share: float | None, producers: int = 1
) -> tuple[int, float, float, str]:
    """Records read by the group, the longest consumer span (s), the producer's (s), and the audit."""
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
    sending = produce(python, orders, producers, quiet)
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
    return records, span, sending, f"{audit.expected.count} counted once"


def produce(python: str, orders: int, producers: int, options: dict[str, Any]) -> float:
    """Sends `orders` with `producers` producer.py processes side by side; the longest one's seconds."""
    counts = [orders // producers + (1 if i < orders % producers else 0) for i in range(producers)]
    argv = [python, "producer.py", "--rate", "0", "--quiet"]
    started = [
        subprocess.Popen([*argv, "--count", str(count)], **{**options, "stdout": subprocess.PIPE, "text": True})
        for count in counts
    ]
    longest = 0.0
    for each in started:
        output, _ = each.communicate(timeout=900)
        sent = PRODUCER_THROUGHPUT.search(output)
        if each.returncode != 0 or sent is None:
            raise SystemExit(f"a producer failed (exit {each.returncode}):\n{output}")
        longest = max(longest, float(sent.group(2)))
    return longest


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


# A group reading at this share of the producer's rate or more was fed no faster than
# that: its figure is (nearly) the producer's, not what the group could read.
PRODUCER_BOUND = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=60_000)
    parser.add_argument("--consumers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cpu", type=float, help="cap each consumer at this share of one core (cgroup v1, root)")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="cluster")
    parser.add_argument("--producers", type=int, default=1, help="producer.py processes sending side by side")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every group size, taking turns")
    args = parser.parse_args()
    start = BROKERS[args.broker][2]
    where = "the three-node cluster (replication 3, min ISR 2)" if args.broker == "cluster" else "the single broker"
    cap = f"each consumer capped at {args.cpu:g} of a core" if args.cpu else "consumers not capped"
    sending = "producer" if args.producers == 1 else f"{args.producers} producers"
    print(f"{args.orders} orders on {PARTITIONS} partitions of {where}; {cap}; {sending} and brokers not capped")
    print("| round | consumers | records | longest span | group orders/s | vs one | sent in | fed by |")
    print("|---|---|---|---|---|---|---|---|")
    ratios: dict[int, list[float]] = {}
    try:
        for round_number in range(1, args.rounds + 1):
            first = None
            for consumers in args.consumers:
                records, span, sent, audit = group_rate(args.broker, args.orders, consumers, args.cpu, args.producers)
                rate, producer_rate = records / span, args.orders / sent
                first = first or rate
                ratios.setdefault(consumers, []).append(rate / first)
                bound = "the producer" if rate >= PRODUCER_BOUND * producer_rate else "-"
                print(
                    f"| {round_number} | {consumers} | {records} ({audit}) | {span:.2f} s | {rate:,.0f} "
                    f"| {rate / first:.2f}x | {sent:.2f} s ({producer_rate:,.0f}/s) | {bound} |",
                    flush=True,
                )
    finally:
        if args.cpu:
            remove_cgroups()
    if args.rounds > 1:
        medians = ", ".join(f"{n}: {statistics.median(r):.2f}x" for n, r in ratios.items())
        print(f"Median of the rounds, vs one consumer: {medians}")
    options = f" --cpu {args.cpu:g}" if args.cpu else ""
    options += f" --broker {args.broker}" if args.broker != "cluster" else ""
    options += f" --producers {args.producers}" if args.producers != 1 else ""
    options += f" --rounds {args.rounds}" if args.rounds != 1 else ""
    consumers = " ".join(str(n) for n in args.consumers)
    print(
        f"Reproduce: {start} && .venv/bin/python -m bench.scale_out --orders {args.orders} "
        f"--consumers {consumers}{options}"
    )


if __name__ == "__main__":
    main()
