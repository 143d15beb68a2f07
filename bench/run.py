"""The pipeline's speed and memory, side by side with the C and Java clients and the bare binding.

Run it with `scripts/bench.sh` (which sets everything up); it needs a running broker.
Every run gets fresh topics and groups. Tiers, interleaved A B C ... for each round:

* C ceiling: kcat producing and consuming pre-made payloads of our records' sizes.
* Java ceiling: Kafka's ProducerPerformance and ConsumerPerformance.
* binding: confluent-kafka producing pre-encoded orders, consuming without decoding.
* ours: producer.py --rate 0, consumer.py at-least-once and exactly-once.

Then producer and consumer together (end to end), the latency at a fixed offered
rate (at-least-once, and exactly-once over a long run that also watches memory).
Prints a markdown report (and writes it with --write).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition, libversion
from confluent_kafka import __version__ as binding_version
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from orderpipe.model.generator import OrderFactory
from orderpipe.serde.schemas import load_order_schema
from tests.clients import NO_AUTO_CREATE, client_config

ROOT = Path(__file__).resolve().parents[1]

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
KAFKA_VERSION = "4.1.1"
JAVA_LIBS = ROOT / ".cache" / "bench" / f"kafka-tools-{KAFKA_VERSION}"
PARTITIONS = 3
# The pipeline's producer settings (orderpipe.kafka.clients.producer_config), for kcat and Java.
PRODUCER_SETTINGS = {
    "acks": "all",
    "enable.idempotence": "true",
    "max.in.flight.requests.per.connection": "1",
    "linger.ms": "5",
}
# kcat's librdkafka (2.0.2) stops fetching a partition for a second whenever its local
# queue holds queued.min.messages; a ceiling should not wait, so the limit is set out of reach.
KCAT_CONSUMER_SETTINGS = ["-X", "queued.min.messages=10000000"]
THROUGHPUT = re.compile(r"Throughput: (\d+) \w+ in ([\d.]+)s")
RSS_SAMPLE_S = 5.0
# Enough for each capped consumer to run for several seconds at a quarter of a core.
SCALE_OUT_ORDERS = 300_000
SCALE_OUT_ROUNDS = 3
SCALE_OUT_NOTE = (
    "bench/scale_out.py on the single broker: each consumer in a cgroup of its own, capped at a share of one "
    "core, standing for a machine; 1, 2 and 3 exactly-once consumers in one group on 6 partitions, the "
    "producer and the broker not capped, the group sizes taking turns for 3 rounds; an audit after each run "
    'checks every order was counted once. "sent in" is the producer\'s time: a group fed by the producer '
    "read at 90% of its rate or more, and its figure is the producer's."
)
WIRE_FORMATS_NOTE = (
    "bench/wire_formats.py, as the producer's target is set: the binding and producer.py without and with the "
    "schema registry taking turns on fresh topics, each program's own orders/s (first send to last "
    "acknowledgement), the best of 2 rounds."
)
REFUSED_NOTE = (
    "bench/refused.py: the consumer's work per poll of 500 real confluent-kafka messages (made into records "
    "and decided, no broker), for the records the fast lane refuses and for records with headers, the base "
    "commit's code beside this checkout's in two processes pinned to one core, taking turns pass by pass."
)
LATENCY_NOTE = (
    "bench/compare.py with --only-latency: the at-least-once consumer's p99 at 10,000 orders/s offered by this "
    "checkout's producer, the base commit's consumer and this checkout's taking turns, 30 s each. The latency "
    "target was set against the base's figure on the day it was measured; on this shared machine only a "
    "figure measured beside it tells whether a change made it worse."
)
PROFILE_NOTE = (
    "py-spy samples each program 250 times a second while it holds the GIL (bench/profile.py): the share of "
    "samples with the function on the stack (inclusive) and running it (own), start-up included; the "
    "base commit's first, then this checkout's."
)
LATENCY = re.compile(r"Latency: p50 (\d+) ms, p99 (\d+) ms, p99.9 (\d+) ms, max (\d+) ms over (\d+)")


@dataclass
class Run:
    """One process: what it printed and what the kernel measured."""

    stdout: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rss_samples_mb: list[tuple[float, float]] = field(default_factory=list)


class Process:
    """A child process whose CPU time and peak RSS come from wait4, its RSS sampled meanwhile."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str] | None = None, stdin: Path | None = None, cwd: Path = ROOT
    ) -> None:
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process)
        self._started = time.monotonic()
        self._stdin = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115
        self.popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(cwd), **(env or {})},
            stdin=self._stdin,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self._samples: list[tuple[float, float]] = []
        self.ended = 0.0  # epoch seconds when the process was seen to exit
        self.peak_rss_mb = 0.0
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        """Reads the child's peak RSS (VmHWM) often and its RSS every RSS_SAMPLE_S.

        The peak is read from /proc, not from wait4's ru_maxrss: on Linux that also
        counts the memory of this (forking) process, which the child carried until exec.
        """
        status = Path(f"/proc/{self.popen.pid}/status")
        next_sample = 0.0
        while self.popen.returncode is None:
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            except OSError:
                return
            if "VmHWM" not in fields:
                return  # exited: a zombie has no memory left to read
            elapsed = time.monotonic() - self._started
            self.peak_rss_mb = max(self.peak_rss_mb, int(fields["VmHWM"].split()[0]) / 1024)
            if elapsed >= next_sample:
                self._samples.append((elapsed, int(fields["VmRSS"].split()[0]) / 1024))
                next_sample += RSS_SAMPLE_S
            time.sleep(0.1)  # a sampling period, not a synchronisation

    def wait(self, timeout_s: float = 900) -> Run:
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.popen.kill()
                sys.exit(f"{' '.join(map(str, self.popen.args))} did not finish in {timeout_s:.0f}s")  # type: ignore[arg-type]
            time.sleep(0.005)
        self.ended = time.time()
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - self._started
        self._out.seek(0)
        text = self._out.read().decode("utf-8", "replace")
        if self.popen.returncode != 0:
            sys.exit(f"{' '.join(map(str, self.popen.args))} failed ({self.popen.returncode}):\n{text[-3000:]}")  # type: ignore[arg-type]
        return Run(text, wall, usage.ru_utime + usage.ru_stime, self.peak_rss_mb, self._samples)


def run(argv: Sequence[str], env: dict[str, str] | None = None, stdin: Path | None = None, cwd: Path = ROOT) -> Run:
    """Runs a program (from `cwd`, the checkout it belongs to) to its end."""
    return Process(argv, env, stdin, cwd).wait()


def throughput(result: Run) -> float:
    match = THROUGHPUT.search(result.stdout)
    if not match:
        sys.exit(f"no Throughput line in:\n{result.stdout[-2000:]}")
    return int(match[1]) / float(match[2])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.admin = AdminClient(client_config(BOOTSTRAP))
        self.run_id = uuid.uuid4().hex[:6]
        factory = OrderFactory(random.Random(7), "SIZE")
        sample = [factory.make(load_order_schema().encode_single_object) for _ in range(1000)]
        self.key_size = round(statistics.mean(len(g.key) for g in sample))
        self.value_size = round(statistics.mean(len(g.value or b"") for g in sample))
        self.payloads = Path(tempfile.mkdtemp()) / "payloads.txt"
        with self.payloads.open("w") as out:
            for i in range(args.orders):
                out.write(f"{str(i).rjust(self.key_size, 'K')}\t{'v' * self.value_size}\n")
        self.figures: dict[str, dict[str, list[float]]] = {}
        self.python = sys.executable

    # -- helpers -------------------------------------------------------------------------
    def topic(self, label: str) -> str:
        name = f"bench-{self.run_id}-{label}-{uuid.uuid4().hex[:4]}"
        self.admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result()
        return name

    def pipeline_env(self, orders_topic: str) -> dict[str, str]:
        """Fresh pipeline topics and group around `orders_topic`."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
            "SCHEMA_REGISTRY_URL": "",
            "ORDERS_TOPIC": orders_topic,
            "RETRY_TOPIC": f"{orders_topic}-retry",
            "DLQ_TOPIC": f"{orders_topic}-dlq",
            "STATS_TOPIC": f"{orders_topic}-stats-{uuid.uuid4().hex[:4]}",
            "CONSUMER_GROUP": f"{orders_topic}-group-{uuid.uuid4().hex[:4]}",
        }

    def record(self, table: str, tier: str, rate: float, result: Run) -> None:
        per_order_us = result.cpu_s / self.args.orders * 1e6
        row = self.figures.setdefault(f"{table}|{tier}", {"rate": [], "cpu": [], "rss": []})
        row["rate"].append(rate)
        row["cpu"].append(per_order_us)
        row["rss"].append(result.peak_rss_mb)
        print(
            f"  {table:9s} {tier:28s} {rate:>10,.0f}/s  {per_order_us:6.1f} µs CPU/order  {result.peak_rss_mb:6.0f} MB"
        )

    def java(self, main: str, *args: str) -> list[str]:
        return ["java", "-Xmx512m", "-cp", f"{JAVA_LIBS}/*", f"org.apache.kafka.tools.{main}", *args]

    def kcat_settings(self) -> list[str]:
        # The topic is made beforehand (self.topic); like every client here, kcat asks no broker to make one.
        settings = {**PRODUCER_SETTINGS, NO_AUTO_CREATE: "false"}
        return [arg for key, value in settings.items() for arg in ("-X", f"{key}={value}")]

    # -- producer tiers ------------------------------------------------------------------
    def produce_c(self) -> tuple[str, Run]:
        topic = self.topic("c")
        cmd = ["kcat", "-P", "-b", BOOTSTRAP, "-t", topic, "-K", "\t", *self.kcat_settings()]
        return topic, run(cmd, stdin=self.payloads)

    def produce_java(self) -> tuple[str, Run]:
        topic = self.topic("java")
        props = [f"{k}={v}" for k, v in PRODUCER_SETTINGS.items()]
        cmd = self.java(
            "ProducerPerformance", "--topic", topic, "--num-records", str(self.args.orders),
            "--record-size", str(self.key_size + self.value_size), "--throughput", "-1",
            "--producer-props", f"bootstrap.servers={BOOTSTRAP}", *props,
        )  # fmt: skip
        return topic, run(cmd)

    def produce_binding(self) -> tuple[str, Run]:
        topic = self.topic("binding")
        env = {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP}
        return topic, run([self.python, "-m", "bench.binding", "produce", topic, str(self.args.orders)], env)

    def produce_ours(self) -> tuple[str, Run]:
        topic = self.topic("ours")
        cmd = [self.python, "producer.py", "--rate", "0", "--count", str(self.args.orders), "--quiet"]
        return topic, run(cmd, self.pipeline_env(topic))

    # -- consumer tiers ------------------------------------------------------------------
    def consume_c(self, topic: str) -> Run:
        cmd = ["kcat", "-C", "-b", BOOTSTRAP, "-t", topic, "-o", "beginning", "-c", str(self.args.orders), "-q"]
        return run([*cmd, *KCAT_CONSUMER_SETTINGS])

    def consume_java(self, topic: str) -> Run:
        cmd = self.java(
            "ConsumerPerformance", "--bootstrap-server", BOOTSTRAP, "--topic", topic,
            "--messages", str(self.args.orders), "--group", f"{topic}-group", "--timeout", "60000",
        )  # fmt: skip
        return run(cmd)

    def consume_binding(self, topic: str) -> Run:
        env = {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP}
        return run([self.python, "-m", "bench.binding", "consume", topic, str(self.args.orders)], env)

    def consume_ours(self, topic: str, delivery: str, *extra: str) -> Run:
        cmd = [self.python, "consumer.py", "--quiet", "--idle-exit", "2", "--delivery", delivery, *extra]
        return run(cmd, self.pipeline_env(topic))

    # -- phases --------------------------------------------------------------------------
    def throughput_rounds(self) -> None:
        for round_no in range(1, self.args.rounds + 1):
            print(f"Round {round_no}: producers, then consumers", flush=True)
            topics = {}
            for tier, produce, rate_of in (
                ("C ceiling (kcat)", self.produce_c, lambda r: self.args.orders / r.wall_s),
                ("Java ceiling (ProducerPerformance)", self.produce_java, java_producer_rate),
                ("binding (confluent-kafka)", self.produce_binding, throughput),
                ("ours (producer.py)", self.produce_ours, throughput),
            ):
                topic, result = produce()
                topics[tier] = topic
                self.record("producer", tier, rate_of(result), result)
            for tier, source, consume, rate_of in (
                ("C ceiling (kcat)", "C ceiling (kcat)", self.consume_c, lambda r: self.args.orders / r.wall_s),
                ("Java ceiling (ConsumerPerformance)", "Java ceiling (ProducerPerformance)", self.consume_java,
                 java_consumer_rate),
                ("binding (confluent-kafka)", "binding (confluent-kafka)", self.consume_binding, throughput),
                ("ours, at-least-once", "ours (producer.py)",
                 lambda t: self.consume_ours(t, "at-least-once"), throughput),
                ("ours, exactly-once", "ours (producer.py)",
                 lambda t: self.consume_ours(t, "exactly-once"), throughput),
            ):  # fmt: skip
                result = consume(topics[source])
                self.record("consumer", tier, rate_of(result), result)

    def end_to_end_rounds(self) -> None:
        """Producer and consumer together: orders/s from the first record's timestamp to the last one handled."""
        n = str(self.args.orders)
        for round_no in range(1, self.args.rounds + 1):
            print(f"Round {round_no}: producer and consumer together", flush=True)
            topic = self.topic("e2e-c")
            kcat = ["kcat", "-C", "-b", BOOTSTRAP, "-t", topic, "-o", "beginning", "-c", n, "-q"]
            consumer = Process([*kcat, *KCAT_CONSUMER_SETTINGS])
            wait_for_partitions(topic)
            run(["kcat", "-P", "-b", BOOTSTRAP, "-t", topic, "-K", "\t", *self.kcat_settings()], stdin=self.payloads)
            result = consumer.wait()
            self.record("together", "C ceiling (kcat)", self.rate_since_first_record(topic, consumer.ended), result)

            topic = self.topic("e2e-binding")
            consumer = Process(
                [self.python, "-m", "bench.binding", "consume", topic, n], {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP}
            )
            wait_for_group_member(topic)
            run([self.python, "-m", "bench.binding", "produce", topic, n], {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP})
            result = consumer.wait()
            last = re.search(r"Last record at ([\d.]+)", result.stdout)
            assert last, result.stdout
            self.record(
                "together", "binding (confluent-kafka)", self.rate_since_first_record(topic, float(last[1])), result
            )

            for delivery in ("at-least-once", "exactly-once"):
                topic = self.topic("e2e-ours")
                env = self.pipeline_env(topic)
                cmd = [self.python, "consumer.py", "--quiet", "--idle-exit", "2", "--delivery", delivery]
                consumer = Process(cmd, env)
                wait_for_group_member(topic, env["CONSUMER_GROUP"])
                run([self.python, "producer.py", "--rate", "0", "--count", n, "--quiet"], env)
                result = consumer.wait()
                # The consumer's last commit: the newest timestamp in its stats topic.
                last_commit = max(timestamps(env["STATS_TOPIC"], first_only=False)) / 1000
                self.record("together", f"ours, {delivery}", self.rate_since_first_record(topic, last_commit), result)

    def rate_since_first_record(self, topic: str, ended: float) -> float:
        return float(self.args.orders / (ended - min(timestamps(topic, first_only=True)) / 1000))

    def latency_run(self, delivery: str, seconds: float) -> dict[str, object]:
        """Producer at the fixed offered rate and consumer together for `seconds`."""
        rate = self.args.latency_rate
        topic = self.topic("latency")
        env = self.pipeline_env(topic)
        consumer = Process(
            [self.python, "consumer.py", "--quiet", "--idle-exit", "3", "--delivery", delivery, "--report-latency"],
            env,
        )
        wait_for_group_member(topic, env["CONSUMER_GROUP"])
        print(f"Latency at {rate}/s, {delivery}, {seconds:.0f}s", flush=True)
        producer = run(
            [self.python, "producer.py", "--rate", str(rate), "--count", str(int(rate * seconds)), "--quiet"], env
        )
        result = consumer.wait()
        match = LATENCY.search(result.stdout)
        if not match:
            sys.exit(f"no Latency line in:\n{result.stdout[-2000:]}")
        figures = {
            "delivery": delivery,
            "seconds": seconds,
            "p50": int(match[1]),
            "p99": int(match[2]),
            "p999": int(match[3]),
            "max": int(match[4]),
            "records": int(match[5]),
            "consumer_cpu_us": result.cpu_s / int(match[5]) * 1e6,
            "producer_cpu_us": producer.cpu_s / int(match[5]) * 1e6,
            "consumer": result,
            "producer": producer,
        }
        print(f"  p50 {match[1]} ms, p99 {match[2]} ms, p99.9 {match[3]} ms; peak RSS producer "
              f"{producer.peak_rss_mb:.0f} MB, consumer {result.peak_rss_mb:.0f} MB", flush=True)  # fmt: skip
        return figures


def java_producer_rate(result: Run) -> float:
    match = re.search(r"records sent, ([\d.]+) records/sec", result.stdout)
    if not match:
        sys.exit(f"no ProducerPerformance summary in:\n{result.stdout[-2000:]}")
    return float(match[1])


def java_consumer_rate(result: Run) -> float:
    """fetch.nMsg.sec: records per second once the group has joined (rebalance time excluded)."""
    lines = [line for line in result.stdout.splitlines() if line.count(",") >= 9 and line[:1].isdigit()]
    if not lines:
        sys.exit(f"no ConsumerPerformance figures in:\n{result.stdout[-2000:]}")
    return float(lines[-1].split(",")[-1])


def timestamps(topic: str, *, first_only: bool) -> list[int]:
    """Record timestamps (epoch ms) of a topic: the first of each partition, or all of them."""
    consumer = Consumer(client_config(BOOTSTRAP, {"group.id": "bench-reader", "enable.auto.commit": False}))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    found: list[int] = []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high <= low:
            continue
        consumer.assign([TopicPartition(topic, partition, low)])
        wanted = 1 if first_only else high - low
        seen = 0
        deadline = time.monotonic() + 30
        while seen < wanted and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is None:
                    found.append(message.timestamp()[1])
                    seen += 1
    consumer.close()
    if not found:
        sys.exit(f"no records in {topic}")
    return found


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_for_group_member(topic: str, group: str | None = None) -> None:
    """Waits until a consumer of `topic` (in `group`, or any bench group) holds partitions."""
    admin = AdminClient(client_config(BOOTSTRAP))

    def assigned() -> bool:
        groups = [group] if group else [g.group_id for g in admin.list_consumer_groups().result().valid]
        if not groups:
            return False
        for description in admin.describe_consumer_groups(groups).values():
            for member in description.result().members:
                if any(tp.topic == topic for tp in member.assignment.topic_partitions):
                    return True
        return False

    wait_until(assigned, f"a consumer of {topic} to join")


def wait_for_partitions(topic: str) -> None:
    """kcat -C assigns partitions without a group; give it until it has fetched metadata."""
    probe = Consumer(client_config(BOOTSTRAP, {"group.id": "bench-probe"}))
    wait_until(lambda: len(probe.list_topics(topic, timeout=5).topics[topic].partitions) == PARTITIONS, topic)
    probe.close()


def summarise(bench: Bench, latency: list[dict[str, object]], command: str) -> str:
    args, figures = bench.args, bench.figures
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{command}`",
        "",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}, {memory_gb():.0f} GiB; broker on the same machine.",
        f"- Versions: Kafka {KAFKA_VERSION} broker (single node, KRaft), Python {platform.python_version()}, "
        f"confluent-kafka {binding_version}, librdkafka {libversion()[0]}, {kcat_version()}, {java_version()}.",
        f"- Records: {args.orders} per run, {PARTITIONS} partitions, key {bench.key_size} bytes, value "
        f"{bench.value_size} bytes (the Java tool sends {bench.key_size + bench.value_size}-byte values, no key).",
        "- Producers: acks=all, enable.idempotence=true, linger.ms=5. Consumers: read_committed (ours, binding).",
        f"- {args.rounds} rounds, tiers interleaved within each round; median and (min-max).",
        "",
        "| phase | tier | orders/s | CPU µs/order | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for key, row in figures.items():
        table, tier = key.split("|")
        rates = row["rate"]
        lines.append(
            f"| {table} | {tier} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
            f"{statistics.median(row['cpu']):.1f} | {max(row['rss']):.0f} |"
        )

    def median(table: str, tier: str) -> float:
        return statistics.median(figures[f"{table}|{tier}"]["rate"])

    lines += [
        "",
        "How each figure is taken:",
        "",
        "- Producer orders/s: ours and the binding from the first send to the last acknowledgement, by their "
        "own clock. That includes the idempotent producer's start: librdkafka 2.16 asks for a producer id about "
        "0.5 s after it starts. kcat: the process's wall time (its librdkafka 2.0.2 has the id at once). Java: "
        "the tool's own figure.",
        "- Consumer orders/s: ours from the first batch to the last commit; the binding from the first batch to "
        "the last record; kcat: the process's wall time, start-up included; Java: fetch.nMsg.sec (after the group "
        "joined). kcat's consumer runs with queued.min.messages=10000000: its librdkafka otherwise stops fetching a "
        "partition for a second whenever that many records wait.",
        "- Together: producer and consumer started together, from the first record's timestamp to the last record "
        "handled (kcat: the consumer's exit; binding: its last record; ours: the newest timestamp in its stats "
        "topic, which each batch's commit writes).",
        "- CPU µs/order: user + system CPU of the whole process (wait4), start-up included (for Java, the JIT too), "
        "divided by the orders. Peak RSS: VmHWM of the process, read every 0.1 s.",
        "- Latency: `consumer.py --report-latency`, from each record's timestamp (set when the producer hands it "
        "to the client) to the commit of its batch; the first second of records is left out as warm-up.",
    ]
    lines += ["", "Ratios (medians):", ""]
    for table, ours_tier in (
        ("producer", "ours (producer.py)"),
        ("consumer", "ours, at-least-once"),
        ("consumer", "ours, exactly-once"),
        ("together", "ours, at-least-once"),
        ("together", "ours, exactly-once"),
    ):
        ours = median(table, ours_tier)
        lines.append(
            f"- {table}, {ours_tier}: {ours / median(table, 'C ceiling (kcat)'):.2f} of C, "
            f"{ours / median(table, 'binding (confluent-kafka)'):.2f} of the binding"
        )
    eos, alo = median("consumer", "ours, exactly-once"), median("consumer", "ours, at-least-once")
    lines.append(f"- consumer, exactly-once / at-least-once: {eos / alo:.2f}")
    lines += [
        "",
        f"Latency at {args.latency_rate} orders/s offered (record timestamp to the commit of its batch):",
        "",
        "| consumer | run | p50 ms | p99 ms | p99.9 ms | max ms | CPU µs/order (producer, consumer) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fig in latency:
        lines.append(
            f"| {fig['delivery']} | {fig['seconds']:.0f} s, {fig['records']} orders | {fig['p50']} | {fig['p99']} | "
            f"{fig['p999']} | {fig['max']} | {fig['producer_cpu_us']:.1f}, {fig['consumer_cpu_us']:.1f} |"
        )
    lines += ["", "Memory over the longest latency run (RSS sampled every 5 s):", ""]
    longest = max(latency, key=lambda fig: float(fig["seconds"]))  # type: ignore[arg-type]
    for role in ("producer", "consumer"):
        result: Run = longest[role]  # type: ignore[assignment]
        settle = min(60.0, float(longest["seconds"]) / 2)  # type: ignore[arg-type]
        samples = [mb for t, mb in result.rss_samples_mb if t >= settle] or [0.0]
        lines.append(
            f"- {role}: peak {result.peak_rss_mb:.0f} MB; after {settle:.0f} s {samples[0]:.0f} MB, "
            f"at the end {samples[-1]:.0f} MB, lowest-highest from then on {min(samples):.0f}-{max(samples):.0f} MB"
        )
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def kcat_version() -> str:
    out = subprocess.run(["kcat", "-V"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"Version ([\w.-]+) .*?librdkafka ([\w.-]+)", out)
    return f"kcat {match[1]} (its own librdkafka {match[2]}, Debian)" if match else "kcat"


def java_version() -> str:
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    return out.splitlines()[0].replace('"', "") if out else "java"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=1_000_000, help="records per throughput run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-rate", type=int, default=10_000, help="offered orders/s in the latency runs")
    parser.add_argument("--latency-s", type=float, default=60, help="length of the at-least-once latency run")
    parser.add_argument("--soak-s", type=float, default=300, help="length of the exactly-once latency and memory run")
    parser.add_argument("--write", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--profile-base",
        metavar="REF",
        help="end with py-spy profiles, bench/refused.py and the latency: REF's beside this checkout's",
    )
    parser.add_argument(
        "--scale-out-cpu",
        type=float,
        metavar="F",
        help="end with bench/scale_out.py: 1, 2 and 3 consumers each capped at F of a core (cgroup v1, root)",
    )
    args = parser.parse_args()
    command = "scripts/bench.sh " + " ".join(sys.argv[1:])
    bench = Bench(args)
    print(f"Records: key {bench.key_size} bytes, value {bench.value_size} bytes", flush=True)
    bench.throughput_rounds()
    bench.end_to_end_rounds()
    latency = [
        bench.latency_run("at-least-once", args.latency_s),
        bench.latency_run("exactly-once", args.soak_s),
    ]
    report = summarise(bench, latency, command.strip())
    print("The producer in both wire formats", flush=True)
    argv = [sys.executable, "-m", "bench.wire_formats", "--orders", str(args.orders), "--rounds", "2"]
    formats = run(argv).stdout.split("\n\n", 1)[-1].strip()
    report += f"\n## The producer in both wire formats\n\n{WIRE_FORMATS_NOTE}\n\n{formats}\n"
    if args.scale_out_cpu:
        print("Scale-out (capped consumers)", flush=True)
        argv = [sys.executable, "-m", "bench.scale_out", "--orders", str(SCALE_OUT_ORDERS), "--cpu"]
        argv += [f"{args.scale_out_cpu:g}", "--broker", "single", "--rounds", str(SCALE_OUT_ROUNDS)]
        table = run(argv).stdout.strip()
        report += f"\n## Scale-out\n\n{SCALE_OUT_NOTE}\n\n{table}\n"
    if args.profile_base:
        print("Profiles (py-spy)", flush=True)
        argv = [sys.executable, "-m", "bench.profile", "--orders", str(args.orders), "--base", args.profile_base]
        profiles = run(argv).stdout.split("\nCommand:")[0].strip()
        report += f"\n## Where the time goes\n\n{PROFILE_NOTE}\n\n{profiles}\n"
        print("Records the fast lane refuses", flush=True)
        refused = run([sys.executable, "-m", "bench.refused", "--base", args.profile_base]).stdout.strip()
        report += f"\n## Records the fast lane refuses\n\n{REFUSED_NOTE}\n\n{refused}\n"
        print("Latency beside the base", flush=True)
        argv = [sys.executable, "-m", "bench.compare", args.profile_base, "--rounds", "3", "--latency-s", "30"]
        command_line, table = run([*argv, "--only-latency"]).stdout.split("\nCommand: ", 1)[1].split("\n", 1)
        report += f"\n## Latency beside the base\n\n{LATENCY_NOTE}\n\n{table.strip()}\n\nCommand: {command_line}\n"
    print(report)
    if args.write:
        args.write.write_text(report)


if __name__ == "__main__":
    main()
