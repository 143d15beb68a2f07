"""dlq.py list against the real broker: what it shows is what the DLQ topic holds, filtered as asked."""

from __future__ import annotations

import json
from collections import Counter

from confluent_kafka import Producer

from tests.clients import client_config
from tests.integration.helpers import Pipeline
from tests.integration.raw_kafka import produce_raw


def test_dlq_list_shows_every_dead_letter_and_filters_them(pipeline: Pipeline) -> None:
    sent = pipeline.run(
        "producer.py", "--count", "200", "--rate", "0", "--invalid-rate", "0.1", "--poison-rate", "0.05", "--seed", "8"
    )
    assert sent.returncode == 0, sent.stderr
    consumed = pipeline.run("consumer.py", "--idle-exit", "3", "--quiet")
    assert consumed.returncode == 0, consumed.stderr
    dlq = pipeline.read(pipeline.settings.dlq_topic)
    reasons = Counter(record.headers["dlq.reason"] for record in dlq)
    assert reasons["validation"] > 0
    assert reasons["deserialization"] > 0

    listed = pipeline.run("dlq.py", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == len(dlq) + 1
    by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    assert lines[-1] == f"{len(dlq)} dead letters ({by_reason})"
    validation = [line for line in lines if " validation order O-" in line]
    assert len(validation) == reasons["validation"], "each invalid order's id is read from its value"

    as_json = pipeline.run("dlq.py", "list", "--reason", "deserialization", "--json")
    assert as_json.returncode == 0, as_json.stderr
    *objects, last = as_json.stdout.strip().splitlines()
    entries = [json.loads(line) for line in objects]
    assert len(entries) == reasons["deserialization"]
    assert {entry["reason"] for entry in entries} == {"deserialization"}
    assert all(entry["order_id"] is None and entry["original_topic"] for entry in entries)
    assert last == f"{reasons['deserialization']} dead letters (deserialization {reasons['deserialization']})"

    one = json.loads(pipeline.run("dlq.py", "list", "--reason", "validation", "--json").stdout.splitlines()[0])
    only = pipeline.run("dlq.py", "list", "--order-id", one["order_id"], "--since", "1h", "--limit", "5")
    assert only.stdout.strip().splitlines()[-1] == "1 dead letters (validation 1)"
    nothing = pipeline.run("dlq.py", "list", "--since", "2999-01-01")
    assert nothing.stdout.strip() == "0 dead letters"
    limited = pipeline.run("dlq.py", "list", "--limit", "2")
    assert len(limited.stdout.strip().splitlines()) == 3
    assert limited.stdout.strip().splitlines()[-1] == lines[-1], "the count covers all, not only the lines shown"


def test_dlq_list_names_a_bad_since_and_an_unreachable_broker(pipeline: Pipeline) -> None:
    bad = pipeline.run("dlq.py", "list", "--since", "yesterday")
    assert bad.returncode == 2
    assert "--since expects a duration back from now" in bad.stderr
    away = pipeline.with_env(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1").run("dlq.py", "list")
    assert away.returncode == 1
    assert "127.0.0.1:1" in away.stderr


def test_dlq_list_shows_the_worst_records_any_client_could_write_safely(pipeline: Pipeline) -> None:
    created = pipeline.run("consumer.py", "--idle-exit", "1")  # creates the topics
    assert created.returncode == 0, created.stderr
    dlq = pipeline.settings.dlq_topic
    producer = Producer(client_config(pipeline.settings.bootstrap_servers))
    forged: list[tuple[str, str | bytes | None]] = [
        ("dlq.reason", b"\x1b[2J\x1b[31mvalidation\xff"),
        ("error.message", b"\xe2\x80\xae" + b"x" * 200_000),
        ("dlq.failed-at", b"9" * 5000),
        ("original.partition", "４".encode()),
        ("original.offset", b"-9223372036854775809"),
        ("dlq.replayed-from", None),
    ]
    producer.produce(dlq, key=b"\xff\xfe", value=b"\x00\x00\x00\x00\x01garbage", partition=0, headers=forged)
    producer.produce(dlq, key=None, value=None, partition=0)  # a tombstone, no headers at all
    producer.produce(dlq, value=b"x", partition=0, headers=[("dlq.failed-at", b"9" * 19)])
    assert producer.flush(30) == 0
    # A header name that is not UTF-8 (confluent-kafka only sends text, so by hand).
    produce_raw(pipeline.settings.bootstrap_servers, dlq, 0, (b"K", b"v", [(b"dlq.reason\xff", b"validation")]))

    listed = pipeline.run("dlq.py", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[-1] == "4 dead letters (\\x1b[2J\\x1b[31mvalidation\ufffd 1, unknown 3)"
    first = lines[0]
    assert "\x1b" not in listed.stdout
    assert "\u202e" not in listed.stdout
    assert "(failed time unknown; from origin unknown" in first
    assert len(first) < 1300, "the error message is cut to 1 KiB"
    assert "failed 9999999999999999999 ms" in lines[2]
    as_json = pipeline.run("dlq.py", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert len([json.loads(line) for line in as_json.stdout.strip().splitlines()[:-1]]) == 4
