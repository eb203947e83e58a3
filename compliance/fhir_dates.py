"""FHIR date, dateTime and instant values as intervals and shifted copies (https://hl7.org/fhir/R4/datatypes.html#dateTime).

A partial value covers an interval ("2026" is the whole year). Values without a time zone (dates,
and dateTimes without an offset) are taken as UTC. Used by consent periods (consent.py), the
date shifting of research exports (pseudonyms.py) and the record core's date index and search
(fhir_server/_time.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

__all__ = ["FhirDate", "parse", "shift"]

_DATETIME = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(?P<time>T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(:(?P<S>\d{2})(\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True, slots=True)
class FhirDate:
    """A parsed value: ``low`` inclusive, ``high`` exclusive, both aware (UTC)."""

    low: datetime
    high: datetime

    def covers(self, at: datetime) -> bool:
        return self.low <= at < self.high


def parse(value: object) -> FhirDate | None:
    """The interval a FHIR date/dateTime/instant covers; None if ``value`` is not one."""
    if not isinstance(value, str):
        return None
    m = _DATETIME.match(value)
    if m is None:
        return None
    try:
        return _interval(m)
    except (ValueError, OverflowError):
        return None


def _interval(m: re.Match[str]) -> FhirDate:
    year, month, day = int(m["y"]), int(m["m"] or 1), int(m["d"] or 1)
    if m["H"] is None:
        start = datetime(year, month, day, tzinfo=UTC)
        if m["m"] is None:
            end = datetime(year + 1, 1, 1, tzinfo=UTC)
        elif m["d"] is None:
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        else:
            end = start + timedelta(days=1)
        return FhirDate(start, end)
    frac = m["f"] or ""
    offset = _offset(m["tz"])
    start = (
        datetime(
            year,
            month,
            day,
            int(m["H"]),
            int(m["M"]),
            int(m["S"] or 0),
            int((frac + "000000")[:6]),
            tzinfo=UTC,
        )
        - offset
    )
    if m["S"] is None:
        unit = timedelta(minutes=1)
    else:
        unit = timedelta(microseconds=10 ** max(0, 6 - len(frac)))
    return FhirDate(start, start + unit)


def _offset(tz: str | None) -> timedelta:
    if not tz or tz == "Z":
        return timedelta(0)
    sign = 1 if tz[0] == "+" else -1
    return sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))


def shift(value: str, days: int) -> str | None:
    """``value`` moved by whole ``days``, rendered at the same precision (None if not a date).

    Times of day and offsets stay as written, so intervals between two shifted values of one
    patient are exact. A year or month moves from its middle (1 July, the 15th), so a shift of a
    few months changes it only when the real date could have lain there too."""
    m = _DATETIME.match(value)
    if m is None or parse(value) is None:
        return None
    try:
        return _shifted(m, days)
    except OverflowError:  # beyond year 1 or 9999
        return None


def _shifted(m: re.Match[str], days: int) -> str:
    year = int(m["y"])
    if m["m"] is None:
        return f"{(date(year, 7, 2) + timedelta(days=days)).year:04d}"
    month = int(m["m"])
    if m["d"] is None:
        moved = date(year, month, 15) + timedelta(days=days)
        return f"{moved.year:04d}-{moved.month:02d}"
    moved = date(year, month, int(m["d"])) + timedelta(days=days)
    return moved.isoformat() + (m["time"] or "")
