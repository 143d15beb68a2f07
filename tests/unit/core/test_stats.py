"""The orders-stats state: keys, values and the group-wide total."""

import pytest

from orderpipe.core.stats import StatsKeys, decode_stats, encode_stats, group_total, stats_key
from orderpipe.errors import DeserializationError
from orderpipe.model.money import RunningAverage


def test_a_key_names_the_consumer_group_and_the_input_partition() -> None:
    keys = StatsKeys("team/a", {"orders": 3, "orders-retry": 13})
    assert stats_key("team/a", "orders", 0) == "team/a/orders-0"
    assert keys.partition_of(stats_key("team/a", "orders-retry", 12).encode()) == ("orders-retry", 12)
    assert keys.partition_of(b"team/b/orders-0") is None
    assert keys.partition_of(b"team/a/x/orders-0") is None
    with pytest.raises(DeserializationError, match="names no consumer group"):
        keys.partition_of(b"orders-0")
    with pytest.raises(DeserializationError, match="names no partition"):
        keys.partition_of(b"team/a/unknown-3")
    with pytest.raises(DeserializationError, match="names no partition"):
        keys.partition_of(b"team/a/orders-10000")
    # A partition beyond the count at start is kept, and counts once the consumer is assigned it.
    assert keys.partition_of(b"team/a/orders-3") == ("orders", 3)
    assert not keys.counted(("orders", 3))
    keys.extend([("orders", 3)])
    assert keys.counted(("orders", 3))


def test_values_are_the_json_of_design_section_3_with_the_offset_they_reach() -> None:
    assert encode_stats(RunningAverage(3, 13650), 42) == b'{"count":3,"sum_cents":13650,"next_offset":42}'
    assert decode_stats(b'{"count":3,"sum_cents":13650,"next_offset":42}') == (RunningAverage(3, 13650), 42)
    assert decode_stats(b'{"count": 3, "sum_cents": 13650}') == (RunningAverage(3, 13650), None)
    assert decode_stats(b'{"count":1,"sum_cents":5,"added_later":true}') == (RunningAverage(1, 5), None)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"not json", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"count": 1}', "sum_cents"),
        (b'{"count": -1, "sum_cents": 0}', "count"),
        (b'{"count": 9007199254740993, "sum_cents": 0}', "count"),
        (b'{"count": 0, "sum_cents": 5}', "no orders"),
        (b'{"count": 1, "sum_cents": 9223372036854775808}', "sum_cents"),
        (b'{"count": 1, "sum_cents": 2, "next_offset": 9223372036854775808}', "next_offset"),
        (b'{"count": 1.5, "sum_cents": 0}', "count"),
        (b'{"count": true, "sum_cents": 0}', "count"),
        (b'{"count": 1, "sum_cents": "12"}', "sum_cents"),
        (b'{"count": 1, "sum_cents": 2, "next_offset": -1}', "next_offset"),
        (b"[" * 500 + b"]" * 500, "not a JSON object"),
        (b'{"count": ' + b"9" * 5000 + b', "sum_cents": 0}', "more than 1024"),  # Python refuses the integer
        (b"[" * 100_000 + b"]" * 100_000, "more than 1024"),  # would recurse out of json.loads
    ],
)
def test_a_malformed_value_is_named(value: bytes, problem: str) -> None:
    with pytest.raises(DeserializationError, match=problem):
        decode_stats(value)


def test_the_group_total_takes_own_partitions_from_memory_and_the_rest_from_the_topic() -> None:
    published = {
        ("orders", 0): RunningAverage(2, 200),  # ours, older than memory
        ("orders", 1): RunningAverage(3, 300),
        ("orders-retry", 1): RunningAverage(1, 50),
    }
    own = {("orders", 0): RunningAverage(4, 450)}
    assert group_total(published, own) == RunningAverage(8, 800)
    assert group_total({}, {}) == RunningAverage()
