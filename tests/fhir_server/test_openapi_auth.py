"""Schemathesis over the OpenAPI description with authentication on (https://schemathesis.readthedocs.io).

The whole app (record core, SMART authorization server, token check, audit trail, encryption)
is fuzzed operation by operation with a valid bearer token: a system token, and a patient's
token from the SMART login. No answer is a 5xx, and no operation that declares the bearer
scheme answers 2xx without a token or with an invalid one (Schemathesis' ``ignored_auth``:
after each 2xx it repeats the request without and with a bad token). Runs on SQLite and
PostgreSQL (~1 min).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from compliance.auth import AuthServices
from compliance.keyring import Keyring
from fhir_server.core import RecordCore
from medikus.app import create_app
from medikus.config import Config
from medikus.security_headers import ASGIApp
from tests.compliance.auth_helpers import (
    APP,
    APP_REDIRECT,
    APP_SCOPES,
    BASE,
    FAST_HASHER,
    exchange,
    login_for_code,
    make_patient,
)
from tests.compliance.clock import ManualClock

PATIENT = "pat-1"  # the patient who logs in (make_patient's default)
TARGET = "auth-target"  # the other patient: updates, patches and deletes aim at it
FHIR = {"Content-Type": "application/fhir+json"}
EXAMPLES_PER_OPERATION = 15  # × every documented operation (27): about 400 cases per run
# The operations anyone may call: the CapabilityStatement and the authorization server's own.
PUBLIC = {
    ("GET", "/fhir/metadata"),
    ("GET", "/.well-known/smart-configuration"),
    ("GET", "/auth/jwks"),
    ("POST", "/auth/token"),
    ("POST", "/auth/revoke"),
    ("POST", "/auth/join"),
}
SCHEME = "bearer"
BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
# Valid cases use these values (so they reach real resources), invalid cases anything else.
PATH_VALUES = {
    "type": {"enum": ["Patient", "Observation", "Encounter"]},
    "id": {"enum": [PATIENT, TARGET, "not-there"]},
    "vid": {"enum": ["1", "2"]},
    "compartment_type": {"enum": ["Observation", "Encounter"]},
}


# --- the app, its data and the tokens -----------------------------------------------------------


@dataclass(frozen=True)
class Running:
    app: FastAPI
    client: TestClient  # follows no redirects: the login form answers with one
    auth: AuthServices


@pytest.fixture
def running(record: RecordCore, database_url: str, keyring: Keyring) -> Iterator[Running]:
    auth = AuthServices.open(database_url, keyring, BASE, clock=ManualClock(), hasher=FAST_HASHER)
    app = create_app(Config(rate_limit=False), record=record, auth=auth)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield Running(app, client, auth)


def system_token(running: Running) -> str:
    token, _ = running.auth.server.internal_token("system/*.cruds")
    return token


def patient_token(running: Running) -> str:
    """A patient's token through the SMART login: ``patient/*.rs`` for ``pat-1``."""
    running.auth.server.register_client(
        APP, name="Kusel-App", scopes=APP_SCOPES, redirect_uris=(APP_REDIRECT,)
    )
    make_patient(running.auth, patient=PATIENT)
    code, verifier, _ = login_for_code(running.client, "erika", None)
    answer = exchange(running.client, code, verifier)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["patient"] == PATIENT
    return str(body["access_token"])


def seed(running: Running, token: str) -> None:
    """Both patients and an Observation of the one who logs in (something a patient may read)."""
    headers = {**FHIR, "Authorization": f"Bearer {token}"}
    for id in (PATIENT, TARGET):
        body = orjson.dumps({"resourceType": "Patient", "id": id, "name": [{"family": "Fuzz"}]})
        answer = running.client.put(f"/fhir/Patient/{id}", content=body, headers=headers)
        assert answer.status_code == 201, answer.text
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Puls"},
        "subject": {"reference": f"Patient/{PATIENT}"},
    }
    answer = running.client.post(
        "/fhir/Observation", content=orjson.dumps(observation), headers=headers
    )
    assert answer.status_code == 201, answer.text


# --- the OpenAPI description -------------------------------------------------------------------


def served_document(client: TestClient) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Known: FastAPI warns about duplicate operation ids (see test_fuzz.py).
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    )


def bearer_schemes(document: dict[str, Any]) -> set[str]:
    schemes = document.get("components", {}).get("securitySchemes", {})
    return {
        name
        for name, scheme in schemes.items()
        if scheme.get("type") == "http" and str(scheme.get("scheme", "")).lower() == "bearer"
    }


def requires_bearer(document: dict[str, Any], method: str, path: str) -> bool:
    operation = document["paths"][path][method.lower()]
    requirements = operation.get("security", document.get("security", []))
    schemes = bearer_schemes(document)
    return bool(requirements) and all(set(r) & schemes for r in requirements)


def fuzzable(document: dict[str, Any]) -> dict[str, Any]:
    """The served document with the path parameters' values narrowed (as test_fuzz.py does) and,
    where the server does not declare it yet, the bearer requirement the FHIR API enforces,
    so that ``ignored_auth`` has something to check
    (test_the_bearer_scheme_is_declared fails until the server declares it itself)."""
    document = orjson.loads(orjson.dumps(document))
    if not bearer_schemes(document):
        document.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = BEARER
    for method, path in operations(document):
        operation = document["paths"][path][method.lower()]
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in PATH_VALUES:
                parameter["schema"] = PATH_VALUES[parameter["name"]]
        if (method, path) not in PUBLIC and not requires_bearer(document, method, path):
            operation["security"] = [{SCHEME: []}]
    return document


# --- the tests ----------------------------------------------------------------------------------


def test_the_bearer_scheme_is_declared(running: Running) -> None:
    document = served_document(running.client)
    assert bearer_schemes(document), "components.securitySchemes declares no HTTP bearer scheme"
    for method, path in operations(document):
        assert requires_bearer(document, method, path) == ((method, path) not in PUBLIC), (
            f"{method} {path}"
        )


def _without_lifespan(app: ASGIApp) -> ASGIApp:
    """The app for Schemathesis, which would start the lifespan a second time (and end it only
    at exit): the test client's lifespan is the only one."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    return asgi


Statuses = Counter[tuple[GenerationMode, str, str, int]]  # (mode, method, path, status) → cases


def fuzz(operation: Any, headers: dict[str, str], statuses: Statuses) -> None:
    """Schemathesis cases for one operation (a schemathesis APIOperation), valid and invalid.

    The pytest plugin does not work with pytest 9 (see test_fuzz.py), so the cases are drawn
    with Schemathesis' strategies, a few per operation."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(data=st.data())
    def cases(data: st.DataObject) -> None:
        mode = data.draw(st.sampled_from(list(GenerationMode)), label="mode")
        case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
        # The schema documents only "200 Successful Response", so status_code_conformance
        # would flag every FHIR error: server errors and ignored auth are checked.
        response = case.call_and_validate(
            headers=headers, checks=[not_a_server_error, ignored_auth]
        )
        statuses[(mode, operation.method.upper(), operation.path, response.status_code)] += 1

    cases()


@pytest.mark.parametrize("who", ["system", "patient"])
def test_openapi_operations_with_authentication(running: Running, who: str) -> None:
    """Every documented operation, valid and invalid cases, with a valid token of ``who``:
    never a 5xx, never a 2xx without a (valid) token."""
    system = system_token(running)
    seed(running, system)
    token = system if who == "system" else patient_token(running)
    document = fuzzable(served_document(running.client))
    schema = schemathesis.openapi.from_dict(document)
    schema.app = _without_lifespan(running.app)
    headers = {"Authorization": f"Bearer {token}"}
    statuses: Statuses = Counter()

    for method, path in operations(document):
        fuzz(schema[path][method], headers, statuses)

    # Not vacuous: the token reached resources, so ignored_auth repeated those requests without
    # it. Negative cases may leave the token out on purpose (a removed required header): 401.
    reached = {
        (m, p) for (_, m, p, status) in statuses if 200 <= status < 300 and (m, p) not in PUBLIC
    }
    assert len(reached) >= (8 if who == "system" else 2), statuses
    refused = [
        (mode, m, p, status)
        for (mode, m, p, status) in statuses
        if mode is GenerationMode.POSITIVE and status == 401 and (m, p) not in PUBLIC
    ]
    assert not refused, refused
    assert running.client.get("/readyz").status_code == 200
