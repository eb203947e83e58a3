"""POST /auth/join: a patient redeems a join link or phone code for a token for one appointment
(compliance/_http.py, compliance/join_links.py). Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from compliance.auth import AuthServices
from fhir_server.core import RecordCore
from medikus.app import create_app
from medikus.config import Config
from tests.compliance.auth_helpers import (  # noqa: F401 # fixtures
    BASE,
    Recorded,
    auth_fixture,
    http_fixture,
    keyring_fixture,
    recorded_fixture,
)
from tests.compliance.clock import ManualClock
from tests.video.video_support import create_as_system

PATIENT = "Patient/pat-9"
PURPOSE = "Appointment/apt-1"
ADDRESS = "testclient"  # the TestClient's client address
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def join(http: TestClient, **form: str) -> httpx.Response:
    answer: httpx.Response = http.post("/auth/join", data=form)
    return answer


def refusal_body(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 400, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body: dict[str, Any] = answer.json()
    assert body["error"] == "invalid_grant"
    return body


def wrong_code(right: str) -> str:
    return "00000000" if right != "00000000" else "11111111"


# --- links ---------------------------------------------------------------------------------------


def test_link_answers_a_token_for_its_appointment(http: TestClient, auth: AuthServices) -> None:
    issued = auth.join.issue_link(PATIENT, PURPOSE)
    answer = join(http, link=issued.token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "scope",
        "purpose",
        "patient",
    }
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"] == "patient/Appointment.r?_id=apt-1"
    assert body["purpose"] == PURPOSE and body["patient"] == "pat-9"
    principal = auth.authenticate(f"Bearer {body['access_token']}", None)
    assert principal.patient == "pat-9" and principal.session_id is None


def test_used_expired_and_unknown_links_are_refused_alike(
    http: TestClient, auth: AuthServices, clock: ManualClock, recorded: Recorded
) -> None:
    used = auth.join.issue_link(PATIENT, PURPOSE)
    assert join(http, link=used.token).status_code == 200
    expiring = auth.join.issue_link(PATIENT, PURPOSE, ttl_s=60)
    clock.advance(61)
    bodies = [
        refusal_body(join(http, link=used.token)),
        refusal_body(join(http, link=expiring.token)),
        refusal_body(join(http, link="A" * 43)),
    ]
    assert bodies[0] == bodies[1] == bodies[2]
    assert " / " in bodies[0]["error_description"]  # German / English
    reasons = [d["reason"] for d in recorded.of("join-refused")]
    assert reasons == ["used", "expired", "unknown"]
    assert all(d["address"] == ADDRESS for d in recorded.of("join-refused"))
    assert [d["grant"] for d in recorded.of("join-redeemed")] == [used.grant.grant_id]


def test_link_valid_until_its_expiry(
    http: TestClient, auth: AuthServices, clock: ManualClock
) -> None:
    issued = auth.join.issue_link(PATIENT, PURPOSE, ttl_s=60)
    clock.advance(59)
    assert join(http, link=issued.token).status_code == 200


# --- phone codes ---------------------------------------------------------------------------------


def test_code_redeemed_once(http: TestClient, auth: AuthServices) -> None:
    issued = auth.join.issue_code(PATIENT, PURPOSE)
    grant = issued.grant.grant_id
    spoken = f"{issued.code[:4]} {issued.code[4:]}"  # as read out on the phone
    answer = join(http, grant=grant, code=spoken)
    assert answer.status_code == 200, answer.text
    assert answer.json()["purpose"] == PURPOSE
    refusal_body(join(http, grant=grant, code=issued.code))


def test_code_attempts_run_out(http: TestClient, auth: AuthServices, recorded: Recorded) -> None:
    issued = auth.join.issue_code(PATIENT, PURPOSE)
    grant = issued.grant.grant_id
    bodies = [refusal_body(join(http, grant=grant, code=wrong_code(issued.code)))]
    bodies += [refusal_body(join(http, grant=grant, code=wrong_code(issued.code)))]
    bodies += [refusal_body(join(http, grant=grant, code=wrong_code(issued.code)))]
    bodies += [refusal_body(join(http, grant=grant, code=wrong_code(issued.code)))]
    bodies += [refusal_body(join(http, grant=grant, code=wrong_code(issued.code)))]
    # The sixth attempt: even the right code is refused now, with the same answer.
    bodies += [refusal_body(join(http, grant=grant, code=issued.code))]
    assert all(body == bodies[0] for body in bodies)
    reasons = [d["reason"] for d in recorded.of("join-refused")]
    assert reasons == ["wrong-code"] * 5 + ["too-many-attempts"]
    assert recorded.of("join-redeemed") == []


def test_code_of_an_unknown_grant_is_refused_like_a_wrong_one(
    http: TestClient, auth: AuthServices
) -> None:
    issued = auth.join.issue_code(PATIENT, PURPOSE)
    wrong = refusal_body(join(http, grant=issued.grant.grant_id, code=wrong_code(issued.code)))
    assert refusal_body(join(http, grant="no-such-grant", code=issued.code)) == wrong


# --- malformed requests and throttling -----------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"link": ""},
        {"link": "not a token!"},
        {"grant": "g1"},
        {"code": "12345678"},
        {"grant": "g1", "code": "1234567"},
        {"grant": "g1", "code": "12345678a"},
        {"grant": "g/1", "code": "12345678"},
        {"link": "abc", "grant": "g1", "code": "12345678"},
    ],
)
def test_malformed_forms(http: TestClient, form: dict[str, str], recorded: Recorded) -> None:
    answer = join(http, **form)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert recorded.of("join-refused") == []  # nothing was redeemed, nothing counted


def test_not_a_form(http: TestClient) -> None:
    answer = http.post("/auth/join", json={"link": "abc"})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"
    answer = http.post("/auth/join", content="link=a&link=b", headers=_FORM)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_refusals_from_one_address_back_off(
    http: TestClient, auth: AuthServices, clock: ManualClock, recorded: Recorded
) -> None:
    issued = auth.join.issue_link(PATIENT, PURPOSE)
    for _ in range(6):  # five pass freely, the sixth starts the back-off
        refusal_body(join(http, link="B" * 43))
    throttled = join(http, link=issued.token)
    assert throttled.status_code == 429, throttled.text
    assert throttled.headers["retry-after"] == "1"
    assert throttled.headers["cache-control"] == "no-store"
    assert recorded.of("join-refused")[-1]["reason"] == "throttled"
    clock.advance(1)
    assert join(http, link=issued.token).status_code == 200  # the throttled try used nothing


def test_route_is_documented_with_a_form_body(http: TestClient) -> None:
    operation = http.get("/openapi.json").json()["paths"]["/auth/join"]["post"]
    assert operation["operationId"] == "auth-join"
    assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
    assert "security" not in operation  # public, like /auth/token


# --- the token through the whole app -------------------------------------------------------------


def _create(record: RecordCore, resource: dict[str, Any]) -> str:
    return create_as_system(record, resource)


def _appointment(record: RecordCore, patient: str) -> str:
    return _create(
        record,
        {
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
        },
    )


@pytest.fixture
def app_http(record: RecordCore, auth: AuthServices) -> Iterator[TestClient]:
    app = create_app(Config(rate_limit=False, redis_url=None), record=record, auth=auth)
    with TestClient(app, base_url=BASE) as client:
        yield client


def test_joined_token_reads_only_its_appointment(
    app_http: TestClient, auth: AuthServices, record: RecordCore
) -> None:
    patient = _create(record, {"resourceType": "Patient", "name": [{"family": "Mustermann"}]})
    mine = _appointment(record, patient)
    other = _appointment(record, patient)  # the same patient's next appointment
    issued = auth.join.issue_link(f"Patient/{patient}", f"Appointment/{mine}")
    answer = app_http.post("/auth/join", data={"link": issued.token})
    assert answer.status_code == 200, answer.text
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    read = app_http.get(f"/fhir/Appointment/{mine}", headers=headers)
    assert read.status_code == 200, read.text
    assert read.json()["id"] == mine
    assert app_http.get(f"/fhir/Appointment/{other}", headers=headers).status_code in (403, 404)
    assert app_http.get(f"/fhir/Patient/{patient}", headers=headers).status_code in (403, 404)
    again = app_http.post("/auth/join", data={"link": issued.token})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
