"""FHIR date, dateTime and instant values as epoch microseconds (https://hl7.org/fhir/R4/datatypes.html#dateTime).

The store keeps every timestamp as an integer count of microseconds since the epoch (UTC): exact,
portable between SQLite and PostgreSQL, and cheap to compare.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

from compliance import fhir_dates

Clock = Callable[[], int]
"""Returns the current time in epoch microseconds; injected so tests can control time."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    interval = fhir_dates.parse(value)
    if interval is None:
        return None
    return to_micros(interval.low), to_micros(interval.high) - 1
