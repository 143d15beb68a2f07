"""The programs as a person sees them in a terminal: each runs on a pseudo-terminal of 120 columns against the
real broker, and the test reads the screen (tests/terminal.py); the same runs piped carry no escape byte."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from tests.integration.helpers import (
    CONSUMER_SUMMARY,
    PRODUCER_SUMMARY,
    ROOT,
    Pipeline,
    audit,
    summary,
)
from tests.terminal import ESC, LINES, Terminal, terminal_env

# Lines the plain producer and consumer print (README.md, "A five-minute tour"); piped, every line is one of these.
PLAIN_LINES = re.compile(
    r"(Producing to |Consuming |✓ Sent: |✓ Processed: |Running Average: |⚠ Retrying |✗ Sent to DLQ |"
    r"\[producer\] |\[consumer\] |Producer summary: |Consumer summary: |Throughput: |Nothing arrived )"
)


def on_terminal(
    pipeline: Pipeline, script: str, *args: str, lines: int = LINES, terminal: dict[str, str] | None = None
) -> Terminal:
    """`script` started on a pty of 120 columns, as from a terminal emulator (with `terminal` in its environment)."""
    env = terminal_env({**os.environ, **pipeline.env}, **(terminal or {}))
    return Terminal([sys.executable, script, *args], env, ROOT, lines=lines)


def panel_figures(lines: list[str]) -> dict[str, str]:
    """The consumer panel's rows (`│ label  value │`) by label."""
    rows = {}
    for line in lines:
        match = re.match(
            r"│ (records/s|processed|retried|dead-lettered|running average|retries waiting)\s+(.*?)\s*│", line
        )
        if match:
            rows[match[1]] = match[2]
    return rows


def lags(lines: list[str], topic: str) -> dict[int, int]:
    """The panel's lag of each partition of `topic`."""
    found = {}
    for line in lines:
        match = re.match(rf"│ {re.escape(topic)}-(\d+)\s+([\d,]+)", line)
        if match:
            found[int(match[1])] = int(match[2].replace(",", ""))
    return found


def test_the_producer_shows_its_progress_to_100_percent_and_piped_prints_plain_lines(pipeline: Pipeline) -> None:
    producer = on_terminal(pipeline, "producer.py", "--count", "3000", "--rate", "1500", "--seed", "1")
    try:
        producer.wait_for("acknowledged", timeout=60)  # drawn while it runs
        assert producer.wait(120) == 0, producer.output.decode(errors="replace")
    finally:
        producer.kill()
    lines = producer.screen()
    at = next(i for i, line in enumerate(lines) if line.endswith("100%"))
    assert "━" in lines[at]
    assert lines[at + 1].startswith("sent 3,000 · acknowledged 3,000 of 3,000 · failed 0 · ")
    assert lines[at + 1].endswith(" · 0:00 left")
    below = "".join(lines[at + 2 :])
    assert summary(PRODUCER_SUMMARY, below)["delivered"] == "3000"
    assert "Throughput: 3000 orders in " in below
    assert ESC in producer.output, "drawn live, with escape codes"

    # Piped, even with a terminal's variables that ask rich for colour: the plain lines only.
    piped = pipeline.with_env(TERM="xterm-256color", FORCE_COLOR="1", TTY_COMPATIBLE="1").run(
        "producer.py", "--count", "3000", "--rate", "1500", "--seed", "1"
    )
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout + piped.stderr
    assert all(PLAIN_LINES.match(line) for line in piped.stdout.splitlines()), piped.stdout
    assert summary(PRODUCER_SUMMARY, piped.stdout)["delivered"] == "3000"


def test_without_a_count_the_producer_shows_a_live_line_and_ctrl_c_ends_with_the_summary(pipeline: Pipeline) -> None:
    producer = on_terminal(pipeline, "producer.py", "--rate", "200")
    try:
        producer.wait_for("· last order O-", timeout=60)
        producer.process.send_signal(signal.SIGINT)
        assert producer.wait(60) == 0, producer.output.decode(errors="replace")
    finally:
        producer.kill()
    lines = producer.screen()
    live = next(line for line in lines if line.startswith("● sent "))
    sent = summary(PRODUCER_SUMMARY, "".join(lines))
    assert live.startswith(f"● sent {int(sent['sent']):,} · acknowledged {int(sent['delivered']):,} · failed 0 · ")
    assert int(sent["delivered"]) > 0
    assert any(line.startswith("Throughput: ") for line in lines)


def test_the_consumer_panel_shows_lag_dlq_reasons_and_the_average_that_the_audit_finds(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    consumer = on_terminal(pipeline, "consumer.py", "--failure-rate", "0.2", "--seed", "5", "--idle-exit", "4")
    try:
        # The panel is live before anything is produced: every partition of both input topics, at lag 0.
        consumer.wait_for(f"{settings.orders_topic}-2 ", timeout=90)
        consumer.wait_for(f"{settings.retry_topic}-2 ", timeout=30)
        sent = pipeline.run(
            "producer.py",
            *("--count", "1500", "--rate", "0", "--invalid-rate", "0.05", "--poison-rate", "0.02", "--seed", "2"),
            "--quiet",
        )
        assert sent.returncode == 0, sent.stderr
        assert consumer.wait(180) == 0, consumer.output.decode(errors="replace")
    finally:
        consumer.kill()
    lines = consumer.screen()
    result = audit(pipeline)
    assert result.exact, result.describe()
    figures = panel_figures(lines)
    final = summary(CONSUMER_SUMMARY, "".join(line for line in lines if not line.startswith("│")))
    reasons = result.dlq_by_reason
    dead = sum(reasons.values())
    assert figures["processed"] == f"{result.expected.count:,}"
    assert int(final["processed"]) == result.expected.count
    assert figures["dead-lettered"] == (
        f"{dead:,} (deserialization {reasons.get('deserialization', 0):,}, "
        f"validation {reasons.get('validation', 0):,}, retries-exhausted {reasons.get('retries-exhausted', 0):,})"
    )
    assert figures["running average"].split()[0] == result.expected.describe() == final["average"]
    assert int(figures["retried"].replace(",", "")) == int(final["retried"]) > 0
    assert lags(lines, settings.orders_topic) == {0: 0, 1: 0, 2: 0}, "the three partitions, drained"
    assert lags(lines, settings.retry_topic) == {0: 0, 1: 0, 2: 0}
    assert figures["retries waiting"] == "0"
    assert ESC in consumer.output

    # dlq.py list on the same terminal: a table, with the count by reason (of them all) under it.
    listing = on_terminal(pipeline, "dlq.py", "list", "--limit", "10", lines=100)  # room for errors on many lines
    try:
        assert listing.wait(120) == 0, listing.output.decode(errors="replace")
    finally:
        listing.kill()
    shown = listing.screen()
    header = next(line for line in shown if line.startswith("partition@offset"))
    for column in ("reason", "order id", "failed at", "error"):
        assert column in header
    rows = [line for line in shown if re.match(r"\d+@\d+ ", line)]
    assert len(rows) == 10
    assert all(line.split()[1] in reasons for line in rows)
    counted = f"{dead} dead letters (" + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()) if n) + ")"
    assert [line for line in shown if line][-1] == counted
    piped = pipeline.run("dlq.py", "list")
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout
    assert piped.stdout.splitlines()[-1] == counted


def test_the_consumer_piped_prints_the_plain_lines_with_no_escape_byte(pipeline: Pipeline) -> None:
    # A terminal's variables that ask rich for colour change nothing when stdout is a pipe.
    piped = pipeline.with_env(TERM="xterm-256color", FORCE_COLOR="1", TTY_COMPATIBLE="1")
    sent = piped.run("producer.py", "--count", "300", "--rate", "0", "--invalid-rate", "0.1", "--seed", "4")
    assert sent.returncode == 0, sent.stderr
    consumed = piped.run("consumer.py", "--failure-rate", "0.2", "--seed", "1", "--idle-exit", "2")
    assert consumed.returncode == 0, consumed.stderr
    assert "\x1b" not in consumed.stdout + consumed.stderr
    assert all(PLAIN_LINES.match(line) for line in consumed.stdout.splitlines()), consumed.stdout
    assert "⚠ Retrying (1/3): Order " in consumed.stdout
    assert summary(CONSUMER_SUMMARY, consumed.stdout)["validation"] == str(audit(pipeline).invalid)


@pytest.mark.parametrize(("flags", "terminal"), [(["--plain"], {}), ([], {"NO_COLOR": "1"}), ([], {"TERM": "dumb"})])
def test_plain_no_color_and_a_dumb_terminal_print_the_plain_lines_on_a_terminal(
    pipeline: Pipeline, flags: list[str], terminal: dict[str, str]
) -> None:
    producer = on_terminal(pipeline, "producer.py", "--count", "20", "--rate", "0", *flags, terminal=terminal)
    try:
        assert producer.wait(60) == 0, producer.output.decode(errors="replace")
    finally:
        producer.kill()
    assert ESC not in producer.output
    text = producer.output.decode()
    assert text.count("✓ Sent: Order") == 20
    assert all(PLAIN_LINES.match(line) for line in text.splitlines()), text
