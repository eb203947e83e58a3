"""Helpers of the video tests: an Appointment with its participants and real tokens for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi.testclient import TestClient

from compliance.auth import AuthServices, system_clock
from compliance.keyring import Keyring
from compliance.principal import Role, system_principal
from compliance.totp import code_at
from fhir_server.core import RecordCore
from fhir_server.request import FhirRequest
from medikus.app import create_app
from medikus.config import Config
from tests.compliance.auth_helpers import FAST_HASHER, PASSWORD

Create = Callable[[dict[str, Any]], str]  # a resource → its id


@dataclass(frozen=True)
class Consultation:
    appointment: str
    practitioner: str
    patient: str


def seed_consultation(create: Create) -> Consultation:
    practitioner = create({"resourceType": "Practitioner", "name": [{"family": "Weber"}]})
    patient = create({"resourceType": "Patient", "name": [{"family": "Mustermann"}]})
    appointment = create(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [
                {"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "accepted"},
                {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            ],
        }
    )
    return Consultation(appointment, practitioner, patient)


def doctor_token(auth: AuthServices, username: str, practitioner: str) -> str:
    """A doctor's session and an access token of it (the login form is tested in compliance)."""
    account, secret = auth.identity.create_account(
        username,
        PASSWORD,
        display_name="Dr. Anna Weber",
        roles=[Role.DOCTOR],
        organization="mvz-1",
        fhir_user=f"Practitioner/{practitioner}",
    )
    assert secret is not None
    login = auth.identity.login(username, PASSWORD, code_at(secret, system_clock()), None)
    token, _ = auth.signing.tokens().issue(
        subject=account.id,
        client_id="medikus-app",
        scope="user/Appointment.rs",
        fhir_user=f"Practitioner/{practitioner}",
        sid=login.session.id,
    )
    return token


def join_token(auth: AuthServices, patient: str, appointment: str) -> str:
    issued = auth.join.issue_link(f"Patient/{patient}", f"Appointment/{appointment}")
    token, _ = auth.redeem_join_link(issued.token)
    return token


def created_id(body: bytes) -> str:
    return str(orjson.loads(body)["id"])


BASE = "http://testserver"


def create_as_system(record: RecordCore, resource: dict[str, Any]) -> str:
    """Creates ``resource`` in process as the system; its id."""
    request = FhirRequest(
        "POST",
        resource["resourceType"],
        headers={"content-type": "application/fhir+json"},
        body=orjson.dumps(resource),
        principal=system_principal(),
    )
    response = record.handle(request)
    assert response.status == 201, response.body
    return created_id(response.body)


@contextmanager
def video_world(
    database_url: str, record: RecordCore, keyring: Keyring
) -> Iterator[tuple[TestClient, AuthServices, Consultation]]:
    """The whole app (real authorization server) with a seeded consultation."""
    auth = AuthServices.open(database_url, keyring, BASE, hasher=FAST_HASHER)
    consultation = seed_consultation(lambda resource: create_as_system(record, resource))
    app = create_app(Config(rate_limit=False, redis_url=None), record=record, auth=auth)
    with TestClient(app, base_url=BASE) as http:
        yield http, auth, consultation
