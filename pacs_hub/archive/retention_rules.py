"""When a study's legal retention ends: French rules for medical records (CSP R. 1112-7).

The medical record, images included, is kept **20 years from the patient's last stay
or outpatient consultation** at the establishment; when that ends before the
patient's **28th birthday**, until that birthday; and *in every case*, when the patient
**died less than 10 years after the last visit**, 10 years from the death. Every
period is **suspended** by a claim on medical liability (a legal hold here: while one
is placed nothing is destroyed, and the time it lasted is added to the period).
Private practitioners keep images at least 5 years: an establishment's period is
configurable (``retention_years``), 20 by default (``PACS_HUB_RETENTION_YEARS``).

Dates are DICOM DA values (PS3.5 6.2, ``YYYYMMDD``); one that is empty or not a date
is no date. :func:`retention_end` gives the first day the record may be destroyed.
See ../shared/reference/france.md section 5.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

CHILD_UNTIL_AGE = 28
AFTER_DEATH_YEARS = 10


def parse_da(value: str | None) -> date | None:
    """A DICOM DA value (``YYYYMMDD``) as a date; None when empty or not a date."""
    text = (value or "").strip()
    if len(text) != 8 or not text.isascii() or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def add_years(day: date, years: int) -> date:
    """``day`` plus whole years; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


@dataclass(frozen=True, slots=True)
class Hold:
    """A legal hold (a claim on medical liability) on a study or on a patient."""

    placed_at: datetime
    released_at: datetime | None

    @property
    def active(self) -> bool:
        return self.released_at is None

    @property
    def days(self) -> int:
        """Whole days it suspended the period (a day begun counts); 0 while active."""
        if self.released_at is None:
            return 0
        seconds = max((self.released_at - self.placed_at).total_seconds(), 0.0)
        return int(-(-seconds // 86400))


def retention_end(
    last_contact: date,
    years: int,
    birth: date | None = None,
    death: date | None = None,
    holds: Iterable[Hold] = (),
) -> date:
    """The first day a record whose last contact was ``last_contact`` may be destroyed.

    ``years`` after the last contact, extended to the 28th birthday, replaced by 10
    years after a death that came less than 10 years after the last contact (CSP
    R. 1112-7: "dans tous les cas"), then extended by the days of released holds.
    """
    end = add_years(last_contact, years)
    if birth is not None:
        end = max(end, add_years(birth, CHILD_UNTIL_AGE))
    if death is not None and death < add_years(last_contact, AFTER_DEATH_YEARS):
        end = add_years(death, AFTER_DEATH_YEARS)
    return end + timedelta(days=sum(hold.days for hold in holds))
