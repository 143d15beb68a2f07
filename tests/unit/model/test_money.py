"""Cents conversion (round half to even) and the integer running average."""

import struct

import pytest

from orderpipe.model.money import RunningAverage, format_cents, to_cents


def float32(value: float) -> float:
    """The value as the Avro float on the wire carries it."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


@pytest.mark.parametrize(
    ("price", "cents"),
    [
        (45.5, 4550),
        (0.125, 12),  # exactly half a cent: to the even cent
        (0.375, 38),  # exactly half a cent: to the even cent
        (2.5, 250),
        (1e-9, 0),
    ],
)
def test_to_cents_rounds_half_to_even(price: float, cents: int) -> None:
    assert to_cents(price) == cents


@pytest.mark.parametrize("cents", [1, 19, 1999, 4550, 8990, 123456, 9_999_999, 10_000_000])
def test_float32_prices_come_back_as_the_cents_they_were_made_from(cents: int) -> None:
    assert to_cents(float32(cents / 100)) == cents


def test_format_cents() -> None:
    assert format_cents(4550) == "$45.50"
    assert format_cents(5) == "$0.05"
    assert format_cents(123456789) == "$1,234,567.89"
    assert format_cents(-250) == "-$2.50"


def test_running_average_is_exact_and_rounds_half_to_even() -> None:
    average = RunningAverage()
    assert average.average_cents is None
    assert average.describe() == "n/a"
    for cents in (4550, 1000, 1):
        average = average.add(cents)
    assert (average.count, average.sum_cents) == (3, 5551)
    assert average.average_cents == 1850  # 1850.33...
    assert RunningAverage(2, 5).average_cents == 2  # 2.5 -> 2 (even)
    assert RunningAverage(2, 7).average_cents == 4  # 3.5 -> 4 (even)
    assert RunningAverage(3, 5).average_cents == 2  # 1.67 -> 2


def test_running_averages_add_up() -> None:
    assert RunningAverage(2, 300) + RunningAverage(1, 600) == RunningAverage(3, 900)
