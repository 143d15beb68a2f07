"""The programs' views on a terminal (orderpipe.observe.terminal), drawn on an emulated screen (tests/terminal.py).

Each test writes to a stream that says it is a terminal and reads what pyte shows of it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
import threading
from collections.abc import Mapping

import pytest
from rich.text import Text

from orderpipe.core.dead_letters import DlqEntry
from orderpipe.core.status import (
    ConsumerReading,
    ConsumerStatus,
    ConsumerTracker,
    PartitionLag,
    ProducerReading,
    ProducerStatus,
    ProducerTracker,
)
from orderpipe.observe import terminal
from orderpipe.observe.console import NORMAL
from orderpipe.observe.terminal import (
    DeadLetterTable,
    LiveConsole,
    LiveView,
    consumer_panel,
    producer_progress,
    terminal_screen,
)
from tests.terminal import ESC, FakeTerminal, screen
from tests.unit.twin_helpers import SETTINGS, assert_exact, new_cluster, produce_orders, run, twin_consumer

TERMINAL = {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}


def live_console(columns: int = 120, err_is_terminal: bool = False) -> tuple[LiveConsole, FakeTerminal]:
    out = FakeTerminal()
    rich_screen = terminal_screen(out, plain=False, environ={**TERMINAL, "COLUMNS": str(columns)})
    assert rich_screen is not None
    return LiveConsole(NORMAL, rich_screen, err_is_terminal=err_is_terminal), out


@pytest.mark.parametrize(
    ("stream", "environ", "plain", "live"),
    [
        (FakeTerminal(), TERMINAL, False, True),
        (FakeTerminal(), {}, False, True),  # no TERM at all is not a dumb terminal
        (FakeTerminal(), {**TERMINAL, "NO_COLOR": ""}, False, True),  # no-color.org: only a value counts
        (FakeTerminal(), TERMINAL, True, False),  # --plain
        (FakeTerminal(), {**TERMINAL, "TERM": "dumb"}, False, False),
        (FakeTerminal(), {**TERMINAL, "NO_COLOR": "1"}, False, False),
        (io.StringIO(), TERMINAL, False, False),  # a pipe or a file
        (io.StringIO(), {**TERMINAL, "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}, False, False),
    ],
)
def test_live_redraws_only_on_a_terminal_that_takes_them(
    stream: io.StringIO, environ: Mapping[str, str], plain: bool, live: bool
) -> None:
    assert (terminal_screen(stream, plain, environ) is not None) == live


def test_a_closed_stream_or_one_without_isatty_is_no_terminal() -> None:
    closed = FakeTerminal()
    closed.close()
    assert terminal_screen(closed, False, TERMINAL) is None

    class WriteOnly:
        def write(self, text: str) -> int:
            return len(text)

    assert terminal_screen(WriteOnly(), False, TERMINAL) is None  # type: ignore[arg-type]


def test_lines_before_the_first_drawing_are_the_plain_lines() -> None:
    console, out = live_console()
    console.info("Consuming orders, orders-retry as group g. Ctrl-C to stop.")
    console.close()  # nothing drawn: nothing to close
    assert out.getvalue() == "Consuming orders, orders-retry as group g. Ctrl-C to stop.\n"


def test_lines_scroll_above_the_view_which_is_redrawn_in_place_and_stays_when_closed() -> None:
    console, out = live_console()
    console.info("start")
    console.draw(Text("view one"))
    console.info("✓ Processed: Order O-1 → Mouse → $10.00\nRunning Average: $10.00")
    console.info("⚠ Retrying (1/3): Order O-2 (TimeoutError: inventory service timed out)")
    assert "Processed" not in out.getvalue(), "held until the next drawing"
    console.draw(Text("view two"))
    console.close()
    console.info("Consumer summary: processed 1")
    lines = [line for line in screen(out.getvalue()) if line]
    assert lines == [
        "start",
        "✓ Processed: Order O-1 → Mouse → $10.00",
        "Running Average: $10.00",
        "⚠ Retrying (1/3): Order O-2 (TimeoutError: inventory service timed out)",
        "view two",
        "Consumer summary: processed 1",
    ]
    assert out.getvalue().endswith("Consumer summary: processed 1\n"), "after the view: plain lines again"
    hidden, shown = out.getvalue().rfind("\x1b[?25l"), out.getvalue().find("\x1b[?25h")
    assert shown > hidden, "the cursor is shown again at once: a killed program leaves it visible"


def test_lines_held_at_the_end_are_printed_above_the_last_drawing() -> None:
    console, out = live_console()
    console.draw(Text("the view"))
    console.info("Nothing arrived and nothing was due for 5s: exiting.")
    console.close()
    assert [line for line in screen(out.getvalue()) if line] == [
        "Nothing arrived and nothing was due for 5s: exiting.",
        "the view",
    ]


def test_record_text_is_never_read_as_markup() -> None:
    console, out = live_console()
    console.draw(Text("view"))
    console.info("✗ Sent to DLQ (validation): Order [bold]O-1[/bold]: [link=http://x]price[/link] must be > 0")
    console.close()
    assert "✗ Sent to DLQ (validation): Order [bold]O-1[/bold]: [link=http://x]price[/link] must be > 0" in screen(
        out.getvalue()
    )


def test_errors_go_to_stderr_unless_it_is_the_same_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    console, out = live_console(err_is_terminal=False)
    console.draw(Text("view"))
    console.error("✗ Not delivered: order O-1: timed out")
    console.close()
    assert capsys.readouterr().err == "✗ Not delivered: order O-1: timed out\n"
    assert "Not delivered" not in out.getvalue()

    console, out = live_console(err_is_terminal=True)
    console.draw(Text("view"))
    console.error("✗ Not delivered: order O-1: timed out")
    console.close()
    assert capsys.readouterr().err == ""
    assert [line for line in screen(out.getvalue()) if line] == ["✗ Not delivered: order O-1: timed out", "view"]


def test_warnings_logged_to_the_terminal_print_above_the_view_while_it_is_live(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        console, out = live_console(err_is_terminal=True)
        console.draw(Text("view"))
        logging.getLogger("orderpipe.test").warning("⚠ the cluster is below min.insync.replicas")
        console.draw(Text("view again"))
        console.close()
        assert handler.stream is sys.stderr, "the handler writes where it did before"
    finally:
        root.removeHandler(handler)
    assert capsys.readouterr().err == ""
    assert [line for line in screen(out.getvalue()) if line] == [
        "⚠ the cluster is below min.insync.replicas",
        "view again",
    ]


def consumer_status(**changes: object) -> ConsumerStatus:
    status = ConsumerStatus(
        group="order-pipeline",
        wire="single-object Avro, no schema registry",
        in_per_s=1250.4,
        committed_per_s=1248.0,
        processed=10412,
        retried=2113,
        dead_lettered=(("deserialization", 100), ("validation", 500), ("retries-exhausted", 40)),
        partitions=(
            PartitionLag("orders-0", 0, " " * 20, None),
            PartitionLag("orders-1", 1200, "█" * 20, None),
            PartitionLag("orders-retry-2", 37, "▋" + " " * 19, 0.8),
        ),
        hidden=(0, 0),
        retry_waiting=37,
        next_due_in_s=0.8,
        average="$231.07",
        sparkline="▁▂▃▄▅▆▇█",
        last_commit_ms=12.3,
    )
    return dataclasses.replace(status, **changes)  # type: ignore[arg-type]


def drawn(renderable: object, columns: int = 120) -> list[str]:
    console, out = live_console(columns)
    console.draw(renderable)  # type: ignore[arg-type]
    console.close()
    return [line for line in screen(out.getvalue(), columns) if line]


def test_the_consumer_panel_shows_every_figure_within_the_width() -> None:
    for columns in (120, 80):
        lines = drawn(consumer_panel(consumer_status()), columns)
        text = "\n".join(lines)
        assert all(len(line) <= columns for line in lines)
        assert "consumer · group order-pipeline" in lines[0]
        for figure in (
            "records/s        in 1,250 · committed 1,248",
            "processed        10,412",
            "retried          2,113",
            "running average  $231.07  ▁▂▃▄▅▆▇█",
            "retries waiting  37 · next due in 0.8s",
            "last commit      12 ms",
        ):
            assert figure in text, figure
        assert "dead-lettered    640 (deserialization 100, validation 500," in text
        assert "single-object Avro, no schema registry" in text
        assert any("orders-1" in line and "1,200" in line and "████" in line for line in lines)
        assert any("orders-retry-2" in line and "paused, due in 0.8s" in line for line in lines)


def test_the_panel_says_when_no_partition_is_assigned_yet_and_sums_up_those_left_out() -> None:
    waiting = "\n".join(
        drawn(consumer_panel(consumer_status(partitions=(), retry_waiting=None, last_commit_ms=None, in_per_s=None)))
    )
    assert "records/s        in - · committed 1,248" in waiting
    assert "lag: waiting for partitions to be assigned" in waiting
    assert "retries waiting  -" in waiting
    assert "last commit      -" in waiting
    many = drawn(consumer_panel(consumer_status(hidden=(20, 4321), next_due_in_s=0.01)))
    assert any("20 more" in line and "4,321" in line for line in many)
    assert any("retries waiting  37 · next due now" in line for line in many)


def test_the_producer_progress_reaches_100_percent_with_the_figures_under_it() -> None:
    tracker = ProducerTracker(count=200_000)
    tracker.status(ProducerReading(0.0, 100_000, 90_000, 0, "O-A-1"))
    lines = drawn(producer_progress(tracker.status(ProducerReading(2.0, 200_000, 200_000, 0, "O-A-2"))))
    assert lines[0].endswith("100%")
    assert "━" in lines[0]
    assert lines[1] == "sent 200,000 · acknowledged 200,000 of 200,000 · failed 0 · 55,000 orders/s · 0:00 left"


def test_the_producer_without_a_count_shows_one_live_line() -> None:
    status = ProducerStatus(None, 120, 119, 1, 2.0, None, None, "O-MWR7B4Q1OT-78")
    assert drawn(producer_progress(status)) == [
        "● sent 120 · acknowledged 119 · failed 1 · 2 orders/s · last order O-MWR7B4Q1OT-78"
    ]


def letter(offset: int, reason: str = "validation", error: str = "price must be > 0") -> DlqEntry:
    return DlqEntry(
        partition=offset % 3,
        offset=offset,
        reason=reason,
        order_id=f"O-MWR7B4Q1OT-{offset}",
        error_class="InvalidOrderError",
        error_message=error,
        failed_at_ms=1_767_225_600_000 + offset,
        original_topic="orders",
        original_partition=offset % 3,
        original_offset=offset,
        retry_attempt=0,
        truncated=None,
        replayed_from=None,
    )


def test_the_dlq_table_fits_the_terminal_and_streams_in_aligned_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal, "TABLE_CHUNK", 2)
    out = FakeTerminal()
    rich_screen = terminal_screen(out, plain=False, environ=TERMINAL)
    assert rich_screen is not None
    table = DeadLetterTable(rich_screen, "orders-dlq")
    long_error = "a downstream service answered with a very long message " * 3
    for offset in range(5):
        table.add(letter(offset, error=long_error if offset == 3 else "[bold]price[/bold] must be > 0"))
    table.close()
    lines = [line for line in screen(out.getvalue(), lines=60) if line]
    assert all(len(line) <= 120 for line in lines)
    assert lines[0] == "orders-dlq"
    header = lines[1]
    for column in ("partition@offset", "reason", "order id", "failed at", "error"):
        assert column in header
    assert sum("partition@offset" in line for line in lines) == 1, "one header over all the chunks"
    rows = [line for line in lines if "validation" in line]
    assert len(rows) == 5
    assert len({row.index("validation") for row in rows}) == 1, "the chunks' columns line up"
    for cell in ("1@4", "O-MWR7B4Q1OT-4", "2026-01-01T00:00:00.004Z"):
        assert cell in rows[-1]
    assert rows[0].endswith("InvalidOrderError: [bold]price[/bold]"), "record text is never read as markup"
    assert "very long message" in "".join(lines), "a long error is folded onto more lines, not cut"


def test_an_empty_dlq_draws_the_header_alone() -> None:
    out = FakeTerminal()
    rich_screen = terminal_screen(out, plain=False, environ=TERMINAL)
    assert rich_screen is not None
    table = DeadLetterTable(rich_screen, "orders-dlq")
    table.close()
    assert "partition@offset" in "\n".join(screen(out.getvalue()))


def test_a_live_view_draws_a_tracker_status_when_due() -> None:
    console, out = live_console()
    view = LiveView(console, ProducerTracker(count=None, every_s=0.5), producer_progress)
    assert view.due(0.0)
    view.show(ProducerReading(0.0, 1, 1, 0, "O-1"))
    assert not view.due(0.2)
    assert view.due(0.6)
    view.show(ProducerReading(1.0, 3, 3, 0, "O-3"))
    view.close()
    assert [line for line in screen(out.getvalue()) if line] == [
        "● sent 3 · acknowledged 3 · failed 0 · 2 orders/s · last order O-3"
    ]


def test_the_consumer_on_a_terminal_ends_with_its_panel_then_the_summary_and_they_agree() -> None:
    """The whole consumer (the twin, in virtual time) with its live panel: the figures match the audit."""
    cluster = new_cluster()
    produce_orders(cluster, 300, seed=3)
    console, out = live_console()
    tracker = ConsumerTracker(SETTINGS.retry_topic, SETTINGS.consumer_group, "single-object Avro")
    view: LiveView[ConsumerReading, ConsumerStatus] = LiveView(console, tracker, consumer_panel)
    summary = run(twin_consumer(cluster, failure_rate=0.3, seed=5, console=console, view=view))
    result = assert_exact(cluster)
    lines = screen(out.getvalue(), lines=60)
    text = "\n".join(lines)
    assert ESC in out.getvalue().encode(), "drawn live"
    reasons = summary.dead_lettered
    assert f"processed        {summary.processed:,}" in text
    assert f"retried          {summary.retried:,}" in text
    dead = sum(reasons.values())
    assert (
        f"dead-lettered    {dead:,} (deserialization {reasons['deserialization']}, "
        f"validation {reasons['validation']}, retries-exhausted {reasons['retries-exhausted']})"
    ) in text
    assert summary.processed == result.expected.count
    assert dict(reasons) == {reason: n for reason, n in result.dlq_by_reason.items() if n}
    assert f"running average  {result.expected.describe()}" in text
    for partition in range(3):
        assert any(f"orders-{partition}" in line and line.split("│")[1].split()[1] == "0" for line in lines), (
            f"orders-{partition} drained to lag 0"
        )
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("Consumer summary:"))
    panel_end = max(i for i, line in enumerate(lines) if line.startswith("╰"))
    assert panel_end < summary_at, "the summary is printed below the last drawing of the panel"


def test_the_consumer_twin_prints_plain_lines_without_a_view() -> None:
    cluster = new_cluster()
    produce_orders(cluster, 50, seed=4)
    twin = twin_consumer(cluster)
    run(twin)
    assert ESC not in twin.out.getvalue().encode()


def test_rendering_happens_on_the_calling_thread_only() -> None:
    """rich's refresh thread stays off: the view reads nothing from another thread."""
    console, _ = live_console()
    before = threading.active_count()
    console.draw(Text("view"))
    assert threading.active_count() == before
    console.close()
