"""Order book and fixed-point formatting."""

from __future__ import annotations

import pytest

from simulator.book import Book
from simulator.fixed import dollars, fp, rfc3339, rfc3339_ms


def test_fixed_point_strings():
    """Prices print with 4 decimals and counts with 2, signs kept."""
    assert dollars(4200) == "0.4200"
    assert dollars(10_000) == "1.0000"
    assert dollars(5) == "0.0005"
    assert fp(13600) == "136.00"
    assert fp(-5400) == "-54.00"
    assert fp(51) == "0.51"
    assert rfc3339(1669149841) == "2022-11-22T20:44:01Z"
    assert rfc3339_ms(1669149841007) == "2022-11-22T20:44:01.007Z"


def test_book_apply_removes_empty_levels_and_sorts_ascending():
    """Deltas add and remove sizes; a level at zero vanishes; levels list ascending."""
    b = Book()
    b.apply("yes", 4200, 1000)
    b.apply("yes", 4100, 500)
    b.apply("yes", 4200, -1000)
    b.apply("no", 5000, 250)
    assert b.levels("yes") == [["0.4100", "5.00"]]
    assert b.best("no") == (5000, 250)
    b.apply("yes", 4300, 100)
    assert b.levels("yes", depth=1) == [["0.4300", "1.00"]]
    with pytest.raises(ValueError):
        b.apply("no", 5000, -251)


def test_book_crossing_and_clear():
    """A bid meeting the other side's best crosses; clear_deltas empties the book."""
    b = Book()
    b.apply("yes", 6000, 100)
    b.apply("no", 3000, 100)
    assert b.crosses("no", 4000)
    assert not b.crosses("no", 3900)
    for side, price, delta in b.clear_deltas():
        b.apply(side, price, delta)
    assert not b.yes
    assert not b.no
