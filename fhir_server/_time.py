"""FHIR date, dateTime and instant values as epoch microseconds (https://hl7.org/fhir/R4/datatypes.html#dateTime).

The store keeps every timestamp as an integer count of microseconds since the epoch (UTC): exact,
portable between SQLite and PostgreSQL, and cheap to compare.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

Clock = Callable[[], int]
"""Returns the current time in epoch microseconds; injected so tests can control time."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATETIME = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def system_clock() -> int:
    return to_micros(datetime.now(UTC))


def to_micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def format_instant(micros: int) -> str:
    """A FHIR instant with microsecond precision, always in UTC."""
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_http_date(micros: int) -> str:
    return format_datetime(from_micros(micros).replace(microsecond=0), usegmt=True)


def parse_http_date(value: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return to_micros(parsed)


def parse_period(value: str) -> tuple[int, int] | None:
    """The inclusive range [low, high] in microseconds that a FHIR date/dateTime/instant covers.

    "2020" covers the whole year; values without a time zone are taken as UTC.
    Returns None when the text is not a FHIR date/dateTime/instant.
    """
    m = _DATETIME.match(value)
    if m is None:
        return None
    try:
        return _period(m)
    except (ValueError, OverflowError):
        return None


def _period(m: re.Match[str]) -> tuple[int, int]:
    year, month, day = int(m["y"]), int(m["m"] or 1), int(m["d"] or 1)
    tz = m["tz"]
    offset = timedelta(0)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    if m["H"] is None:
        start = datetime(year, month, day, tzinfo=UTC)
        if m["m"] is None:
            end = datetime(year + 1, 1, 1, tzinfo=UTC)
        elif m["d"] is None:
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        else:
            end = start + timedelta(days=1)
        return to_micros(start), to_micros(end) - 1
    frac = m["f"] or ""
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
    unit = 10 ** max(0, 6 - len(frac)) if m["S"] is not None else 60_000_000
    low = to_micros(start)
    return low, low + unit - 1
