"""Study pseudonyms (compliance/pseudonyms.py), de-identification of resources for research
(compliance/research.py) and FHIR date shifting (compliance/fhir_dates.py)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from compliance import fhir_dates
from compliance.keyring import Keyring
from compliance.pseudonyms import StudyPseudonyms
from compliance.research import CODE_ELEMENTS, deidentify

MASTER = bytes(range(32))
KEYS = Keyring({1: MASTER}, 1)
LINKABLE = frozenset({"Encounter", "Observation", "Condition"})


def study(name: str = "s1") -> StudyPseudonyms:
    return StudyPseudonyms.for_study(KEYS, name)


def test_patient_pseudonym_is_hmac_of_the_hkdf_study_key() -> None:
    # The documented recipe, recomputed from the master key: HMAC(HKDF(master, study), id).
    info = b"medikus keyring v1\x00pseudonym:study:s1"
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(MASTER)
    expected = hmac.new(key, b"patient-42", hashlib.sha256).hexdigest()[:32]
    assert study().patient("patient-42") == expected


def test_pseudonyms_differ_between_studies_and_kinds() -> None:
    a, b = study("s1"), study("s2")
    assert a.patient("p") != b.patient("p")
    assert a.resource("Observation", "p") != a.patient("p")
    assert a.resource("Observation", "x") != a.resource("Condition", "x")
    assert "key" not in repr(a).lower() or "key_version" in repr(a)
    with pytest.raises(ValueError):
        StudyPseudonyms("", b"\x00" * 32)
    with pytest.raises(ValueError):
        StudyPseudonyms("s", b"short")


@given(st.text(min_size=1, max_size=64), st.integers(1, 400))
def test_day_offset_is_stable_nonzero_and_bounded(patient: str, most: int) -> None:
    pseudonyms = StudyPseudonyms.for_study(KEYS, "s1", max_shift_days=most)
    offset = pseudonyms.day_offset(patient)
    assert offset == pseudonyms.day_offset(patient)
    assert offset != 0 and -most <= offset <= most


def test_day_offsets_cover_both_directions() -> None:
    offsets = {study().day_offset(f"p{i}") for i in range(400)}
    assert min(offsets) < -150 and max(offsets) > 150 and 0 not in offsets


# --- date shifting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "days", "moved"),
    [
        ("2025-11-03", 30, "2025-12-03"),
        ("2025-11-03T08:10:00+01:00", -3, "2025-10-31T08:10:00+01:00"),
        ("2025-12-31T23:59:59.123Z", 1, "2026-01-01T23:59:59.123Z"),
        ("2025-11", 20, "2025-12"),  # from the 15th
        ("2025", -30, "2025"),  # from 2 July
        ("2025", 190, "2026"),
        ("2024-02-29", 365, "2025-02-28"),
    ],
)
def test_shift_keeps_precision_and_time(value: str, days: int, moved: str) -> None:
    assert fhir_dates.shift(value, days) == moved


def test_shift_refuses_non_dates() -> None:
    assert fhir_dates.shift("gestern", 3) is None
    assert fhir_dates.shift("2025-13-01", 3) is None
    assert fhir_dates.shift("0001-01-01", -3) is None  # before year 1


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(-400, 400).filter(bool),
)
def test_shift_preserves_intervals(a: datetime, b: datetime, days: int) -> None:
    texts = [d.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z") for d in (a, b)]
    moved = [fhir_dates.shift(t, days) for t in texts]
    parsed = [fhir_dates.parse(m) for m in moved]
    assert parsed[0] is not None and parsed[1] is not None
    assert parsed[1].low - parsed[0].low == b - a
    assert parsed[0].low - a.replace(tzinfo=UTC) == timedelta(days=days)


# --- de-identification ------------------------------------------------------------------------


def observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "obs-1",
        "meta": {"versionId": "3", "lastUpdated": "2025-11-03T09:00:00Z"},
        "text": {"status": "generated", "div": "<div>Frau Schäfer</div>"},
        "contained": [{"resourceType": "Practitioner", "id": "x", "name": [{"family": "Weber"}]}],
        "extension": [{"url": "http://x", "valueString": "Hausbesuch Kusel"}],
        "identifier": [{"system": "urn:x", "value": "LAB-4711"}],
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood"}],
            "text": "RR nach Sturz",
        },
        "subject": {"reference": "Patient/pat-1", "display": "Elke Schäfer"},
        "encounter": {"reference": "https://medikus.test/fhir/Encounter/enc-1/_history/2"},
        "performer": [{"reference": "Practitioner/pr-1"}, {"reference": "#x"}],
        "effectivePeriod": {"start": "2025-11-03T08:10:00+01:00", "end": "2025-11-03"},
        "issued": "2025-11-03T09:00:00.000Z",
        "valueQuantity": {"value": 150, "unit": "mmHg", "code": "mm[Hg]"},
        "interpretation": [{"coding": [{"code": "H"}], "text": "zu hoch"}],
        "note": [{"authorString": "Schwester Anna", "text": "nach dem Sturz"}],
        "component": [
            {
                "code": {"coding": [{"code": "8480-6"}]},
                "valueSampledData": {
                    "origin": {"value": 0},
                    "period": 10,
                    "dimensions": 1,
                    "data": "1 2 3 E 4",
                },
            },
            {"code": {"coding": [{"code": "x"}]}, "valueString": "Patientin ruhig"},
        ],
    }


def test_deidentify_keeps_codes_values_and_shifted_dates_only() -> None:
    pseudonyms = study()
    days = pseudonyms.day_offset("pat-1")
    out = deidentify(observation(), "pat-1", pseudonyms, LINKABLE)

    def moved(value: str) -> str:
        shifted = fhir_dates.shift(value, days)
        assert shifted is not None
        return shifted

    assert out == {
        "resourceType": "Observation",
        "id": pseudonyms.resource("Observation", "obs-1"),
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{pseudonyms.patient('pat-1')}"},
        "encounter": {"reference": f"Encounter/{pseudonyms.resource('Encounter', 'enc-1')}"},
        "effectivePeriod": {
            "start": moved("2025-11-03T08:10:00+01:00"),
            "end": moved("2025-11-03"),
        },
        "issued": moved("2025-11-03T09:00:00.000Z"),
        "valueQuantity": {"value": 150, "unit": "mmHg", "code": "mm[Hg]"},
        "interpretation": [{"coding": [{"code": "H"}]}],
        "component": [
            {
                "code": {"coding": [{"code": "8480-6"}]},
                "valueSampledData": {
                    "origin": {"value": 0},
                    "period": 10,
                    "dimensions": 1,
                    "data": "1 2 3 E 4",
                },
            },
            {"code": {"coding": [{"code": "x"}]}},
        ],
    }


def test_patient_keeps_gender_and_birth_year() -> None:
    pseudonyms = study()
    patient = {
        "resourceType": "Patient",
        "id": "pat-1",
        "name": [{"family": "Schäfer"}],
        "gender": "female",
        "birthDate": "1950-04-02",
        "deceasedDateTime": "2025-12-24T03:00:00+01:00",
        "address": [{"city": "Kusel"}],
        "managingOrganization": {"reference": "Organization/mvz"},
        "link": [{"other": {"reference": "Patient/pat-0"}, "type": "replaces"}],
    }
    out = deidentify(patient, "pat-1", pseudonyms, LINKABLE)
    days = pseudonyms.day_offset("pat-1")
    assert out == {
        "resourceType": "Patient",
        "id": pseudonyms.patient("pat-1"),
        "gender": "female",
        "birthDate": str((date(1950, 4, 2) + timedelta(days=days)).year),
        "deceasedDateTime": fhir_dates.shift("2025-12-24T03:00:00+01:00", days),
        "link": [
            {"other": {"reference": f"Patient/{pseudonyms.patient('pat-0')}"}, "type": "replaces"}
        ],
    }


SECRET = "GEHEIM"
# Element names as they occur in resources, none of them a code element: whatever string they
# hold, in whatever nesting, must not leave.
_KEYS = st.sampled_from(
    [
        "valueString",
        "note",
        "text",
        "div",
        "comment",
        "description",
        "name",
        "family",
        "given",
        "line",
        "city",
        "value",
        "display",
        "title",
        "summary",
        "conclusion",
        "authorString",
        "patientInstruction",
        "url",
        "data",
        "reason",
        "answer",
        "detail",
    ]
)
_SECRETS = st.text(max_size=12).map(lambda t: f"{t}{SECRET}{t}")
_JSON = st.recursive(
    _SECRETS | st.integers(-(2**53), 2**53) | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(_KEYS, _JSON, max_size=5), st.sampled_from(sorted(CODE_ELEMENTS)))
def test_free_text_never_leaves(resource: dict[str, Any], code_key: str) -> None:
    resource = {"resourceType": "Observation", "id": "o", **resource, code_key: "kept-code"}
    out = deidentify(resource, "pat-1", study(), LINKABLE)
    assert SECRET not in orjson.dumps(out).decode()
    assert out[code_key] == "kept-code"
    assert deidentify(resource, "pat-1", study(), LINKABLE) == out  # deterministic
