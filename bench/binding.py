"""The binding tier of the benchmark: confluent-kafka alone, with none of our code in the loop.

    python -m bench.binding produce TOPIC N   produces N pre-encoded Avro orders (made in bulk before timing)
    python -m bench.binding consume TOPIC N   consumes N records as a group member, without decoding

Both use the producer and consumer settings of the pipeline (acks=all, idempotence,
linger.ms=5; read_committed and CONSUMER_FETCH_SETTINGS) and print one line as the pipeline does:
"Throughput: N records in Xs ... (R records/s)"; the consumer also prints the epoch
time of its last record, for the end-to-end figure.
"""

from __future__ import annotations

import random
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

from config import load_settings
from orderpipe.kafka.clients import CONSUMER_FETCH_SETTINGS, producer_config
from orderpipe.model.generator import OrderFactory
from orderpipe.serde.schemas import SINGLE_OBJECT_MAGIC, load_order_schema


def produce(topic: str, count: int) -> None:
    settings = load_settings({})
    schema = load_order_schema()
    factory = OrderFactory(random.Random(1), "BIND")
    records = factory.fill(count, schema.encode_single_object, SINGLE_OBJECT_MAGIC + schema.fingerprint).records
    producer = Producer(producer_config(settings))
    started = time.monotonic()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(60)
    elapsed = time.monotonic() - started
    if left:
        sys.exit(f"{left} records were not acknowledged")
    print(
        f"Throughput: {count} records in {elapsed:.3f}s from the first send to the last acknowledgement "
        f"({count / elapsed:,.0f} records/s)"
    )


def consume(topic: str, count: int) -> None:
    settings = load_settings({})
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            **CONSUMER_FETCH_SETTINGS,
            "group.id": f"bench-binding-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, 0.0
    while seen < count:
        batch = consumer.consume(10_000, 0.1)
        if batch and not started:
            started = time.monotonic()
        seen += sum(1 for message in batch if message.error() is None)
    elapsed, finished = max(time.monotonic() - started, 1e-6), time.time()
    consumer.close()
    print(
        f"Throughput: {seen} records in {elapsed:.3f}s from the first batch to the last "
        f"({seen / elapsed:,.0f} records/s)"
    )
    print(f"Last record at {finished:.3f}")


if __name__ == "__main__":
    command, topic_name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"produce": produce, "consume": consume}[command](topic_name, n)
