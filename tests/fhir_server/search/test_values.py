"""Value conversions: date ranges, number precision, strings, references.

Spec: https://hl7.org/fhir/R4/search.html#date, #number, #string and
https://hl7.org/fhir/R4/references.html#literal.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.search import DATE_MAX, DATE_MIN
from fhir_server.search.values import (
    ParsedReference,
    date_range,
    make_reference_parser,
    normalize_string,
    number_range,
    period_range,
)

UTC = dt.UTC
DAY_US = 86_400_000_000


def us(moment: dt.datetime) -> int:
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", "2020-01-01T00:00:00+00:00", "2021-01-01T00:00:00+00:00"),
        ("2020-02", "2020-02-01T00:00:00+00:00", "2020-03-01T00:00:00+00:00"),
        ("2020-12", "2020-12-01T00:00:00+00:00", "2021-01-01T00:00:00+00:00"),
        ("2020-02-29", "2020-02-29T00:00:00+00:00", "2020-03-01T00:00:00+00:00"),
        ("2020-02-29T10:00:00Z", "2020-02-29T10:00:00+00:00", "2020-02-29T10:00:01+00:00"),
        ("2020-02-29T10:00:00+02:00", "2020-02-29T08:00:00+00:00", "2020-02-29T08:00:01+00:00"),
        ("2020-02-29T10:00:00", "2020-02-29T10:00:00+00:00", "2020-02-29T10:00:01+00:00"),
        (
            "2020-02-29T10:00:00.5-01:00",
            "2020-02-29T11:00:00.5+00:00",
            "2020-02-29T11:00:00.6+00:00",
        ),
        (
            "2020-02-29T10:00:00.123Z",
            "2020-02-29T10:00:00.123+00:00",
            "2020-02-29T10:00:00.124+00:00",
        ),
        ("1969-12-31", "1969-12-31T00:00:00+00:00", "1970-01-01T00:00:00+00:00"),
    ],
)
def test_date_precision_ranges(text: str, low: str, high: str) -> None:
    expected_high = us(dt.datetime.fromisoformat(high)) - 1
    assert date_range(text) == (us(dt.datetime.fromisoformat(low)), expected_high)


@pytest.mark.parametrize(
    "text", ["", "20", "2020-13", "2020-02-30", "yesterday", "2020-01-01T25:00"]
)
def test_invalid_dates_give_none(text: str) -> None:
    assert date_range(text) is None


@given(st.datetimes(timezones=st.timezones() | st.just(UTC)))
def test_seconds_precision_covers_one_second(moment: dt.datetime) -> None:
    text = moment.replace(microsecond=0).isoformat()
    low, high = date_range(text) or (0, 0)
    assert low == us(moment.replace(microsecond=0))
    assert high - low == 999_999


@given(st.dates())
def test_day_precision_covers_the_day(day: dt.date) -> None:
    low, high = date_range(day.isoformat()) or (0, 0)
    assert low == us(dt.datetime(day.year, day.month, day.day, tzinfo=UTC))
    assert high - low == DAY_US - 1


def test_period_open_ends() -> None:
    assert period_range("2020", None) == (date_range("2020-01-01")[0], DATE_MAX)  # type: ignore[index]
    assert period_range(None, "2020") == (DATE_MIN, date_range("2020-12-31")[1])  # type: ignore[index]
    assert period_range(None, None) is None
    assert period_range("garbage", None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100, (100.0, 99.5, 100.5)),
        (Decimal("1.00"), (1.0, 0.995, 1.005)),
        ("1.00", (1.0, 0.995, 1.005)),
        (1.5, (1.5, 1.45, 1.55)),
        (Decimal("1E+2"), (100.0, 50.0, 150.0)),
        (-3, (-3.0, -3.5, -2.5)),
    ],
)
def test_number_precision(value: object, expected: tuple[float, float, float]) -> None:
    assert number_range(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", [True, None, "abc", "NaN", "Infinity", [1], {"value": 1}, 10**400, "1e400"]
)
def test_non_numbers_give_none(value: object) -> None:
    assert number_range(value) is None


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=4, max_value=10**9, min_value=-(10**9)
    )
)
def test_number_range_contains_value(value: Decimal) -> None:
    number, low, high = number_range(value) or (0.0, 0.0, 0.0)
    assert low < number < high
    # Float rounding grows with magnitude (1e9 keeps ~7 decimal digits).
    assert high - low == pytest.approx(10.0**-4, abs=abs(number) * 1e-15 + 1e-15)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Chalmers", "chalmers"),
        ("Müller", "muller"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),
        ("Zoë Ångström", "zoe angstrom"),
        ("ﬁne", "fine"),  # NFKD compatibility ligature
    ],
)
def test_normalize_string(text: str, expected: str) -> None:
    assert normalize_string(text) == expected


@given(st.text())
def test_normalized_strings_have_no_marks_or_capitals(text: str) -> None:
    normalized = normalize_string(text)
    assert not any(unicodedata.combining(c) for c in normalized)
    assert normalize_string(text.upper() if text.isascii() else text) == normalized


parse_reference = make_reference_parser({"Patient", "Observation", "Group"})


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", ParsedReference("Patient", "123", None)),
        ("Patient/123/_history/2", ParsedReference("Patient", "123", "2")),
        ("http://example.org/fhir/Patient/a.b-c", ParsedReference("Patient", "a.b-c", None)),
        ("https://x.org/Patient/1/_history/9", ParsedReference("Patient", "1", "9")),
        ("urn:uuid:8c3a3c3f-3d7e-4c39-9f2e-2b7a1f0c9d10", None),
        ("Unknown/1", None),
        ("http://example.org/a/b", None),
        ("Patient?identifier=x|1", None),
        ("Patient/" + "x" * 65, None),
        ("foo/Patient/1", None),
        ("Patient", None),
    ],
)
def test_parse_reference(reference: str, expected: ParsedReference | None) -> None:
    assert parse_reference(reference) == expected


@given(
    st.sampled_from(["Patient", "Observation", "Group"]),
    st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True),
    st.sampled_from(["", "http://h/fhir/", "https://h:8080/r4/"]),
)
def test_parse_reference_round_trip(resource_type: str, resource_id: str, base: str) -> None:
    parsed = parse_reference(f"{base}{resource_type}/{resource_id}")
    assert parsed == ParsedReference(resource_type, resource_id, None)
