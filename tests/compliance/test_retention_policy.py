"""The retention policy (compliance/retention.py): §630f(3) BGB periods, legal holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compliance.retention import (
    Activity,
    LegalHold,
    RetentionRule,
    Status,
    assess,
    erasable_from,
)
from tests.compliance.clock import START

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime.fromtimestamp(START / 1_000_000, UTC)  # the ManualClock's start, 2026-01-01


def activity(
    last_treatment: datetime | None,
    last_recorded: datetime | None = None,
    *,
    ongoing: bool = False,
    patient: str = "p",
) -> Activity:
    recorded = last_recorded or last_treatment or datetime(2000, 1, 1, tzinfo=UTC)
    return Activity(patient, last_treatment, ongoing, recorded)


def hold(patient: str = "p", *, released: bool = False) -> LegalHold:
    placed = datetime(2024, 5, 2, tzinfo=UTC)
    return LegalHold(
        patient,
        "Arzthaftungsklage LG Kaiserslautern",
        "dpo",
        placed,
        "dpo" if released else None,
        placed + timedelta(days=30) if released else None,
    )


def test_ten_years_after_the_day_treatment_ended() -> None:
    # §187(1)/§188(2) BGB: ended 10 March 2015 → period ends with 10 March 2025.
    end = datetime(2015, 3, 10, 14, tzinfo=BERLIN)
    assert erasable_from(end) == datetime(2025, 3, 11, tzinfo=BERLIN)


def test_days_are_german_civil_days() -> None:
    # 23:30 UTC on 10 March is already 11 March in Kusel.
    end = datetime(2015, 3, 10, 23, 30, tzinfo=UTC)
    assert erasable_from(end) == datetime(2025, 3, 12, tzinfo=BERLIN)


def test_29_february_ends_on_28_february() -> None:
    end = datetime(2016, 2, 29, 9, tzinfo=BERLIN)
    assert erasable_from(end) == datetime(2026, 3, 1, tzinfo=BERLIN)


def test_from_year_end_counts_from_31_december() -> None:
    end = datetime(2015, 3, 10, tzinfo=BERLIN)
    assert erasable_from(end, RetentionRule(from_year_end=True)) == datetime(
        2026, 1, 1, tzinfo=BERLIN
    )


def test_naive_end_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        erasable_from(datetime(2015, 3, 10))


def test_due_eleven_years_after_treatment_retained_after_nine() -> None:
    eleven = assess(activity(NOW - timedelta(days=11 * 365)), [], NOW)
    assert eleven.status is Status.DUE and eleven.due
    nine = assess(activity(NOW - timedelta(days=9 * 365)), [], NOW)
    assert nine.status is Status.RETAINED and not nine.due
    assert nine.erasable_from is not None and nine.erasable_from > NOW


def test_a_later_write_extends_the_period() -> None:
    treated = NOW - timedelta(days=11 * 365)
    result = assess(activity(treated, NOW - timedelta(days=300)), [], NOW)
    assert result.status is Status.RETAINED
    assert result.treatment_end == NOW - timedelta(days=300)


def test_without_treatment_evidence_the_last_write_counts() -> None:
    result = assess(activity(None, NOW - timedelta(days=4000)), [], NOW)
    assert result.status is Status.DUE


def test_ongoing_treatment_is_never_due() -> None:
    result = assess(activity(NOW - timedelta(days=9000), ongoing=True), [], NOW)
    assert result.status is Status.ONGOING and result.erasable_from is None


def test_an_active_hold_stops_erasure_a_released_one_does_not() -> None:
    old = activity(NOW - timedelta(days=11 * 365))
    held = assess(old, [hold()], NOW)
    assert held.status is Status.HELD and not held.due and len(held.holds) == 1
    assert assess(old, [hold(released=True)], NOW).status is Status.DUE
    assert assess(old, [hold("someone-else")], NOW).status is Status.DUE


instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@given(instants, instants, st.booleans())
def test_never_due_before_ten_calendar_years(end: datetime, now: datetime, year_end: bool) -> None:
    rule = RetentionRule(from_year_end=year_end)
    result = assess(activity(end), [], now, rule)
    local_end = end.astimezone(BERLIN).date()
    local_now = now.astimezone(BERLIN).date()
    if result.due:
        # At least ten years (3652 days, two leap days at least) and the anniversary has passed.
        assert local_now > local_end.replace(year=local_end.year + 10, day=min(local_end.day, 28))
        assert now - end >= timedelta(days=3652)
    else:
        assert result.erasable_from is not None and now < result.erasable_from


@given(instants, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=4000)))
def test_once_due_stays_due_and_erasable_after_ten_years_and_a_day(
    end: datetime, later: timedelta
) -> None:
    erasable = erasable_from(end)
    # Ten years hold two or three leap days; then the rest of the day, in Berlin's offset.
    assert timedelta(days=3652) <= erasable - end <= timedelta(days=3655)
    assert assess(activity(end), [], erasable + later).due
    assert not assess(activity(end), [], erasable - timedelta(microseconds=1)).due
