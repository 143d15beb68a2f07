"""What a cluster run that lost orders says of each (tests/cluster/helpers.coverage): skipped, or never readable."""

from __future__ import annotations

from tests.cluster.helpers import Commits, coverage
from tests.integration.helpers import Record


def _value(offset: int, next_offset: int, timestamp: int) -> tuple[int, Record]:
    return next_offset, Record("orders-stats", 0, offset, timestamp, b"g/orders-1", b"{}", {}, ())


COMMITS: Commits = {1: [_value(10, 5, 1000), _value(11, 9, 2000)]}


def test_an_order_a_committed_value_passed_is_named_with_that_value() -> None:
    told = coverage(COMMITS, [(1, 6, 0)], "orders")

    assert told == [
        "orders-1@6 (0 on the retry topic): committed past by the stats value at offset 11 "
        "(next_offset 5 -> 9, written at 2000 ms)"
    ]


def test_an_order_past_every_committed_value_says_how_far_they_reach() -> None:
    told = coverage(COMMITS, [(1, 9, 2), (2, 0, 0)], "orders")

    assert told == [
        "orders-1@9 (2 on the retry topic): no committed stats value reaches it (the last reaches 9)",
        "orders-2@0 (0 on the retry topic): no committed stats value reaches it (the last reaches None)",
    ]
