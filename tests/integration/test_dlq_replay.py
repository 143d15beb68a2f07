"""dlq.py replay against the real broker: exactly once, across reruns, kills and filters; --dry-run writes nothing."""

from __future__ import annotations

import signal
from collections import Counter

from confluent_kafka import Producer

from orderpipe.core.replay import ledger_topic
from orderpipe.kafka.clients import connect_admin
from tests.clients import client_config
from tests.integration.helpers import Output, Pipeline, audit

REPLAYED = "dlq.replayed-from"


def origins(pipeline: Pipeline) -> Counter[str]:
    """How often each DLQ record was put back on orders, by its provenance."""
    return Counter(o for r in pipeline.read(pipeline.settings.orders_topic) if (o := r.header(REPLAYED)) is not None)


def topics(pipeline: Pipeline) -> set[str]:
    return set(connect_admin(pipeline.settings).list_topics(timeout=10).topics)


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_replaying_retries_exhausted_after_the_outage_counts_every_valid_order_once(pipeline: Pipeline) -> None:
    sent = pipeline.run("producer.py", "--count", "400", "--rate", "0", "--invalid-rate", "0.1", "--seed", "3")
    assert sent.returncode == 0, sent.stderr
    outage = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet", "--failure-rate", "0.6", "--seed", "4")
    assert outage.returncode == 0, outage.stderr
    before = audit(pipeline)
    exhausted = before.dlq_by_reason["retries-exhausted"]
    assert exhausted > 0
    assert before.exact, before.describe()
    assert before.stats.count < before.valid, "the outage left valid orders uncounted"

    dry = pipeline.run("dlq.py", "replay", "--reason", "retries-exhausted", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert last_line(dry.stdout) == f"would replay {exhausted} records"
    assert dry.stdout.count("would replay ") == exhausted + 1
    assert not origins(pipeline), "--dry-run writes nothing"
    assert ledger_topic(pipeline.settings.dlq_topic) not in topics(pipeline), "nor creates the ledger"

    replay = pipeline.run("dlq.py", "replay", "--reason", "retries-exhausted")
    assert replay.returncode == 0, replay.stderr
    assert last_line(replay.stdout) == f"replayed {exhausted} records"
    twice = pipeline.run("dlq.py", "replay", "--reason", "retries-exhausted")
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout.splitlines() == [
        f"{exhausted} matching records were replayed before and are skipped",
        "replayed 0 records",
    ]

    after = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet")
    assert after.returncode == 0, after.stderr
    assert set(origins(pipeline).values()) == {1}
    final = audit(pipeline)
    assert final.exact, final.describe()
    assert final.stats.count == final.valid, "every valid order counted once: " + final.describe()
    stats = pipeline.run("consumer.py", "--stats")
    assert f"count {final.valid}, sum_cents {final.expected.sum_cents}" in stats.stdout


def test_a_replay_killed_midway_and_run_again_replays_each_record_once(pipeline: Pipeline) -> None:
    sent = pipeline.run("producer.py", "--count", "3000", "--rate", "0", "--invalid-rate", "1", "--quiet")
    assert sent.returncode == 0, sent.stderr
    consumed = pipeline.run("consumer.py", "--idle-exit", "2", "--quiet")
    assert consumed.returncode == 0, consumed.stderr
    assert len(pipeline.read(pipeline.settings.dlq_topic)) == 3000

    killed = Output(pipeline.popen("dlq.py", "replay", "--batch-size", "10"))
    killed.wait_for_line("↻ replayed", timeout=60)
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(30)
    partial = origins(pipeline)
    assert 0 < sum(partial.values()) < 3000, "killed midway"

    rerun = pipeline.run("dlq.py", "replay", "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    done = origins(pipeline)
    assert len(done) == 3000
    assert set(done.values()) == {1}, "each dead letter replayed once in total"
    assert rerun.stdout.splitlines() == [
        f"{sum(partial.values())} matching records were replayed before and are skipped",
        f"replayed {3000 - sum(partial.values())} records",
    ]


def test_replays_with_two_filters_in_sequence_and_a_record_that_fails_again(pipeline: Pipeline) -> None:
    sent = pipeline.run(
        "producer.py", "--count", "300", "--rate", "0", "--invalid-rate", "0.1", "--poison-rate", "0.05", "--seed", "5"
    )
    assert sent.returncode == 0, sent.stderr
    consumed = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet", "--failure-rate", "0.6", "--seed", "6")
    assert consumed.returncode == 0, consumed.stderr
    dlq = pipeline.read(pipeline.settings.dlq_topic)
    by_reason = Counter(r.header("dlq.reason") for r in dlq)
    assert set(by_reason) == {"validation", "deserialization", "retries-exhausted"}
    # A dead letter with the producer's own header and a stale provenance, written by hand.
    model = next(r for r in dlq if r.header("dlq.reason") == "validation")
    producer = Producer(client_config(pipeline.settings.bootstrap_servers))
    forged: list[tuple[str, str | bytes | None]] = [
        *model.headers.items(),
        ("trace-id", "t-1"),
        (REPLAYED, "elsewhere:0:0"),
    ]
    producer.produce(pipeline.settings.dlq_topic, key=b"K-forged", value=model.value, partition=0, headers=forged)
    assert producer.flush(30) == 0
    validation = by_reason["validation"] + 1

    first = pipeline.run("dlq.py", "replay", "--reason", "validation")
    assert first.returncode == 0, first.stderr
    assert last_line(first.stdout) == f"replayed {validation} records"
    rest = pipeline.run("dlq.py", "replay")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.splitlines()[-2:] == [
        f"{validation} matching records were replayed before and are skipped",
        f"replayed {len(dlq) + 1 - validation} records",
    ]
    put_back = [r for r in pipeline.read(pipeline.settings.orders_topic) if r.header(REPLAYED)]
    assert len(put_back) == len(dlq) + 1
    assert len({r.header(REPLAYED) for r in put_back}) == len(dlq) + 1
    traced = next(r for r in put_back if r.header("trace-id") == "t-1")
    assert traced.header_names == ("trace-id", REPLAYED), "the pipeline's headers and the old provenance removed"
    assert (traced.key, traced.value) == (b"K-forged", model.value)

    again = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet")
    assert again.returncode == 0, again.stderr
    provenance = {r.header(REPLAYED) for r in put_back}
    failed_again = [r for r in pipeline.read(pipeline.settings.dlq_topic) if r.header(REPLAYED) in provenance]
    assert Counter(r.header("dlq.reason") for r in failed_again) == {
        "validation": validation,
        "deserialization": by_reason["deserialization"],
    }, "replayed records that fail again are dead-lettered again, their provenance in their headers"
    final = audit(pipeline)
    assert final.exact, final.describe()
    assert final.stats.count == final.valid, final.describe()


def test_a_forged_ledger_never_makes_a_record_replayed_twice(pipeline: Pipeline) -> None:
    sent = pipeline.run("producer.py", "--count", "20", "--rate", "0", "--invalid-rate", "1")
    assert sent.returncode == 0, sent.stderr
    assert pipeline.run("consumer.py", "--idle-exit", "2", "--quiet").returncode == 0
    dlq = pipeline.settings.dlq_topic
    first = pipeline.run("dlq.py", "replay", "--order-id", "nobody")  # creates the ledger, replays nothing
    assert last_line(first.stdout) == "replayed 0 records", first.stderr
    # (A record without a key is refused by the broker: the ledger is compacted.)
    producer = Producer(client_config(pipeline.settings.bootstrap_servers))
    for key, value in [
        (f"{dlq}:0:0".encode(), b"not a time"),  # unreadable: counts as replayed
        (f"{dlq}:0:1".encode(), b"1"),  # another record's time: not this one
        (b"\xff" * 1000, b"x" * 500_000),
        (f"{dlq}:0:2".encode(), None),
    ]:
        producer.produce(ledger_topic(dlq), key=key, value=value, partition=0)
    assert producer.flush(30) == 0
    assert len(pipeline.read(ledger_topic(dlq))) == 4

    replay = pipeline.run("dlq.py", "replay", "--quiet")
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.splitlines() == [
        "1 matching records were replayed before and are skipped",
        "1 ledger entries were unreadable; their records count as replayed",
        "replayed 19 records",
    ]
    assert set(origins(pipeline).values()) == {1}


def test_the_worst_dead_letters_a_client_could_write_are_replayed_or_skipped_safely(pipeline: Pipeline) -> None:
    created = pipeline.run("consumer.py", "--idle-exit", "1")  # creates the topics (3 partitions each)
    assert created.returncode == 0, created.stderr
    dlq, orders = pipeline.settings.dlq_topic, pipeline.settings.orders_topic
    producer = Producer(client_config(pipeline.settings.bootstrap_servers, {"message.max.bytes": 1_048_576}))
    forged_partitions = [b"-1", "４".encode(), b"9" * 30, b"3", b"\xff", b"1"]
    for n, partition in enumerate(forged_partitions):
        headers: list[tuple[str, str | bytes | None]] = [("original.partition", partition), ("retry.attempt", b"3")]
        producer.produce(dlq, key=f"K-{n}".encode(), value=b"poison", partition=0, headers=headers)
    # Fits the DLQ topic (max.message.bytes 1048588), but not the producer's 1,000,000 once the provenance is added.
    producer.produce(dlq, key=b"K-big", value=b"x" * 1_000_500, partition=0)
    producer.produce(dlq, key=None, value=None, partition=0)  # a tombstone: replayed as one
    assert producer.flush(30) == 0

    replay = pipeline.run("dlq.py", "replay", "--quiet")

    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.splitlines() == [
        "1 matching records are skipped because with the dlq.replayed-from header they would be larger than the "
        "1000000 bytes a producer may send",
        "replayed 7 records",
    ]
    put_back = {r.key: r for r in pipeline.read(orders) if r.header(REPLAYED)}
    assert put_back[b"K-5"].partition == 1, "a readable original partition is kept; forged ones go by key"
    assert all(r.header("retry.attempt") is None for r in put_back.values()), "the pipeline's headers removed"
    assert len(put_back) == 7
    again = pipeline.run("dlq.py", "replay", "--quiet")
    assert again.stdout.splitlines()[-1] == "replayed 0 records"
