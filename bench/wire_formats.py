"""The producer in both wire formats beside the bare binding, taking turns: single-object, and registry-framed.

    python -m bench.wire_formats [--orders N] [--rounds R]      (scripts/broker.sh up first: broker and registry)

Each round runs, on fresh topics: the binding (`bench/binding.py produce`, pre-encoded
orders), `producer.py --rate 0` without a registry (single-object), and `producer.py
--rate 0` with the registry of scripts/broker.sh (Confluent framing; the schema is
registered on the first run, as a user's first run would). Orders/s are each
program's own figure, from the first send to the last acknowledgement; the best of
the rounds is compared, as the issue that set the target asked.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.compare import env
from bench.run import BOOTSTRAP, PARTITIONS, run, throughput
from tests.clients import client_config

REGISTRY = "http://127.0.0.1:8081/apis/ccompat/v7"


def binding(orders: int) -> float:
    topic = f"wf-{uuid.uuid4().hex[:8]}-binding"
    admin = AdminClient(client_config(BOOTSTRAP))
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    argv = [sys.executable, "-m", "bench.binding", "produce", topic, str(orders)]
    return throughput(run(argv, {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP}))


def ours(orders: int, registry: str) -> float:
    settings = {**env(f"wf-{uuid.uuid4().hex[:8]}"), "SCHEMA_REGISTRY_URL": registry}
    argv = [sys.executable, "producer.py", "--rate", "0", "--count", str(orders), "--quiet"]
    return throughput(run(argv, settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orders", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"binding": [], "single-object": [], "Confluent framing, registry": []}
    for round_no in range(1, args.rounds + 1):
        print(f"Round {round_no}", flush=True)
        for name, registry in (("binding", None), ("single-object", ""), ("Confluent framing, registry", REGISTRY)):
            rates[name].append(binding(args.orders) if registry is None else ours(args.orders, registry))
            print(f"  {name:28s} {rates[name][-1]:>10,.0f}/s", flush=True)
    best = {name: max(values) for name, values in rates.items()}
    print(f"\n| producer | best of {args.rounds} (orders/s) | of the binding |\n|---|---|---|")
    for name, rate in best.items():
        print(f"| {name} | {rate:,.0f} | {rate / best['binding']:.2f} |")
    print(f"\nCommand: python -m bench.wire_formats --orders {args.orders} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
