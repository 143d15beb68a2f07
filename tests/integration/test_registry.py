"""The schema-registry wire format against the real registry (Apicurio, Confluent API)."""

from collections import Counter

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from orderpipe.core.routing import Processed
from orderpipe.serde.schemas import load_order_schema
from tests.audit import published_total
from tests.clients import client_config
from tests.integration.helpers import CONSUMER_SUMMARY, PRODUCER_SUMMARY, Pipeline, running_consumer, summary, wait_for


def test_schema_registry_path_end_to_end(pipeline: Pipeline, registry_url: str) -> None:
    pipeline = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url)
    sent = pipeline.run("producer.py", "--count", "60", "--rate", "0", "--invalid-rate", "0.1", "--poison-rate", "0.1")
    assert sent.returncode == 0, sent.stderr
    produced = summary(PRODUCER_SUMMARY, sent.stdout)

    orders = pipeline.read(pipeline.settings.orders_topic)
    schema_ids = {r.value[1:5] for r in orders if r.value and r.value[:1] == b"\x00"}
    assert len(schema_ids) == 1, "every decodable record carries the one registered schema id"
    subjects = SchemaRegistryClient({"url": registry_url}).get_subjects()
    assert f"{pipeline.settings.orders_topic}-value" in subjects

    consumed = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet")
    assert consumed.returncode == 0, consumed.stderr
    got = summary(CONSUMER_SUMMARY, consumed.stdout)
    reasons = Counter(r.headers["dlq.reason"] for r in pipeline.read(pipeline.settings.dlq_topic))
    counted = published_total(pipeline.read(pipeline.settings.stats_topic))
    assert counted.count == int(got["processed"]) == int(produced["valid"])
    assert counted.describe() == got["average"]
    assert reasons == Counter({"validation": int(produced["invalid"]), "deserialization": int(produced["poison"])})


def test_an_order_from_confluent_kafkas_own_avro_serializer_is_read(pipeline: Pipeline, registry_url: str) -> None:
    settings = pipeline.with_env(SCHEMA_REGISTRY_URL=registry_url).settings
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), load_order_schema().text)
    value = serializer(
        {"orderId": "O-CONFLUENT-1", "product": "Desk Lamp", "price": 19.99},
        SerializationContext(settings.orders_topic, MessageField.VALUE),
    )
    assert value is not None
    assert value[:1] == b"\x00"

    with running_consumer(settings) as running:
        producer = Producer(client_config(settings.bootstrap_servers))
        producer.produce(settings.orders_topic, key=b"O-CONFLUENT-1", value=value)
        assert producer.flush(30) == 0
        _, decision = wait_for(lambda: next(iter(running.decisions), None), what="a decision on the order")
    assert isinstance(decision, Processed)
    assert (decision.order.order_id, decision.order.product, decision.order.price_cents) == (
        "O-CONFLUENT-1",
        "Desk Lamp",
        1999,
    )
