"""What the live views show, from readings of the programs' counters (orderpipe.core.status): no terminal, no Kafka."""

import pytest

from orderpipe.core.status import (
    BAR_WIDTH,
    HISTORY,
    MAX_PARTITION_ROWS,
    ConsumerReading,
    ConsumerTracker,
    LoopReading,
    ProducerReading,
    ProducerTracker,
    RateMeter,
    bar,
    duration,
    sparkline,
)
from orderpipe.model.money import RunningAverage


def test_the_rate_is_taken_over_the_window_up_to_the_last_reading() -> None:
    meter = RateMeter(window_s=3.0)
    assert meter.add(10.0, 0) == 0.0  # one reading: no rate yet
    assert meter.add(11.0, 100) == 100.0
    assert meter.add(12.0, 300) == 150.0
    assert meter.add(13.0, 600) == 200.0  # 600 over the 3 s since the first reading
    assert meter.add(14.0, 600) == pytest.approx(500 / 3)  # the reading at 10 s has left the window
    assert meter.add(20.0, 600) == 0.0  # nothing for longer than the window


def test_the_sparkline_spans_the_lowest_to_the_highest_value() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([100, 900]) == "▁█"
    assert sparkline([4550, 4550, 4550]) == "▄▄▄"  # flat: a flat middle line
    assert sparkline([]) == ""
    assert sparkline(list(range(100)), width=10) == "▁▂▃▃▄▅▆▆▇█"  # the last ten only


def test_the_bar_is_the_value_out_of_the_maximum_in_eighths() -> None:
    assert bar(10, 10) == "█" * BAR_WIDTH
    assert bar(5, 10, width=4) == "██  "
    assert bar(1, 16, width=4) == "▎   "  # 1/16 of 32 eighths: 2 eighths
    assert bar(1, 1_000_000, width=4) == "▏   ", "any lag at all shows"
    assert bar(0, 10, width=4) == "    "
    assert bar(3, 0, width=4) == "    "
    assert bar(20, 10, width=4) == "████", "never longer than the width"
    assert all(len(bar(n, 37)) == BAR_WIDTH for n in range(40))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (42.4, "0:42"), (725, "12:05"), (3723, "1:02:03"), (None, "--:--"), (-1, "--:--")],
)
def test_durations_read_as_a_clock(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_durations_that_cannot_be_told_say_so() -> None:
    assert duration(float("inf")) == duration(float("nan")) == duration(10**9) == "--:--"


def test_the_producer_progress_counts_acknowledged_orders_and_the_time_left() -> None:
    tracker = ProducerTracker(count=1000, every_s=0.5)
    assert tracker.due(0.0)
    first = tracker.status(ProducerReading(0.0, 200, 0, 0, "O-1"))
    assert (first.percent, first.left_s, first.per_s) == (0, None, 0.0)  # no rate yet, so no time left
    assert not tracker.due(0.4)
    assert tracker.due(0.5)
    second = tracker.status(ProducerReading(1.0, 600, 499, 0, "O-2"))
    assert second.percent == 49
    assert second.per_s == 499.0
    assert second.left_s == pytest.approx(501 / 499)
    last = tracker.status(ProducerReading(2.0, 1000, 999, 1, "O-3"))
    assert last.percent == 99, "100% only once every order is acknowledged"
    assert last.left_s == 0.0, "nothing left to wait for: one failed"
    done = ProducerTracker(count=1000).status(ProducerReading(0.0, 1000, 1000, 0, None))
    assert done.percent == 100
    assert ProducerTracker(count=0).status(ProducerReading(0.0, 0, 0, 0, None)).percent == 100


def test_without_a_count_the_producer_has_no_percentage_or_time_left() -> None:
    status = ProducerTracker(count=None).status(ProducerReading(5.0, 7, 6, 1, "O-X-7"))
    assert (status.percent, status.left_s, status.count) == (None, None, None)
    assert (status.sent, status.delivered, status.failed, status.last_order) == (7, 6, 1, "O-X-7")


def reading(
    at_s: float,
    *,
    committed: int = 0,
    lags: dict[tuple[str, int], int] | None = None,
    paused: dict[tuple[str, int], int] | None = None,
    average: RunningAverage | None = None,
) -> ConsumerReading:
    loop = LoopReading(average or RunningAverage(), lags, paused or {}, 0.012)
    return ConsumerReading(at_s, loop, committed, 7, 3, (("deserialization", 1), ("validation", 2)))


def test_the_consumer_panel_shows_rates_counts_and_the_lag_of_each_partition() -> None:
    tracker = ConsumerTracker("orders-retry", "group-a", "single-object Avro")
    lags = {("orders", 1): 40, ("orders", 0): 0, ("orders-retry", 0): 5, ("orders-retry", 1): 2}
    tracker.status(reading(100.0, lags=dict.fromkeys(lags, 0)))
    status = tracker.status(
        reading(
            102.0,
            committed=800,
            lags=lags,
            paused={("orders-retry", 0): 103_500},
            average=RunningAverage(4, 1000),
        )
    )
    assert (status.in_per_s, status.committed_per_s) == (423.5, 400.0)  # 800 committed and 47 more behind, in 2 s
    assert (status.processed, status.retried, status.dead_lettered_total) == (7, 3, 3)
    assert (status.group, status.wire, status.average, status.last_commit_ms) == (
        "group-a",
        "single-object Avro",
        "$2.50",
        12.0,
    )
    assert [(row.name, row.lag) for row in status.partitions] == [
        ("orders-0", 0),
        ("orders-1", 40),
        ("orders-retry-0", 5),
        ("orders-retry-1", 2),
    ]
    assert status.partitions[1].bar == "█" * BAR_WIDTH, "the largest lag fills the bar"
    assert status.partitions[0].bar.strip() == ""
    assert status.partitions[2].due_in_s == 1.5
    assert status.partitions[3].due_in_s is None
    assert (status.retry_waiting, status.next_due_in_s) == (7, 1.5)
    assert status.hidden == (0, 0)


def test_records_in_are_those_committed_plus_the_growth_of_the_lag() -> None:
    tracker = ConsumerTracker("orders-retry", "g", "w")
    tracker.status(reading(0.0, committed=0, lags={("orders", 0): 1000}))
    draining = tracker.status(reading(2.0, committed=800, lags={("orders", 0): 200}))
    assert (draining.in_per_s, draining.committed_per_s) == (0.0, 400.0), "a backlog drains: nothing new arrives"
    unknown = tracker.status(reading(2.5, committed=900, lags=None))
    assert unknown.in_per_s is None, "no lag, no arrivals to tell"
    lost = tracker.status(reading(3.0, committed=900, lags={}))  # the partition went to another consumer
    assert lost.in_per_s == 0.0, "never below zero"


def test_the_running_average_sparkline_follows_the_recent_averages() -> None:
    tracker = ConsumerTracker("orders-retry", "g", "w")
    status = tracker.status(reading(0.0))
    assert (status.average, status.sparkline) == ("n/a", ""), "no orders yet: nothing to draw"
    for step in range(HISTORY + 5):
        status = tracker.status(reading(float(step), average=RunningAverage(1, 100 + step)))
    assert len(status.sparkline) == HISTORY
    assert status.sparkline[0] == "▁"
    assert status.sparkline[-1] == "█"


def test_unknown_lag_and_no_paused_retries_show_as_unknown_and_nothing_due() -> None:
    status = ConsumerTracker("orders-retry", "g", "w").status(
        reading(0.0, lags=None, paused={("orders", 2): 5000})  # an orders partition waiting for its schema
    )
    assert (status.partitions, status.retry_waiting, status.next_due_in_s) == ((), None, None)


def test_many_partitions_show_the_largest_lags_and_sum_up_the_rest() -> None:
    lags = {("orders", p): p for p in range(MAX_PARTITION_ROWS + 8)}
    status = ConsumerTracker("orders-retry", "g", "w").status(reading(0.0, lags=lags))
    shown = [row.lag for row in status.partitions]
    assert shown == list(range(8, MAX_PARTITION_ROWS + 8)), "the largest, in partition order"
    assert status.hidden == (8, sum(range(8)))


def test_a_due_time_already_past_shows_as_due_now() -> None:
    status = ConsumerTracker("orders-retry", "g", "w").status(
        reading(10.0, lags={("orders-retry", 0): 1}, paused={("orders-retry", 0): 9_000})
    )
    assert status.next_due_in_s == 0.0
    assert status.partitions[0].due_in_s == 0.0
