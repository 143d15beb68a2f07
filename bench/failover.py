"""Broker failures, repeated: each failure scenario of the cluster tests run N times in a row, with no supervisor.

    python -m bench.failover [--runs N] [--scenario NAME ...] [--logs DIR]   (scripts/broker.sh cluster up first)

The scenarios are those of tests/cluster/test_broker_failures.py, run by the same
code (tests/cluster/failover.py): the consumer started as a user starts it, the
producer sending 20,000 orders at 800/s, and nodes SIGKILLed and started again.
Per scenario it prints the runs; the consumer's exits other than 0 and its deaths by
a signal (target 0; a crash is told with gdb's backtrace of its core and Python's
faulthandler tracebacks, as the tests tell it); the producer's; the orders lost and
duplicated by the audit (target 0; after a consumer ended early a second one drains
the topics first, so these still mean what they say); the longest an order sent
while a node was down waited for its commit; and the command that repeats it. With
--logs, each run's consumer runs with --verbose and librdkafka's consumer-group debug
log, and its whole stderr is kept in DIR/<scenario>-<run>.log.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.cluster.failover import SCENARIOS, Ending, FailoverRun, cluster_pipeline, run_scenario
from tests.cluster.helpers import BOOTSTRAP, START_HINT, admin
from tests.cluster.programs import core_dumps_in


class Tally:
    """One scenario's runs, counted."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.runs: list[FailoverRun] = []
        self.unstarted: list[Ending] = []  # runs whose consumer never got going
        self.seconds: list[float] = []

    def endings(self, program: str) -> list[Ending]:
        found = [e for run in self.runs for e in run.endings if e.program == program]
        return found + [e for e in self.unstarted if e.program == program]

    def row(self) -> str:
        consumer = self.endings("consumer") + self.endings("drain")
        exits = sum(1 for e in consumer if e.code > 0)
        signals = sum(1 for e in consumer if e.code < 0)
        producer = len(self.endings("producer"))
        lost = sum(run.lost for run in self.runs)
        duplicated = sum(run.duplicated for run in self.runs)
        waits = [run.longest_wait_ms for run in self.runs if run.longest_wait_ms is not None]
        longest = f"{max(waits):,} ms (runs' median {statistics.median(waits):,.0f} ms)" if waits else "-"
        runs = len(self.runs) + len(self.unstarted)
        return (
            f"| {self.scenario} | {runs} | {exits} | {signals} | {producer} | {lost} | {duplicated} | {longest} "
            f"| {statistics.mean(self.seconds):.0f} s |"
        )


def run_one(scenario: str, log: Path | None) -> tuple[FailoverRun | None, list[Ending]]:
    """One run; a consumer that never got going is an ending too (and there is nothing to audit)."""
    try:
        return run_scenario(cluster_pipeline(), scenario, log), []
    except AssertionError as exc:
        return None, [Ending("consumer", 1, f"did not start consuming: {exc}")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each scenario, one after another (default 10)")
    parser.add_argument(
        "--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS), help="which (default: all)"
    )
    parser.add_argument("--logs", type=Path, help="keep each run's consumer log (with debug lines) in this folder")
    args = parser.parse_args(argv)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    try:
        nodes = len(admin().list_topics(timeout=10).brokers)
    except Exception:
        nodes = 0
    if nodes < 3:
        print(f"the three-node cluster does not answer on {BOOTSTRAP}: {START_HINT}", file=sys.stderr)
        return 2
    tallies = []
    with core_dumps_in() as where:
        print(where, flush=True)
        for scenario in args.scenario:
            tally = Tally(scenario)
            tallies.append(tally)
            for number in range(1, args.runs + 1):
                began = time.monotonic()
                log = None if args.logs is None else args.logs / f"{scenario}-{number}.log"
                run, unstarted = run_one(scenario, log)
                tally.seconds.append(time.monotonic() - began)
                tally.unstarted += unstarted
                endings = unstarted if run is None else run.endings
                for ended in endings:
                    print(f"{ended.program}: {ended.told}", flush=True)
                said = f"{scenario} run {number}/{args.runs}: {len(endings)} program failures"
                if run is not None:
                    tally.runs.append(run)
                    said += f", lost {run.lost}, duplicated {run.duplicated}, longest wait while a node was down "
                    said += f"{run.longest_wait_ms} ms"
                print(f"{said} ({tally.seconds[-1]:.0f} s)", flush=True)
                if run is not None and run.open:
                    print(f"transactions open once the programs ended: {run.describe_open()}", flush=True)
                if run is not None and not run.audit.exact:
                    print("\n".join(run.figures()), flush=True)
                if log is not None and (endings or run is None or not run.audit.exact):
                    print(f"the consumer's log: {log}", flush=True)
    print()
    print(
        "| scenario | runs | consumer exits other than 0 | consumer signal deaths | producer failures "
        "| orders lost | orders duplicated | longest wait of an order sent while a node was down | time per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for tally in tallies:
        print(tally.row())
    print()
    for scenario, (what, _) in SCENARIOS.items():
        if scenario in args.scenario:
            print(f"{scenario}: {what}")
    logs = "" if args.logs is None else f" --logs {args.logs}"
    scenarios = " ".join(args.scenario)
    print(f"\nCommand: .venv/bin/python -m bench.failover --runs {args.runs} --scenario {scenarios}{logs}")
    bad = any(t.endings("consumer") or t.endings("drain") or t.endings("producer") for t in tallies)
    return 1 if bad or any(run.lost or run.duplicated for t in tallies for run in t.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
