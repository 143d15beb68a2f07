"""Records with random schema ids: the consumer's time and peak memory as their number grows.

    python -m bench.unknown_ids [--records N ...]     (scripts/bench.sh --unknown-ids)

Each run fills a fresh `orders` topic with N records in the Confluent wire format
whose schema ids nobody registered (every one different), then runs `consumer.py`
against the schema registry until idle and reports its wall time, CPU time and peak
RSS. Each id costs one registry look-up off the poll loop; what memory keeps of a
failure is bounded (registry.MAX_FAILURES), so peak RSS should not grow with N. It
needs a running broker and registry (scripts/broker.sh up).
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid

from confluent_kafka import Producer

from bench.compare import env
from bench.run import BOOTSTRAP, run
from tests.clients import client_config

REGISTRY = "http://127.0.0.1:8081/apis/ccompat/v7"


def fill(topic: str, records: int, seed: int) -> None:
    rng = random.Random(seed)
    producer = Producer(client_config(BOOTSTRAP, {"linger.ms": 20}))
    for index in range(records):
        schema_id = rng.randrange(10**6, 2**31)
        value = b"\x00" + schema_id.to_bytes(4, "big") + b"\x02x\x02y\x00\x00\x80?"
        producer.produce(topic, key=f"J-{index}".encode(), value=value)
        if index % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        sys.exit("the records were not all delivered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, nargs="+", default=[2_000, 20_000])
    args = parser.parse_args()
    print("| records with unknown schema ids | wall | CPU | peak RSS | dead-lettered |")
    print("|---|---|---|---|---|", flush=True)
    for records in args.records:
        variables = {**env(f"ids-{uuid.uuid4().hex[:8]}"), "SCHEMA_REGISTRY_URL": REGISTRY}
        # The producer creates the topics; one valid order makes it register the schema.
        run([sys.executable, "producer.py", "--count", "1", "--quiet"], variables)
        fill(variables["ORDERS_TOPIC"], records, seed=records)
        result = run([sys.executable, "consumer.py", "--quiet", "--idle-exit", "3"], variables)
        final = result.stdout.split("Consumer summary:", 1)[-1]
        dead = final.split("dead-lettered ", 1)[-1].split(" ", 1)[0]
        print(
            f"| {records:,} | {result.wall_s:.1f} s | {result.cpu_s:.1f} s | {result.peak_rss_mb:.0f} MB | {dead} |",
            flush=True,
        )
    print(f"\nCommand: python -m bench.unknown_ids --records {' '.join(map(str, args.records))}")


if __name__ == "__main__":
    main()
