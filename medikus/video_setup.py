"""Composition of the video signalling: the hub on its bus and who may join which room.

A room is an Appointment (https://hl7.org/fhir/R4/appointment.html); its participants decide:
the doctor whose Practitioner takes part hosts, the patient (own account or join link for that
Appointment) is a guest, a backend client (the station) joins as station. notes/design_video.md.
Each call is recorded as an Encounter (class VR, https://hl7.org/fhir/R4/encounter.html): created
in progress when it starts, finished with its period and length when it ends; the Appointment is
fulfilled when the host ends a consultation that had a call. That Encounter is the only record of
who took part, when and how long (video/calls.py: the video part stores no other metadata).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import orjson

from compliance.auth import AuthServices
from compliance.identity import JOIN_CLIENT_ID, AuthenticationFailed
from compliance.principal import Principal, Role, system_principal
from fhir_server.core import RecordCore
from fhir_server.request import JSON_PATCH, FhirRequest
from medikus.config import Config
from video.bus import Bus, MemoryBus
from video.calls import Call, CallRecorder
from video.hub import Hub
from video.redis_bus import RedisBus
from video.rooms import Role as RoomRole
from video.turn import IceServers, TurnCredentials, static_ice_servers

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Participants = tuple[frozenset[str], frozenset[str]]  # (Practitioner ids, Patient ids)
AppointmentParticipants = Callable[[str], Participants | None]


VIDEO_CALL: Final = "https://medikus.example/fhir/sid/video-call"  # Encounter identifier system
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
UCUM: Final = "http://unitsofmeasure.org"
VIDEO_SERVICE: Final = {"text": "Videosprechstunde / video consultation"}

_log = logging.getLogger(__name__)


def build_hub(config: Config, recorder: CallRecorder | None = None) -> Hub:
    """One hub per process; with ``redis_url`` the rooms are shared by all processes."""
    bus: Bus = RedisBus(config.redis_url) if config.redis_url else MemoryBus()
    return Hub(bus, recorder=recorder, ice_servers=ice_servers(config))


def ice_servers(config: Config) -> IceServers:
    """STUN as configured; TURN with per-participant credentials valid ``turn_ttl_s``."""
    stun, turn = config.ice_servers()
    if turn:
        secret = config.turn_secret.encode()
        return TurnCredentials(turn, secret, config.turn_ttl_s, stun)
    return static_ice_servers([{"urls": list(stun)}] if stun else [])


class EncounterRecorder:
    """Records calls in the record core, in process, as the system. Idempotent: the Encounter is
    found by its identifier ``<room>/<call number>``, so a retry writes no second one, and a
    finish that overtakes its start still leaves one finished Encounter."""

    def __init__(self, core: RecordCore) -> None:
        self._core = core

    def started(self, call: Call) -> None:
        encounter = self._encounter(call)
        if encounter is not None:
            criteria = f"identifier={VIDEO_CALL}|{_call_id(call)}"
            self._write("POST", "Encounter", encounter, headers={"if-none-exist": criteria})

    def finished(self, call: Call) -> None:
        encounter = self._encounter(call)
        if encounter is not None:
            query = [("identifier", f"{VIDEO_CALL}|{_call_id(call)}")]
            self._write("PUT", "Encounter", encounter, query=query)

    def closed(self, room: str, calls: int, at: datetime) -> None:
        if calls == 0:  # nobody was admitted: no consultation took place
            return
        patch = [{"op": "replace", "path": "/status", "value": "fulfilled"}]
        self._write("PATCH", f"Appointment/{room}", patch, headers={"content-type": JSON_PATCH})

    def _encounter(self, call: Call) -> dict[str, Any] | None:
        appointment = _read_appointment(self._core, call.room)
        if appointment is None:
            _log.warning("video call of an unknown appointment, not recorded")
            return None
        actors = [
            str(p.get("actor", {}).get("reference", "")) for p in appointment.get("participant", [])
        ]
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "identifier": [{"system": VIDEO_CALL, "value": _call_id(call)}],
            "status": "in-progress" if call.ended is None else "finished",
            "class": {"system": ACT_CODE, "code": "VR", "display": "virtual"},
            "serviceType": (appointment.get("serviceType") or [VIDEO_SERVICE])[0],
            "participant": [
                *(_performer(a) for a in actors if a.startswith("Practitioner/")),
                *(_attendee(p.name, p.role.value) for p in call.participants),
            ],
            "appointment": [{"reference": f"Appointment/{call.room}"}],
            "period": {"start": call.started.isoformat()},
        }
        patient = next((a for a in actors if a.startswith("Patient/")), None)
        if patient is not None:
            encounter["subject"] = {"reference": patient}
        if call.ended is not None:
            encounter["period"]["end"] = call.ended.isoformat()
            encounter["length"] = {
                "value": call.minutes,
                "unit": "min",
                "system": UCUM,
                "code": "min",
            }
        return encounter

    def _write(
        self,
        method: str,
        path: str,
        body: object,
        *,
        headers: dict[str, str] | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> None:
        request = FhirRequest(
            method,
            path,
            query=query or [],
            headers={"content-type": "application/fhir+json", **(headers or {})},
            body=orjson.dumps(body),
            principal=system_principal(),
        )
        response = self._core.handle(request)
        if response.status >= 300:
            _log.error("video call record refused: %s %s %s", method, path, response.status)


def _call_id(call: Call) -> str:
    return f"{call.room}/{call.number}"


def _performer(reference: str) -> dict[str, Any]:
    return {
        "type": [{"coding": [{"system": PARTICIPATION, "code": "PPRF"}]}],
        "individual": {"reference": reference},
    }


def _attendee(name: str, role: str) -> dict[str, Any]:
    """Someone in the call by name (a join link has no resource behind it)."""
    return {
        "type": [{"coding": [{"system": PARTICIPATION, "code": "PART"}], "text": role}],
        "individual": {"display": name},
    }


def _read_appointment(core: RecordCore, room: str) -> dict[str, Any] | None:
    if not _FHIR_ID.fullmatch(room):
        return None
    request = FhirRequest("GET", f"Appointment/{room}", principal=system_principal())
    response = core.handle(request)
    if response.status != 200:
        return None
    resource: dict[str, Any] = response.resource or orjson.loads(response.body)
    return resource


def authenticator(auth: AuthServices) -> Callable[[str], Principal | None]:
    """The hello's token checked like a FHIR API bearer token."""

    def authenticate(token: str) -> Principal | None:
        try:
            return auth.authenticate(f"Bearer {token}", None)
        except AuthenticationFailed:
            return None

    return authenticate


def appointment_participants(core: RecordCore) -> AppointmentParticipants:
    """Reads the Appointment in process, as the system itself."""

    def participants(room: str) -> Participants | None:
        resource = _read_appointment(core, room)
        if resource is None:
            return None
        practitioners, patients = set(), set()
        for participant in resource.get("participant", []):
            kind, _, id_ = str(participant.get("actor", {}).get("reference", "")).partition("/")
            if kind == "Practitioner":
                practitioners.add(id_)
            elif kind == "Patient":
                patients.add(id_)
        return frozenset(practitioners), frozenset(patients)

    return participants


def access(participants: AppointmentParticipants) -> Callable[[Principal, str], RoomRole | None]:
    """Who may join a room, in which role."""

    def allowed(principal: Principal, room: str) -> RoomRole | None:
        found = participants(room)
        if found is None:
            return None
        practitioners, patients = found
        if principal.client_id == JOIN_CLIENT_ID:
            return RoomRole.GUEST if _join_grants(principal, room) else None
        if principal.has(Role.DOCTOR):
            practitioner = (principal.fhir_user or "").removeprefix("Practitioner/")
            return RoomRole.HOST if practitioner in practitioners else None
        if principal.has(Role.PATIENT):
            return RoomRole.GUEST if principal.patient in patients else None
        if principal.is_system:
            return RoomRole.STATION
        return None

    return allowed


def _join_grants(principal: Principal, room: str) -> bool:
    """A join link's token reads exactly this Appointment."""
    return any(
        scope.resource_type == "Appointment"
        and "r" in {i.value for i in scope.interactions}
        and ("_id", room) in scope.criteria
        for scope in principal.scopes.resource
    )
