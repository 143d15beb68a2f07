"""producer.py to consumer.py through the real broker, with exact counts."""

import signal
from collections import Counter

from confluent_kafka.admin import AdminClient

from orderpipe.model.money import RunningAverage, format_cents, to_cents
from orderpipe.serde.codec import OrderDecoder
from orderpipe.serde.schemas import load_order_schema
from tests.clients import client_config
from tests.integration.helpers import CONSUMER_SUMMARY, PRODUCER_SUMMARY, Pipeline, audit, read_until, summary


def test_every_order_is_processed_or_dead_lettered_exactly_once(pipeline: Pipeline) -> None:
    pipeline = pipeline.with_env(ORDERS_PARTITIONS="2")
    sent = pipeline.run(
        "producer.py", "--count", "300", "--rate", "0", "--invalid-rate", "0.1", "--poison-rate", "0.05", "--seed", "3"
    )
    assert sent.returncode == 0, sent.stderr
    produced = summary(PRODUCER_SUMMARY, sent.stdout)
    assert (produced["sent"], produced["delivered"], produced["failed"]) == ("300", "300", "0")

    consumed = pipeline.run("consumer.py", "--failure-rate", "0.2", "--seed", "5", "--idle-exit", "3", "--verbose")
    assert consumed.returncode == 0, consumed.stderr
    got = summary(CONSUMER_SUMMARY, consumed.stdout)

    settings = pipeline.settings
    orders = pipeline.read(settings.orders_topic)
    dlq = pipeline.read(settings.dlq_topic)
    retries = pipeline.read(settings.retry_topic)
    reasons = Counter(r.headers["dlq.reason"] for r in dlq)

    # Every kind of record ends where docs/wire-formats.md's routing table says, in the numbers the producer sent.
    assert len(orders) == 300
    assert reasons["deserialization"] == int(produced["poison"]) == int(got["deserialization"])
    assert reasons["validation"] == int(produced["invalid"]) == int(got["validation"])
    assert int(got["processed"]) + reasons["retries-exhausted"] == int(produced["valid"])
    assert reasons["retries-exhausted"] == int(got["exhausted"])
    assert len(retries) == int(got["retried"]) > 0

    # Each orderId is either counted or dead-lettered, once, as the topics tell.
    result = audit(pipeline)
    assert result.exact, result.describe()
    assert (result.poison, result.invalid) == (int(produced["poison"]), int(produced["invalid"]))

    # The running average is that of the valid orders sent, less those dead-lettered.
    decoder = OrderDecoder(load_order_schema())
    exhausted = [to_cents(decoder.decode(r.value).price) for r in dlq if r.headers["dlq.reason"] == "retries-exhausted"]
    valid_total = int(produced["total"].replace(",", "").replace(".", ""))
    expected = RunningAverage(int(produced["valid"]) - len(exhausted), valid_total - sum(exhausted))
    assert result.stats == expected
    assert (got["average"], int(got["count"])) == (expected.describe(), expected.count)
    assert f"Running Average: {format_cents(expected.average_cents or 0)}" in consumed.stdout

    # The programs created the topics with the configured partition count.
    admin = AdminClient(client_config(settings.bootstrap_servers))
    topics = admin.list_topics(timeout=10).topics
    for name in (settings.orders_topic, settings.retry_topic, settings.dlq_topic):
        assert len(topics[name].partitions) == 2


def test_sigterm_finishes_the_batch_commits_and_exits_0(pipeline: Pipeline) -> None:
    consumer = pipeline.popen("consumer.py")
    try:
        read_until(consumer, "Consuming", 1)
        sent = pipeline.run("producer.py", "--count", "5", "--rate", "0", "--quiet")
        assert sent.returncode == 0, sent.stderr
        read_until(consumer, "✓ Processed", 5)
        consumer.send_signal(signal.SIGTERM)
        out, err = consumer.communicate(timeout=30)
    finally:
        consumer.kill()
    assert consumer.returncode == 0, err
    assert "Consumer summary: processed 5," in out
    assert pipeline.committed() == 5, "the offsets of the processed orders were committed"


def test_the_producer_stops_on_sigterm_flushes_and_reports(pipeline: Pipeline) -> None:
    producer = pipeline.popen("producer.py", "--rate", "50")
    try:
        read_until(producer, "Producing", 1)
        read_until(producer, "✓ Sent", 10)
        producer.send_signal(signal.SIGTERM)
        out, err = producer.communicate(timeout=30)
    finally:
        producer.kill()
    assert producer.returncode == 0, err
    produced = summary(PRODUCER_SUMMARY, out)
    assert int(produced["sent"]) >= 10
    assert produced["delivered"] == produced["sent"]
    assert produced["failed"] == "0"
    assert len(pipeline.read(pipeline.settings.orders_topic)) == int(produced["sent"])
