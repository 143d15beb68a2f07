"""Metrics and health: the health decision, librdkafka's statistics read defensively, METRICS_PORT,
the consumer's counters against the topics (an aborted transaction counted once), and the HTTP edge."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from config import load_settings
from orderpipe.core.health import HEALTH_INTERVAL_S, Health, brokers_up
from orderpipe.core.ports import TP
from orderpipe.errors import ConfigError
from orderpipe.kafka.clients import statistics_config
from orderpipe.model.money import RunningAverage
from orderpipe.observe.console import QUIET, Console
from orderpipe.observe.metrics import ConsumerMetrics, ProducerMetrics
from orderpipe.observe.metrics_http import serving
from orderpipe.programs.consumer_app import ConsumerOptions, OrderConsumer
from orderpipe.programs.producer_app import ProducerOptions, ProducerSummary, run_producer
from tests.integration.helpers import wait_for
from tests.unit.mock_cluster import MockCluster
from tests.unit.twin_helpers import SETTINGS, audit, new_cluster, produce_orders, run, turn_until, twin_consumer

ON = replace(SETTINGS, metrics_port=("127.0.0.1", 0))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stats(*states: str, source: str = "learned") -> str:
    brokers = {f"b{n}": {"state": state, "source": source, "nodeid": n} for n, state in enumerate(states)}
    return json.dumps({"name": "rdkafka#consumer-1", "brokers": brokers})


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# The health decision.


def test_health_is_starting_until_the_program_runs_and_librdkafka_reported_once() -> None:
    clock = FakeClock()
    health = Health("127.0.0.1:9092", clock)
    assert health.check() == (False, "starting")
    health.start()
    assert health.check() == (False, "starting")
    health.on_stats(stats("UP"))
    assert health.check() == (True, "ok")


def test_health_names_the_broker_address_while_no_broker_is_up_and_recovers() -> None:
    health = Health("127.0.0.1:9092,127.0.0.1:9093", FakeClock())
    health.start()
    health.on_stats(stats("DOWN", "CONNECT"))
    assert health.check() == (False, "broker unreachable at 127.0.0.1:9092,127.0.0.1:9093")
    health.on_stats("not json")  # unusable statistics change nothing
    assert health.check()[0] is False
    health.on_stats(stats("DOWN", "UP"))
    assert health.check() == (True, "ok")


def test_a_consumer_without_a_commit_or_an_idle_turn_for_the_health_interval_is_unhealthy() -> None:
    clock = FakeClock()
    health = Health("k:9092", clock, needs_commits=True)
    health.start()
    health.on_stats(stats("UP"))
    clock.now += HEALTH_INTERVAL_S
    assert health.check() == (True, "ok")
    clock.now += 12
    assert health.check() == (False, "no transaction committed for 42s")
    health.progress()
    assert health.check() == (True, "ok")
    producer = Health("k:9092", clock)  # the producer commits nothing: only the connection counts
    producer.start()
    producer.on_stats(stats("UP"))
    clock.now += 1000
    assert producer.check() == (True, "ok")


def test_a_stuck_call_and_a_failure_come_first() -> None:
    stuck: list[str | None] = [None]
    health = Health("k:9092", FakeClock(), needs_commits=True, overdue=lambda: stuck[0])
    health.start()
    health.on_stats(stats("UP"))
    stuck[0] = "the Kafka call to send the offsets has been stuck for 16s"
    assert health.check() == (False, "stuck: the Kafka call to send the offsets has been stuck for 16s")
    health.failure = "failed: transactional id g.h.0 was fenced"
    assert health.check() == (False, "failed: transactional id g.h.0 was fenced")


# librdkafka's statistics, read defensively.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (stats("UP"), True),
        (stats("DOWN", "UP"), True),
        (stats("DOWN", "TRY_CONNECT", "AUTH_HANDSHAKE"), False),
        (stats(), False),
        (stats("UP", source="internal"), False),  # librdkafka's own bookkeeping is no connection
        (stats("UP", source="logical"), False),
        (stats("UP").encode(), True),
        ("", None),
        ("not json", None),
        ("\udcff", None),
        (b"\xff\xfe{", None),
        ("[" * 100_000 + "]" * 100_000, None),  # too deep for the parser
        ("null", None),
        ("[]", None),
        ('"brokers"', None),
        ('{"brokers": []}', None),
        ('{"brokers": {"b": "UP"}}', False),
        ('{"brokers": {"b": {"state": ["UP"]}}}', False),
        ('{"brokers": {"b": {"state": "UP", "source": {}}}}', True),
        ('{"brokers": {"b": null, "c": {"state": "UP"}}}', True),
        ("1e999999", None),
        (None, None),
        (42, None),
    ],
)
def test_brokers_up_reads_any_input_without_raising(text: object, expected: bool | None) -> None:
    assert brokers_up(text) is expected


def test_huge_statistics_are_read() -> None:
    brokers = {f"b{n}": {"state": "DOWN", "source": "learned", "pad": "x" * 1000} for n in range(5000)}
    brokers["last"] = {"state": "UP", "source": "learned"}
    assert brokers_up(json.dumps({"brokers": brokers})) is True


def test_statistics_are_asked_for_only_with_a_callback() -> None:
    assert statistics_config(None) == {}
    health = Health("k:9092", FakeClock())
    assert statistics_config(health.on_stats) == {"statistics.interval.ms": 2000, "stats_cb": health.on_stats}


# METRICS_PORT and --metrics-port.


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("  ", None),
        ("9401", ("0.0.0.0", 9401)),
        ("0", ("0.0.0.0", 0)),
        ("127.0.0.1:9402", ("127.0.0.1", 9402)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9401", ("::1", 9401)),
    ],
)
def test_metrics_port_takes_a_port_or_host_and_port(raw: str, expected: tuple[str, int] | None) -> None:
    assert load_settings({"METRICS_PORT": raw}, environ={}, env_file=None).metrics_port == expected


@pytest.mark.parametrize(
    "raw", ["x", "65536", "-1", ":80", "host:", "a b:1", "::1:80", "[::1]", "1,2:3", "9" * 30, "http://h:1"]
)
def test_a_bad_metrics_port_is_named_with_what_was_expected(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, environ={"METRICS_PORT": raw}, env_file=None)
    assert str(caught.value) == (
        "METRICS_PORT must be empty (off), a port from 0 to 65535 or HOST:PORT, for example 9401 or "
        f"127.0.0.1:9401, got {raw!r}"
    )


def test_the_flag_wins_over_the_environment() -> None:
    settings = load_settings({"METRICS_PORT": "9402"}, environ={"METRICS_PORT": "9401"}, env_file=None)
    assert settings.metrics_port == ("0.0.0.0", 9402)


# The series.


def test_lag_gauges_follow_the_assignment_and_unknown_lags_are_kept() -> None:
    clock = FakeClock()
    metrics = ConsumerMetrics(Health("k:9092", clock), clock)
    value = metrics.registry.get_sample_value
    lags: list[dict[TP, int] | None] = [{("orders", 0): 5, ("orders", 1): 0}]
    metrics.refresh(RunningAverage, lambda: lags[0], idle=True)
    assert value("orderpipe_consumer_lag_records", {"topic": "orders", "partition": "0"}) == 5
    lags[0] = {("orders", 1): 7}
    metrics.refresh(RunningAverage, lambda: lags[0], idle=True)
    assert value("orderpipe_consumer_lag_records", {"topic": "orders", "partition": "1"}) == 0  # not yet due
    clock.now += 5
    metrics.refresh(RunningAverage, lambda: lags[0], idle=True)
    assert value("orderpipe_consumer_lag_records", {"topic": "orders", "partition": "0"}) is None
    assert value("orderpipe_consumer_lag_records", {"topic": "orders", "partition": "1"}) == 7
    lags[0] = None
    clock.now += 5
    metrics.refresh(RunningAverage, lambda: lags[0], idle=True)
    assert value("orderpipe_consumer_lag_records", {"topic": "orders", "partition": "1"}) == 7


def test_the_average_gauge_is_refreshed_at_most_once_a_second() -> None:
    clock = FakeClock()
    metrics = ConsumerMetrics(Health("k:9092", clock), clock)
    asked: list[float] = []

    def average() -> RunningAverage:
        asked.append(clock.now)
        return RunningAverage(3, 1000)

    for _ in range(5):
        metrics.refresh(average, dict, idle=False)
    clock.now += 1
    metrics.refresh(average, dict, idle=False)
    assert asked == [100.0, 101.0]
    assert metrics.registry.get_sample_value("orderpipe_running_average_price_dollars") == 3.33


def test_the_producer_counts_acknowledged_and_failed_orders_and_their_latency() -> None:
    metrics = ProducerMetrics(Health("k:9092", FakeClock()))
    value = metrics.registry.get_sample_value
    metrics.delivered(True, 0.004)
    metrics.delivered(True, None)
    metrics.delivered(False, 0.5)
    metrics.undelivered(3)
    assert value("orderpipe_orders_produced_total") == 2
    assert value("orderpipe_orders_failed_total") == 4
    assert value("orderpipe_produce_latency_seconds_count") == 2
    assert value("orderpipe_produce_latency_seconds_sum") == pytest.approx(0.504)


# The consumer's counters, on the twin: committed batches only.


def test_the_consumer_counts_committed_work_only_and_equals_the_topics() -> None:
    cluster = new_cluster(ON)
    produce_orders(cluster, 120, seed=21, invalid_rate=0.1, poison_rate=0.05, settings=ON)
    cluster.faults.fail("commit_transaction", "abortable")
    cluster.faults.fail("send_offsets", "abortable")
    twin = twin_consumer(cluster, settings=ON, failure_rate=0.5, seed=21)
    summary = run(twin)
    assert summary.aborted == 2
    metrics = twin.consumer.metrics
    assert metrics is not None
    value = metrics.registry.get_sample_value
    result = audit(cluster, ON)
    assert result.exact, result.describe()
    retries = len(cluster.records(ON.retry_topic))
    assert value("orderpipe_orders_processed_total") == result.stats.count == summary.processed
    assert value("orderpipe_orders_retried_total") == retries == summary.retried > 0
    for reason in ("deserialization", "validation", "retries-exhausted"):
        dead = value("orderpipe_orders_dead_lettered_total", {"reason": reason})
        assert dead == result.dlq_by_reason.get(reason, 0) > 0
    average = result.stats.average_cents
    assert average is not None
    assert value("orderpipe_running_average_price_dollars") == average / 100
    assert value("orderpipe_batch_records_sum") == summary.handled
    # Every commit is timed; batches that only rewrite stats values hold no records.
    commits, batches = value("orderpipe_transaction_commit_seconds_count"), value("orderpipe_batch_records_count")
    assert commits is not None
    assert batches is not None
    assert commits >= batches > 0


def test_a_twin_consumer_serves_its_series_while_it_runs() -> None:
    cluster = new_cluster(ON)
    produce_orders(cluster, 30, seed=4, settings=ON)
    twin = twin_consumer(cluster, settings=ON)
    with twin.consumer.open() as loop:
        url = re.search(r"Metrics on (http://\S+)/metrics \(health: /healthz\)", twin.out.getvalue())
        assert url is not None
        metrics = twin.consumer.metrics
        assert metrics is not None
        value = metrics.registry.get_sample_value
        lag = {"topic": ON.orders_topic, "partition": "0"}
        turn_until(loop, lambda: value("orderpipe_consumer_lag_records", lag) is not None)
        status, text = get(f"{url.group(1)}/metrics")
        found = samples(text)
        assert status == 200
        assert found[("orderpipe_orders_processed_total", ())] > 0
        assert ("orderpipe_orders_dead_lettered_total", (("reason", "retries-exhausted"),)) in found
        lag_names = {name for name, labels in found if name == "orderpipe_consumer_lag_records" and labels}
        assert lag_names == {"orderpipe_consumer_lag_records"}
        # The twin has no librdkafka statistics: the connection is never confirmed.
        assert get(f"{url.group(1)}/healthz") == (503, "starting\n")
        metrics.health.on_stats(stats("UP"))
        assert get(f"{url.group(1)}/healthz") == (200, "ok\n")


# The HTTP edge.


@contextmanager
def served(health: Health) -> Iterator[tuple[str, CollectorRegistry]]:
    metrics = ProducerMetrics(health)
    with serving(("127.0.0.1", 0), metrics.registry, health) as url:
        yield url, metrics.registry


def test_the_server_answers_metrics_and_healthz_on_any_free_port_and_closes() -> None:
    health = Health("127.0.0.1:9092", FakeClock())
    with served(health) as (url, _registry):
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", url)
        status, text = get(f"{url}/metrics")
        assert status == 200
        assert samples(text)[("orderpipe_orders_produced_total", ())] == 0
        assert get(f"{url}/healthz") == (503, "starting\n")
        health.start()
        health.on_stats(stats("DOWN"))
        assert get(f"{url}/healthz") == (503, "broker unreachable at 127.0.0.1:9092\n")
        health.on_stats(stats("UP"))
        assert get(f"{url}/healthz") == (200, "ok\n")
        # Scrapes from many threads at once.
        answers: list[int] = []
        threads = [threading.Thread(target=lambda: answers.append(get(f"{url}/metrics")[0])) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [200] * 8
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/healthz", timeout=5)


def test_a_port_already_taken_is_named() -> None:
    health = Health("k:9092", FakeClock())
    with served(health) as (url, registry):
        port = int(url.rsplit(":", 1)[1])
        taken = rf"METRICS_PORT: cannot serve metrics on http://127.0.0.1:{port} "
        with pytest.raises(ConfigError, match=taken), serving(("127.0.0.1", port), registry, health):
            pass


# Both programs on librdkafka's mock cluster, with metrics on.


def test_the_worst_requests_a_client_could_send_leave_the_server_answering() -> None:
    health = Health("127.0.0.1:9092", FakeClock())
    with served(health) as (url, _registry):
        host, port = url.removeprefix("http://").split(":")
        for request in (
            b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n",  # a TLS hello, binary bytes
            b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",  # a request line past the server's limit
            b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # more headers than allowed
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",  # never finished: the client leaves
        ):
            with socket.create_connection((host, int(port)), timeout=5) as client:
                client.sendall(request)
                client.shutdown(socket.SHUT_WR)
                client.recv(65536)
        # A client that holds a connection open takes one thread, not the server.
        with socket.create_connection((host, int(port)), timeout=5):
            assert get(f"{url}/healthz") == (503, "starting\n")
            assert get(f"{url}/metrics")[0] == 200


def test_the_producer_serves_its_series_and_is_healthy_once_librdkafka_reports_a_broker_up(
    mock_cluster: MockCluster,
) -> None:
    settings = mock_cluster.settings(METRICS_PORT="127.0.0.1:0")
    out = io.StringIO()
    stop = threading.Event()
    done: list[ProducerSummary] = []
    thread = threading.Thread(
        target=lambda: done.append(
            run_producer(settings, ProducerOptions(rate=200, seed=3), Console(QUIET, out=out, err=out), stop)
        )
    )
    thread.start()
    try:
        url = wait_for(lambda: re.search(r"Metrics on (http://\S+)/metrics", out.getvalue()))
        base = url.group(1)
        wait_for(lambda: get(f"{base}/healthz") == (200, "ok\n"))
        wait_for(lambda: samples(get(f"{base}/metrics")[1])[("orderpipe_orders_produced_total", ())] > 0)
    finally:
        stop.set()
        thread.join(30)
    assert done[0].delivered > 0
    assert done[0].failed == 0


def test_the_consumer_on_the_mock_cluster_asks_for_statistics_and_is_healthy(mock_cluster: MockCluster) -> None:
    settings = mock_cluster.settings(METRICS_PORT="127.0.0.1:0")
    out = io.StringIO()
    consumer = OrderConsumer(settings, ConsumerOptions(), Console(QUIET, out=out, err=out), lambda _order: None)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        url = wait_for(lambda: re.search(r"Metrics on (http://\S+)/metrics", out.getvalue()))
        wait_for(lambda: get(f"{url.group(1)}/healthz") == (200, "ok\n"))
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
