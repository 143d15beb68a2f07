"""The consumer's decoding alone, per schema version and wire format: records decoded per second.

    python -m bench.decode [--count N] [--seed S]

Decodes N record values (default 200,000), made before timing from 1,000 generated
valid orders, in each of these ways, and prints one line per way (the best of
--repeat runs, 3 by default: other work on the machine only ever slows a run down):

* single-object, version 2 (the newest: the direct reader),
* single-object, version 1 (an older producer's records: version 1's direct reader,
  read as quantity 1 and no customer),
* Confluent wire format, version 2, with a fake registry lookup that answers at once
  (the writer schema found by id, then the direct reader),
* Confluent wire format, version 1, likewise.

No broker, no registry: it times `OrderDecoder.decode` and nothing else.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from typing import Any

from orderpipe.model.generator import OrderFactory
from orderpipe.serde.codec import CONFLUENT_MAGIC, OrderDecoder
from orderpipe.serde.schemas import OrderSchema, load_order_schema

SAMPLES = 1_000


def values(encode: Any, seed: int) -> list[bytes]:
    """1,000 valid orders encoded by `encode`, as record values."""
    factory = OrderFactory(random.Random(seed), "BENCH")
    return [encode(factory.make(lambda order: b"").order) for _ in range(SAMPLES)]


def confluent(schema: OrderSchema, schema_id: int) -> Any:
    return lambda order: CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + schema.encode_body(order)


def rate(decoder: OrderDecoder, sample: Sequence[bytes], count: int) -> float:
    """Records decoded per second over `count` decodes of the sample, in turn."""
    decode = decoder.decode
    rounds, rest = divmod(count, len(sample))
    started = time.perf_counter()
    for _ in range(rounds):
        for value in sample:
            decode(value)
    for value in sample[:rest]:
        decode(value)
    return count / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="records decoded per way (default 200,000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated orders")
    parser.add_argument("--repeat", type=int, default=3, help="runs per way, the best one shown (default 3)")
    args = parser.parse_args(argv)
    v1, v2 = load_order_schema(1), load_order_schema(2)
    registered = {1: v1.parsed, 2: v2.parsed}
    decoder = OrderDecoder(load_order_schema(), registered.__getitem__)
    ways = {
        "single-object, version 2 (newest)": values(v2.encode_single_object, args.seed),
        "single-object, version 1": values(v1.encode_single_object, args.seed),
        "Confluent, version 2 (fake lookup)": values(confluent(v2, 2), args.seed),
        "Confluent, version 1 (fake lookup)": values(confluent(v1, 1), args.seed),
    }
    print(f"python -m bench.decode --count {args.count} --seed {args.seed} --repeat {args.repeat}")
    for name, sample in ways.items():
        rate(decoder, sample, min(args.count, 10_000))  # warm up
        best = max(rate(decoder, sample, args.count) for _ in range(args.repeat))
        print(f"{name:38} {best:>12,.0f} records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
