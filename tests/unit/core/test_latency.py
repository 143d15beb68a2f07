"""The latency histogram: percentiles by rank, from batches of record timestamps."""

from orderpipe.core.latency import LatencyHistogram


def test_percentiles_are_taken_by_rank_over_every_batch() -> None:
    histogram = LatencyHistogram(warmup_ms=0)
    histogram.add(1_000, range(901, 1_001))  # latencies 0..99 ms
    histogram.add(2_000, [1_000] * 100)  # 100 records at 1000 ms
    assert histogram.total == 200
    assert histogram.percentile(0.5) == 99
    assert histogram.percentile(0.51) == 1_000
    assert histogram.percentile(0.01) == 1
    assert histogram.percentile(1.0) == 1_000
    assert "p50 99 ms, p99 1000 ms" in histogram.describe()


def test_an_empty_histogram_says_so() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(0.99) is None
    assert histogram.describe() == "Latency: no records"


def test_records_of_the_warm_up_are_left_out() -> None:
    histogram = LatencyHistogram(warmup_ms=1_000)
    histogram.add(10_500, [10_000, 10_400])  # the first second: left out
    histogram.add(11_600, [11_000, 11_500])
    assert histogram.total == 2
    assert histogram.percentile(1.0) == 600
