"""Console output: per-order lines within a budget per second, summaries when lines are held back."""

import io

from orderpipe.observe.console import NORMAL, QUIET, VERBOSE, Console, throughput_line


def event(console: Console, text: str) -> None:
    """How the programs print a per-order line: claim it, then print it."""
    if console.wants_event():
        console.info(text)


def make(verbosity: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(verbosity, out=out, err=io.StringIO(), lines_per_second=3, summary_every_s=5.0), out


def test_lines_beyond_the_budget_are_held_back_and_a_summary_falls_due() -> None:
    console, out = make(NORMAL)
    console.tick(100.0)
    for i in range(5):
        event(console, f"line {i}")
    assert out.getvalue().splitlines() == ["line 0", "line 1", "line 2"]
    assert not console.summary_due(104.9)
    assert console.summary_due(105.0)
    assert not console.summary_due(105.1), "one summary per interval"
    console.tick(101.0)  # a new second, a new budget
    event(console, "line 5")
    assert out.getvalue().splitlines()[-1] == "line 5"


def test_no_summary_while_every_line_is_shown() -> None:
    console, _ = make(NORMAL)
    console.tick(100.0)
    event(console, "only line")
    assert not console.summary_due(200.0)


def test_quiet_shows_summaries_only_and_verbose_shows_everything() -> None:
    quiet, quiet_out = make(QUIET)
    quiet.tick(0.0)
    event(quiet, "hidden")
    assert quiet_out.getvalue() == ""
    assert quiet.summary_due(5.0)
    verbose, verbose_out = make(VERBOSE)
    verbose.tick(0.0)
    for i in range(10):
        event(verbose, f"line {i}")
    assert len(verbose_out.getvalue().splitlines()) == 10


def test_the_throughput_line_gives_count_time_and_rate() -> None:
    line = throughput_line(300_000, "records", 1.5, "from the first batch to the last commit")
    assert line == "Throughput: 300000 records in 1.500s from the first batch to the last commit (200,000 records/s)"
    assert throughput_line(0, "orders", 0.0, "from the first send").endswith("(0 orders/s)")


def test_a_batch_claims_only_the_lines_left_in_the_budget() -> None:
    console, _ = make(NORMAL)
    console.tick(10.0)
    assert console.claim_events(5) == 3  # the budget is 3 lines per second
    assert console.claim_events(2) == 0
    assert console.summary_due(15.0)  # lines were held back
    console.tick(16.0)
    assert console.claim_events(1) == 1
    quiet, _ = make(QUIET)
    assert quiet.claim_events(4) == 0
    verbose, _ = make(VERBOSE)
    assert verbose.claim_events(400) == 400
