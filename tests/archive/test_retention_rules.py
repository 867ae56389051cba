"""The end of retention (CSP R. 1112-7, pacs_hub/archive/retention_rules.py)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from pacs_hub.archive.retention_rules import Hold, add_years, parse_da, retention_end


def test_twenty_years_after_the_last_contact() -> None:
    assert retention_end(date(2001, 3, 15), 20, birth=date(1950, 1, 1)) == date(2021, 3, 15)


def test_a_child_s_record_is_kept_to_the_28th_birthday() -> None:
    # seen at 3, last contact at 5: 20 years would end at 25
    assert retention_end(date(1995, 6, 1), 20, birth=date(1990, 9, 9)) == date(2018, 9, 9)
    # a period ending after the 28th birthday is not shortened
    assert retention_end(date(2015, 6, 1), 20, birth=date(1990, 9, 9)) == date(2035, 6, 1)


def test_a_death_within_ten_years_of_the_last_contact_keeps_it_ten_years_from_the_death() -> None:
    last = date(2000, 1, 10)
    assert retention_end(last, 20, death=date(2004, 5, 5)) == date(2014, 5, 5)
    # "dans tous les cas": for a child too, the birthday extension gives way
    assert retention_end(last, 20, birth=date(1995, 1, 1), death=date(2001, 1, 1)) == date(
        2011, 1, 1
    )
    # a death ten years or more after the last contact changes nothing
    assert retention_end(last, 20, death=date(2012, 1, 1)) == date(2020, 1, 10)


def test_an_establishment_period_of_its_own() -> None:
    assert retention_end(date(2010, 1, 1), 5) == date(2015, 1, 1)


def test_released_holds_suspend_the_period_by_their_days() -> None:
    placed = datetime(2020, 1, 1, 8, 0)
    holds = [
        Hold(placed, placed + timedelta(days=30)),
        Hold(placed, placed + timedelta(seconds=1)),  # a day begun counts
        Hold(placed, None),  # in place: it blocks the destruction, adds nothing yet
    ]
    assert [h.days for h in holds] == [30, 1, 0]
    assert [h.active for h in holds] == [False, False, True]
    assert retention_end(date(2001, 1, 1), 20, holds=holds) == date(2021, 2, 1)


def test_29_february_plus_years() -> None:
    assert add_years(date(2000, 2, 29), 20) == date(2020, 2, 29)
    assert add_years(date(2000, 2, 29), 21) == date(2021, 2, 28)


FULLWIDTH_DATE = "".join(chr(0xFF10 + int(d)) for d in "20200101")  # digits, not ASCII


@pytest.mark.parametrize("text", ["", "2020", "20201301", "2020-01-01", "abcdefgh", FULLWIDTH_DATE])
def test_what_is_no_date(text: str) -> None:
    assert parse_da(text) is None


def test_a_date() -> None:
    assert parse_da(" 20200131 ") == date(2020, 1, 31)
