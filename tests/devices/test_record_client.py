"""The station's FHIR client against a real ``medikus serve``: SMART backend-service tokens,
interactions, and which failures are retryable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.credentials import StationKey
from devices.errors import UploadError
from devices.record_client import STATION_SCOPES, RecordClient, Refused
from tests.conftest import ServerProcess, _pg_schema_url, free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "pilot-station"
OBSERVATION_SID = "http://medikus.example/fhir/sid/phd-observation"


def register_station(server: ServerProcess, key: StationKey, directory: Path) -> None:
    """What the operator runs once: ``medikus admin create-client … --jwks station.jwks.json``."""
    jwks = directory / "station.jwks.json"
    jwks.write_text(json.dumps(key.jwks()))
    command = [sys.executable, "-m", "medikus", "admin", "--database-url", server.database_url]
    command += ["create-client", CLIENT_ID, "--scope", STATION_SCOPES, "--jwks", str(jwks)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=server.env)
    assert done.returncode == 0, done.stderr
    assert "client registered: pilot-station (confidential" in done.stdout


@dataclass
class Station:
    """A running record core with the station registered as a backend service."""

    server: ServerProcess
    key: StationKey


@pytest.fixture(
    name="station",
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def station_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Station]:
    """One server per module and database (starting one takes seconds); tests use their own
    patients and identifiers, so they do not see each other."""
    directory = tmp_path_factory.mktemp("station")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{directory / 'record.sqlite3'}"
        else:
            schema = contextlib.contextmanager(_pg_schema_url)
            url = stack.enter_context(schema(request.getfixturevalue("pg_dsn")))
        server = ServerProcess(url).start()
        stack.callback(server.stop)
        key = StationKey.generate("station-1")
        register_station(server, key, directory)
        yield Station(server, key)


def create_patient(server: ServerProcess, family: str = "Mustermann", **extra: Any) -> str:
    patient = {"resourceType": "Patient", "name": [{"family": family, "given": ["Erika"]}]}
    response = httpx.post(
        f"{server.base}/fhir/Patient", json=patient | extra, auth=server.auth, timeout=30
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def observation(patient_id: str, value: str, **extra: Any) -> dict[str, Any]:
    """A small PHD-like body temperature Observation with its de-dup identifier."""
    return {
        "resourceType": "Observation",
        "identifier": [{"system": OBSERVATION_SID, "value": value}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "urn:iso:std:iso:11073:10101", "code": "150364"},
                {"system": "http://loinc.org", "code": "8310-5"},
            ]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-03-02T09:30:00Z",
        "valueQuantity": {
            "value": 36.8,
            "unit": "Cel",
            "system": "http://unitsofmeasure.org",
            "code": "Cel",
        },
    } | extra


def conditional_create(resource: dict[str, Any], urn: str) -> dict[str, Any]:
    identifier = resource["identifier"][0]
    return {
        "fullUrl": urn,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}",
        },
    }


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


Fault = Callable[[httpx.Request], httpx.Response | None]


class FaultTransport(httpx.AsyncBaseTransport):
    """The real network, plus injected faults: ``down`` refuses connections; queued ``faults``
    answer (or alter) the next requests; ``lost_answers`` transactions reach the record core but
    their answers are lost on the way back."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.down = False
        self.faults: list[Fault] = []
        self.lost_answers = 0
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("injected: network down", request=request)
        if self.faults:
            answer = self.faults.pop(0)(request)
            if answer is not None:
                return answer
        response = await self._inner.handle_async_request(request)
        if self.lost_answers and request.method == "POST" and request.url.path == "/fhir":
            self.lost_answers -= 1
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("injected: answer lost", request=request)
        return response

    def transactions(self) -> int:
        return sum(1 for r in self.requests if r.method == "POST" and r.url.path == "/fhir")

    async def aclose(self) -> None:
        await self._inner.aclose()

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


class StationClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def client_for(
    server: ServerProcess, key: StationKey, transport: httpx.AsyncBaseTransport, **kw: Any
) -> RecordClient:
    return RecordClient(f"{server.base}/fhir", CLIENT_ID, key, transport=transport, **kw)


@pytest.fixture(name="transport")
def transport_fixture() -> Iterator[FaultTransport]:
    yield FaultTransport()


def test_token_is_discovered_cached_renewed(station: Station, transport: FaultTransport) -> None:
    server, station_key = station.server, station.key
    patient = create_patient(server)
    clock = StationClock()

    async def scenario() -> None:
        # renew 250 s before expiry, so a small clock step (assertions stay valid) reaches it
        client = client_for(server, station_key, transport, clock=clock, renew_before_s=250)
        async with client:
            assert (await client.read("Patient", patient) or {})["id"] == patient
            assert await client.search("Patient", {"_id": patient}) != []
            assert transport.paths().count("/auth/token") == 1  # one token for both
            # SMART places the configuration under the FHIR base (found there first)
            assert transport.paths()[:2] == ["/fhir/.well-known/smart-configuration", "/auth/token"]
            clock.offset = 55  # 245 s before the 300 s token expires: renewed in advance
            await client.read("Patient", patient)
            assert transport.paths().count("/auth/token") == 2

            # the record core forgot the token (e.g. restarted with new keys): 401, renew once
            def stale_token(request: httpx.Request) -> None:
                request.headers["authorization"] = "Bearer not-a-token"

            transport.faults.append(stale_token)
            assert (await client.read("Patient", patient) or {})["id"] == patient
            assert transport.paths().count("/auth/token") == 3
            read = f"/fhir/Patient/{patient}"
            assert transport.paths()[-3:] == [read, "/auth/token", read]

    asyncio.run(scenario())


def test_interactions_and_refusals(station: Station, transport: FaultTransport) -> None:
    server, station_key = station.server, station.key
    patient = create_patient(server)

    async def scenario() -> None:
        async with client_for(server, station_key, transport) as client:
            entry = conditional_create(observation(patient, "t-1"), "urn:uuid:1")
            answer = await client.transaction(transaction(entry))
            assert answer["type"] == "transaction-response"
            assert answer["entry"][0]["response"]["status"].startswith("201")
            again = await client.transaction(transaction(entry))  # conditional: no second one
            assert again["entry"][0]["response"]["status"].startswith("200")
            found = await client.search("Observation", {"identifier": f"{OBSERVATION_SID}|t-1"})
            assert len(found) == 1 and found[0]["subject"]["reference"] == f"Patient/{patient}"
            assert await client.read("Observation", "does-not-exist") is None

            broken = observation(patient, "t-2", valueQuantity={"value": "warm"})
            bad = conditional_create(broken, "urn:uuid:2")
            with pytest.raises(Refused) as refused:
                await client.transaction(transaction(bad))
            assert 400 <= refused.value.status < 500
            assert "valueQuantity" in refused.value.diagnostics  # the OperationOutcome's words
            assert "record core refused" in str(refused.value)

            ghost = observation("no-such-patient", "t-3")
            with pytest.raises(Refused, match="no-such-patient"):
                await client.transaction(transaction(conditional_create(ghost, "urn:uuid:3")))

    asyncio.run(scenario())


def answer_with(status: int) -> Fault:
    return lambda request: httpx.Response(status, json={"oops": 1})


def test_server_trouble_is_retryable(station: Station, transport: FaultTransport) -> None:
    async def scenario() -> None:
        async with client_for(station.server, station.key, transport) as client:
            await client.search("Patient", {"_count": "1"})  # token first
            for status in (500, 502, 503, 429, 408):
                transport.faults.append(answer_with(status))
                with pytest.raises(UploadError) as error:
                    await client.search("Patient", {"_count": "1"})
                assert not isinstance(error.value, Refused)
                assert f"HTTP {status}" in str(error.value)

    asyncio.run(scenario())


def test_unreachable_or_unregistered_is_retryable_not_refused(
    station: Station, transport: FaultTransport
) -> None:
    server = station.server
    unknown = StationKey.generate("not-registered")

    async def scenario() -> None:
        async with client_for(server, unknown, transport) as client:
            with pytest.raises(UploadError, match="station token refused") as error:
                await client.search("Patient", {})
            assert not isinstance(error.value, Refused)
            assert "invalid_client" in str(error.value)
        closed = RecordClient(f"http://127.0.0.1:{free_port()}/fhir", CLIENT_ID, unknown)
        async with closed:
            with pytest.raises(UploadError, match="unreachable") as error:
                await closed.search("Patient", {})
            assert not isinstance(error.value, Refused)

    asyncio.run(scenario())
