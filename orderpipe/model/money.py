"""Exact money: prices become integer cents once, at intake, and sums stay integers."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = ["RunningAverage", "divide_half_even", "format_cents", "to_cents"]


def to_cents(price: float | Decimal) -> int:
    """Converts a dollar price to whole cents, rounding half to even.

    Exact: the price's value is taken as a ratio of integers (no decimal repr in
    between), so the result depends only on the value the wire carried.
    """
    numerator, denominator = price.as_integer_ratio()
    return divide_half_even(numerator * 100, denominator)


def divide_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to an integer, half to even; denominator > 0."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def format_cents(cents: int) -> str:
    """Formats cents as dollars for people, e.g. 4550 -> "$45.50"."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


@dataclass(frozen=True)
class RunningAverage:
    """Count and integer sum of processed prices; the average is derived, never stored."""

    count: int = 0
    sum_cents: int = 0

    def add(self, cents: int) -> RunningAverage:
        return RunningAverage(self.count + 1, self.sum_cents + cents)

    def __add__(self, other: RunningAverage) -> RunningAverage:
        return RunningAverage(self.count + other.count, self.sum_cents + other.sum_cents)

    @property
    def average_cents(self) -> int | None:
        """The mean price in cents, rounded half to even; None before the first order."""
        if self.count == 0:
            return None
        return divide_half_even(self.sum_cents, self.count)

    def describe(self) -> str:
        average = self.average_cents
        return "n/a" if average is None else format_cents(average)
