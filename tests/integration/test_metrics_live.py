"""/metrics and /healthz of producer.py and consumer.py on the real broker.

The counters are scraped while orders flow and once all of them are handled, and
judged against an independent read of the topics (tests/audit.py). The health test
stops the one local broker for a few seconds (`scripts/broker.sh stop-kafka`) and
starts it again (`scripts/broker.sh up`), so other tests running at the same time
see a short outage.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import (
    BOOTSTRAP,
    CONSUMER_SUMMARY,
    PRODUCER_SUMMARY,
    ROOT,
    Output,
    Pipeline,
    audit,
    summary,
    wait_for,
)

METRICS_LINE = re.compile(r"Metrics on http://[^:]+:(?P<port>\d+)/metrics \(health: /healthz\)")
COUNTERS = (
    "orderpipe_orders_processed_total",
    "orderpipe_orders_retried_total",
    'orderpipe_orders_dead_lettered_total{reason="deserialization"}',
    'orderpipe_orders_dead_lettered_total{reason="validation"}',
    'orderpipe_orders_dead_lettered_total{reason="retries-exhausted"}',
    "orderpipe_transaction_commit_seconds_count",
    "orderpipe_batch_records_sum",
)
REASONS = ("deserialization", "validation", "retries-exhausted")
COUNT = 600


def base_url(output: Output) -> str:
    """The program's metrics address, from its start line (port 0 asked for any free port)."""

    def port() -> str | None:
        found = (METRICS_LINE.search(line) for line in list(output.lines))
        return next((match.group("port") for match in found if match), None)

    return f"http://127.0.0.1:{wait_for(port, 60, 'the Metrics on ... line')}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics, as `name` or `name{label="value",...}`."""
    status, text = get(f"{url}/metrics")
    assert status == 200, text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def dead_lettered(values: dict[str, float]) -> float:
    return sum(values[f'orderpipe_orders_dead_lettered_total{{reason="{reason}"}}'] for reason in REASONS)


def stop(process: subprocess.Popen[Any], output: Output) -> str:
    process.send_signal(signal.SIGTERM)
    text = output.text(60)
    assert process.returncode == 0, "".join(output.errors)
    return text


def scrape_while_running(
    producer: subprocess.Popen[str], consumer_url: str, producer_url: str
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Scrapes of both programs until the producer has ended (its server closes with it)."""
    consumer_seen: list[dict[str, float]] = []
    producer_seen: list[dict[str, float]] = []
    while producer.poll() is None:
        time.sleep(0.1)  # pacing the scrapes, not waiting for anything
        consumer_seen.append(scrape(consumer_url))
        try:
            producer_seen.append(scrape(producer_url))
        except (urllib.error.URLError, ConnectionError):
            wait_for(lambda: producer.poll() is not None, 10, "the producer to end")  # its server closed as it ended
    return consumer_seen, producer_seen


def assert_growing(seen: list[dict[str, float]], names: tuple[str, ...]) -> None:
    """Each series never went down across the scrapes, and the first one went up."""
    assert len(seen) >= 3
    for name in names:
        series = [values[name] for values in seen]
        assert series == sorted(series), (name, series)
    assert seen[-1][names[0]] > 0


def test_the_counters_move_while_orders_flow_and_equal_the_topics_once_all_are_handled(pipeline: Pipeline) -> None:
    # With a failure rate of 0.45 a valid order runs out of its 3 retries with probability 0.45^4 (4%):
    # about 20 of the 500 valid orders, so every dead-letter reason shows up.
    consumer = pipeline.popen("consumer.py", "--metrics-port", "0", "--failure-rate", "0.45", "--seed", "7")
    consumed = Output(consumer)
    try:
        consumer_url = base_url(consumed)
        producer = pipeline.popen(
            "producer.py",
            *("--metrics-port", "0", "--count", str(COUNT), "--rate", "150"),
            *("--invalid-rate", "0.1", "--poison-rate", "0.05", "--seed", "7"),
        )
        produced = Output(producer)
        producer_url = base_url(produced)

        # While orders flow: every counter of both programs only grows, and they do grow.
        consumer_seen, producer_seen = scrape_while_running(producer, consumer_url, producer_url)
        produced_text = produced.text(60)
        assert producer.returncode == 0, "".join(produced.errors)
        assert_growing(consumer_seen, COUNTERS)
        assert_growing(producer_seen, ("orderpipe_orders_produced_total", "orderpipe_produce_latency_seconds_count"))
        sent = summary(PRODUCER_SUMMARY, produced_text)
        delivered, failed = int(sent["delivered"]), int(sent["failed"])
        assert delivered == COUNT - failed
        last = producer_seen[-1]
        assert last["orderpipe_orders_produced_total"] <= delivered
        assert last["orderpipe_orders_failed_total"] == 0 == failed

        # Once every order is handled (the consumer still running), the counters are what the topics hold.
        def all_handled() -> dict[str, float] | None:
            values = scrape(consumer_url)
            done = values["orderpipe_orders_processed_total"] + dead_lettered(values) == delivered
            return values if done else None

        values = wait_for(all_handled, 120, f"{delivered} orders processed or dead-lettered")
        settings = pipeline.settings
        result = audit(pipeline)
        assert result.exact, result.describe()
        reasons = Counter(record.header("dlq.reason") for record in pipeline.read(settings.dlq_topic))
        retries = pipeline.read(settings.retry_topic)
        assert values["orderpipe_orders_processed_total"] == result.stats.count
        for reason in REASONS:
            assert values[f'orderpipe_orders_dead_lettered_total{{reason="{reason}"}}'] == reasons[reason] > 0
        assert values["orderpipe_orders_retried_total"] == len(retries) > 0
        average = result.stats.average_cents
        assert average is not None
        assert round(values["orderpipe_running_average_price_dollars"] * 100) == average
        assert values["orderpipe_batch_records_count"] > 0
        assert values["orderpipe_transaction_commit_seconds_count"] >= values["orderpipe_batch_records_count"]

        assigned = {
            f'orderpipe_consumer_lag_records{{partition="{partition}",topic="{topic}"}}'
            for topic in (settings.orders_topic, settings.retry_topic)
            for partition in range(settings.orders_partitions)
        }

        def lag_gauges() -> bool:  # refreshed every 5 s: polled for, until every partition is read to its end
            found = {
                name: value for name, value in scrape(consumer_url).items() if name.startswith("orderpipe_consumer_lag")
            }
            return set(found) == assigned and not any(found.values())

        wait_for(lag_gauges, 30, "a lag gauge of 0 per assigned partition")
        assert get(f"{consumer_url}/healthz") == (200, "ok\n")
        got = summary(CONSUMER_SUMMARY, stop(consumer, consumed))
        assert int(got["processed"]) == values["orderpipe_orders_processed_total"]
    finally:
        if consumer.poll() is None:
            consumer.kill()


def broker_script(command: str) -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "broker.sh"), command], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_healthz_says_the_broker_is_unreachable_while_it_is_stopped_and_ok_once_it_is_back(pipeline: Pipeline) -> None:
    consumer = pipeline.popen("consumer.py", "--metrics-port", "0")
    output = Output(consumer)
    try:
        url = base_url(output)
        wait_for(lambda: get(f"{url}/healthz") == (200, "ok\n"), 60, "/healthz to answer 200 ok")
        broker_script("stop-kafka")
        try:
            answer = wait_for(
                lambda: (found := get(f"{url}/healthz"))[0] == 503 and found, 60, "/healthz to answer 503"
            )
            assert answer == (503, f"broker unreachable at {BOOTSTRAP}\n")
        finally:
            broker_script("up")
        wait_for(lambda: get(f"{url}/healthz") == (200, "ok\n"), 120, "/healthz to answer 200 ok again")
        stop(consumer, output)
    finally:
        if consumer.poll() is None:
            consumer.kill()
