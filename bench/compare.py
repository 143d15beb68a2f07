"""This checkout's producer and consumer against another commit's, on the same machine, taking turns.

    python -m bench.compare BASE [--orders N] [--rounds R]     (scripts/bench.sh --compare BASE)

A change's effect on speed is smaller than the drift of a shared machine between two
days, so a figure is only compared with one measured beside it. BASE (a commit,
branch or tag) is checked out once with `git worktree` under .cache/bench/; every
round runs base then head for: the producer (`producer.py --rate 0`, fresh topic),
and the exactly-once consumer (`consumer.py`, a fresh topic filled beforehand by
this checkout's producer, untimed, with --poison-rate of its records poison, which the
consumer dead-letters); with --latency-s, also the at-least-once consumer's
p99 latency while this checkout's producer offers 10,000 orders/s (with --only-latency,
only that). Prints medians, min-max and head/base; it needs a running broker.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

from bench.run import BOOTSTRAP, LATENCY, ROOT, Process, Run, run, throughput, wait_for_group_member


def worktree(ref: str) -> Path:
    sha = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    path = ROOT / ".cache" / "bench" / f"base-{sha[:12]}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True)
    return path


def env(prefix: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "SCHEMA_REGISTRY_URL": "",
        "ORDERS_TOPIC": f"{prefix}-orders",
        "RETRY_TOPIC": f"{prefix}-retry",
        "DLQ_TOPIC": f"{prefix}-dlq",
        "STATS_TOPIC": f"{prefix}-stats",
        "CONSUMER_GROUP": f"{prefix}-group",
    }


def producer(root: Path, orders: int) -> Run:
    prefix = f"cmp-{uuid.uuid4().hex[:8]}"
    return run([sys.executable, "producer.py", "--rate", "0", "--count", str(orders), "--quiet"], env(prefix), cwd=root)


def consumer(root: Path, orders: int, poison_rate: float = 0.0) -> Run:
    prefix = f"cmp-{uuid.uuid4().hex[:8]}"
    fill = [sys.executable, "producer.py", "--rate", "0", "--count", str(orders), "--quiet"]
    run([*fill, "--poison-rate", f"{poison_rate:g}"], env(prefix))
    argv = [sys.executable, "consumer.py", "--quiet", "--idle-exit", "2"]
    return run(argv, env(prefix), cwd=root)


def latency(root: Path, seconds: float, rate: int = 10_000) -> int:
    """The at-least-once consumer's p99 latency (ms) at a fixed offered rate."""
    prefix = f"cmp-{uuid.uuid4().hex[:8]}"
    variables = env(prefix)
    argv = [sys.executable, "consumer.py", "--quiet", "--idle-exit", "3", "--delivery", "at-least-once"]
    consumer = Process([*argv, "--report-latency"], variables, cwd=root)
    wait_for_group_member(variables["ORDERS_TOPIC"], variables["CONSUMER_GROUP"])
    run([sys.executable, "producer.py", "--rate", str(rate), "--count", str(int(rate * seconds)), "--quiet"], variables)
    match = LATENCY.search(consumer.wait().stdout)
    if not match:
        sys.exit("the consumer printed no Latency line")
    return int(match[2])


def line(name: str, base: list[Run], head: list[Run], orders: int) -> str:
    def figures(runs: list[Run]) -> str:
        rates = sorted(throughput(r) for r in runs)
        cpu = statistics.median(r.cpu_s for r in runs) / orders * 1e6
        return f"{statistics.median(rates):,.0f}/s ({rates[0]:,.0f}-{rates[-1]:,.0f}), {cpu:.1f} µs CPU/order"

    ratio = statistics.median(throughput(r) for r in head) / statistics.median(throughput(r) for r in base)
    return f"| {name} | {figures(base)} | {figures(head)} | {ratio:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base", help="the commit to compare with, e.g. HEAD~1 or a tag")
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-s", type=float, default=0, help="length of each latency run (0: none)")
    parser.add_argument(
        "--only-latency", action="store_true", help="only the latency runs (with --latency-s), not the throughput"
    )
    parser.add_argument(
        "--poison-rate", type=float, default=0.0, help="share of the consumer's records that are poison (DLQ'd)"
    )
    args = parser.parse_args()
    base_root = worktree(args.base)

    def consume(root: Path, orders: int) -> Run:
        return consumer(root, orders, args.poison_rate)

    runs: dict[tuple[str, str], list[Run]] = {}
    p99s: dict[str, list[int]] = {}
    for round_number in range(1, args.rounds + 1):
        print(f"Round {round_number}", flush=True)
        for name, measure in () if args.only_latency else (("producer", producer), ("consumer, exactly-once", consume)):
            for label, root in (("base", base_root), ("head", ROOT)):
                result = measure(root, args.orders)
                runs.setdefault((name, label), []).append(result)
                print(f"  {name:<24} {label}  {throughput(result):>10,.0f}/s", flush=True)
        for label, root in (("base", base_root), ("head", ROOT)) if args.latency_s else ():
            p99 = latency(root, args.latency_s)
            p99s.setdefault(label, []).append(p99)
            print(f"  {'p99 at-least-once':<24} {label}  {p99:>10} ms", flush=True)
    command = f"python -m bench.compare {args.base} --rounds {args.rounds}"
    command += "" if args.only_latency else f" --orders {args.orders}"
    command += f" --latency-s {args.latency_s:g}" if args.latency_s else ""
    command += " --only-latency" if args.only_latency else ""
    command += f" --poison-rate {args.poison_rate:g}" if args.poison_rate else ""
    print(f"\nCommand: {command}")
    what = f"{args.latency_s:g} s latency runs" if args.only_latency else f"{args.orders} orders"
    print(f"{args.rounds} rounds of {what}, base and head taking turns; median (min-max).\n")
    print(f"| figure | base ({args.base}) | head | head / base |")
    print("|---|---|---|---|")
    for name in () if args.only_latency else ("producer", "consumer, exactly-once"):
        print(line(name, runs[(name, "base")], runs[(name, "head")], args.orders))
    if p99s:
        base, head = (statistics.median(p99s[label]) for label in ("base", "head"))
        spread = {label: f"({min(p99s[label])}-{max(p99s[label])})" for label in ("base", "head")}
        print(
            f"| p99 latency at 10,000/s, at-least-once | {base:g} ms {spread['base']} | {head:g} ms {spread['head']} "
            f"| {head / base:.2f} |"
        )


if __name__ == "__main__":
    main()
