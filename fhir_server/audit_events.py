"""AuditEvents of the record core's interactions, per IHE BALP (compliance/balp.py builds them).

https://profiles.ihe.net/ITI/BALP/ — which pattern each interaction (https://hl7.org/fhir/R4/
http.html) gets: read/vread → Read; search, history and operations → Query with the raw query
(base64: the URL with its query string, or the form body of ``POST _search``; results are never
recorded); create/update/patch/delete → Create/Update/Delete naming the version written. Each is
the Patient variant, once per patient touched (audit_patients.py; of an AuditEvent in an answer
only its data subject, never its agent). The requester comes from the
request's Principal (OAuth ``sub``/``iss``, ``client_id``, ``jti``, roles, organisation, the TCP
peer); in-process callers without one are the system. ``entity[transaction]`` is the
X-Request-Id. A failed request carries outcome 4 (the request was wrong: 4xx), 8 (refused: 401,
403, or an access refusal the access layer noted) or 12 (the server failed: 5xx) and the
OperationOutcome it was answered with; a noted refusal adds an AuthZ decision event per patient.
Break-the-glass (the ``$break-glass`` operation, an emergency grant the access layer noted, an
answer holding data of a patient the caller reaches only through their emergency grant, or a
token for emergency access) adds purpose BTG with the reason, the security label BTG
(``AuditEvent?_security=http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG``) and an AuthZ
decision (permit) per patient. Changes are recorded as compact facts in the writing transaction
(:meth:`EventBuilder.change_facts`); the chainer builds their events (:meth:`from_changes`).
Security events of identity and authorisation (logins, tokens, …) become DICOM/ATNA events
(:meth:`EventBuilder.security`, balp.security).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import orjson

from compliance import balp
from compliance.balp import Client, Coding, Failure, Interaction, RequestContext, Server, User
from compliance.principal import Principal, Role, system_principal
from compliance.scopes import parse_scopes
from fhir_server._time import from_micros
from fhir_server.audit_patients import PatientLinks
from fhir_server.audit_scope import EmergencyGrants, Refusal
from fhir_server.audit_targets import BUNDLES, CHANGES, Target, raw_query
from fhir_server.request import FhirRequest, FhirResponse
from fhir_server.store import NewVersion, StoredVersion

__all__ = [
    "CHUNK",
    "ROLE_SYSTEM",
    "EventBuilder",
    "Refusal",
    "principal_from_json",
    "principal_json",
]

JSONObject = dict[str, Any]
Fetch = Callable[[Sequence[tuple[str, str]]], list[StoredVersion]]
ROLE_SYSTEM: Final = "https://medi-kus.de/fhir/CodeSystem/role"
DEFAULT_SERVER: Final = "urn:medikus:record-core"
_SYSTEM: Final = system_principal()
_NO_SCOPES: Final = parse_scopes("")
CHUNK: Final = 250  # changes per pending row (a 20,000-entry bundle: 80 rows)


def outcome_code(status: int, refused: bool) -> Literal["0", "4", "8", "12"]:
    """BALP/DICOM outcome: 0 success, 4 minor (a wrong request), 8 serious (refused),
    12 major (the server failed)."""
    if status >= 500:
        return "12"
    if refused or status in (401, 403):
        return "8"
    return "4" if status >= 400 else "0"


def _failure_code(status: int, refused: bool) -> Literal["4", "8", "12"]:
    code = outcome_code(status, refused)
    return "4" if code == "0" else code


class EventBuilder:
    """Builds the BALP AuditEvents of requests and of written versions."""

    def __init__(
        self, links: PatientLinks, server_id: str = DEFAULT_SERVER, fetch: Fetch | None = None
    ) -> None:
        self.links = links
        self._server_id = server_id
        # The stored resources, for answers that do not show whose they are (subsetted, 304).
        self._fetch = fetch

    # -- the context of a request --------------------------------------------------------

    def context(
        self,
        principal: Principal | None,
        recorded: int,
        *,
        base: str | None = None,
        request_id: str | None = None,
        emergency: str | None = None,
    ) -> RequestContext:
        """``emergency``: the stated reason of a break-the-glass access (else the token's)."""
        who = principal or _SYSTEM
        base = base or self._server_id
        user = None
        if who.is_user:
            user = User(
                who.subject,
                issuer=who.issuer,
                reference=who.fhir_user,
                name=who.name,
                roles=tuple(Coding(ROLE_SYSTEM, r.value) for r in sorted(who.roles)),
                organization=f"Organization/{who.organization}" if who.organization else None,
            )
        return RequestContext(
            server=Server(base, base),
            client=Client(who.client_id, who.address),
            recorded=from_micros(recorded),
            user=user,
            request_id=request_id,
            token_id=who.token_id,
            break_the_glass=emergency or who.break_glass or None,
        )

    def security(self, kind: str, details: Mapping[str, str], recorded: int) -> JSONObject:
        """The AuditEvent of a security event of identity or authorisation (login, logout,
        token, account or client change: compliance/auth_events.py), this server observing."""
        server = Server(self._server_id, self._server_id)
        return balp.security(kind, details, server=server, recorded=from_micros(recorded))

    def request_context(
        self,
        principal: Principal | None,
        request: FhirRequest | None,
        recorded: int,
        emergency: str | None = None,
    ) -> RequestContext:
        if request is None:
            return self.context(principal, recorded, emergency=emergency)
        request_id = request.header("x-request-id")
        return self.context(
            principal, recorded, base=request.base, request_id=request_id, emergency=emergency
        )

    # -- changes: facts in the writing transaction, events in the chainer ---------------

    def change_facts(
        self,
        written: Iterable[tuple[NewVersion, StoredVersion | None]],
        principal: Principal | None,
        request: FhirRequest | None,
        emergency: str | None = None,
        grants: EmergencyGrants | None = None,
    ) -> list[JSONObject]:
        """What the events of a unit of work's versions need, compact (a few µs per version on
        the write path; :meth:`from_changes` builds the events), in chunks of ``CHUNK``."""
        changes = [self._change_fact(version, prior) for version, prior in written]
        if emergency is None and grants is not None:
            emergency = grants.reason(p for change in changes for p in change[5])
        head: JSONObject = {
            "who": principal_json(principal),
            "base": request.base or None if request is not None else None,
            "request_id": request.header("x-request-id") if request is not None else None,
            "emergency": emergency,
        }
        return [
            {**head, "changes": changes[start : start + CHUNK]}
            for start in range(0, len(changes), CHUNK)
        ]

    def _change_fact(self, version: NewVersion, prior: StoredVersion | None) -> list[Any]:
        rtype, id = version.type, version.id
        patients = self.links.of_rows(rtype, id, version.index) if not version.deleted else []
        if prior is not None and prior.content is not None:  # whose it was: update, delete
            patients = [*patients, *self.links.of(orjson.loads(prior.content))]
        if version.deleted:
            kind = "delete"
        elif prior is None or prior.deleted:
            kind = "create"
        else:
            kind = "patch" if version.method == "PATCH" else "update"
        return [rtype, id, version.version, version.last_updated, kind, patients]

    def from_changes(self, facts: JSONObject) -> list[JSONObject]:
        """The BALP events of :meth:`change_facts` output (``ValueError`` if malformed)."""
        try:
            principal = principal_from_json(facts["who"])
            base, request_id, emergency = facts["base"], facts["request_id"], facts["emergency"]
            events: list[JSONObject] = []
            contexts: dict[int, RequestContext] = {}
            for rtype, id, version, recorded, kind, patients in facts["changes"]:
                ctx = contexts.get(recorded)
                if ctx is None:
                    ctx = contexts[recorded] = self.context(
                        principal, recorded, base=base, request_id=request_id, emergency=emergency
                    )
                ref = f"{rtype}/{id}/_history/{version}"
                events.extend(balp.per_patient(_change_builder(ctx, kind, ref), patients))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed change facts: {exc}") from exc
        return events + _emergency_access(events, contexts.values())

    # -- requests, built off the request path ----------------------------------------------

    def request(
        self,
        target: Target,
        request: FhirRequest,
        response: FhirResponse,
        principal: Principal | None,
        recorded: int,
        refusal: Refusal | None = None,
        emergency: str | None = None,
        grants: EmergencyGrants | None = None,
    ) -> list[JSONObject]:
        """The events of one answered request (a successful change is recorded with its
        transaction instead: see ``changes``). ``grants``: the caller's emergency-only patients;
        an answer holding data of one of them is an emergency access."""
        failure = _failure(response, refusal)
        if failure is None and target.interaction is Interaction.OPERATION:
            emergency = emergency or _break_glass_reason(request)
        patients = [target.patient] if target.patient else []
        if refusal is not None:
            patients.extend(refusal.patients)
        if failure is None:
            patients.extend(self._result_patients(target, response))
            if emergency is None and grants is not None:
                emergency = grants.reason(patients)
        ctx = self.request_context(principal, request, recorded, emergency)
        events = balp.per_patient(self._builder(ctx, target, request, response, failure), patients)
        if refusal is not None:
            for patient in dict.fromkeys(refusal.patients):
                events.append(
                    balp.authz_decision(ctx, patient=patient, permit=False, reason=refusal.reason)
                )
        elif failure is None:
            events.extend(_emergency_access(events, (ctx,)))
        return events

    def _builder(
        self,
        ctx: RequestContext,
        target: Target,
        request: FhirRequest,
        response: FhirResponse,
        failure: Failure | None,
    ) -> Callable[[str | None], JSONObject]:
        interaction = target.interaction
        if interaction in (Interaction.READ, Interaction.VREAD):
            ref = f"{target.rtype}/{target.id}"
            if target.version is not None:
                ref += f"/_history/{target.version}"
            vread = interaction is Interaction.VREAD
            return lambda p: balp.read(ctx, ref, vread=vread, patient=p, failure=failure)
        if interaction in CHANGES:
            return self._change_builder(ctx, target, response, failure)
        if interaction in BUNDLES:
            kind = _bundle_kind(request)
            return lambda p: _bundle_event(ctx, kind, failure, p)
        raw = raw_query(request)
        return lambda p: balp.query(ctx, raw, interaction=interaction, patient=p, failure=failure)

    def _change_builder(
        self, ctx: RequestContext, target: Target, response: FhirResponse, failure: Failure | None
    ) -> Callable[[str | None], JSONObject]:
        # A failed change, or one that wrote nothing (a conditional create that found a match,
        # a delete of nothing): no version names the target, the URL or Location does.
        rtype = target.rtype or "Resource"
        ref = _location(response) or (f"{rtype}/{target.id}" if target.id else None)
        shown = ref or f"{rtype}/-"
        interaction = target.interaction

        def build(patient: str | None) -> JSONObject:
            if interaction is Interaction.CREATE:
                event = balp.create(ctx, shown, patient=patient, failure=failure)
            elif interaction is Interaction.DELETE:
                event = balp.delete(ctx, shown, patient=patient, failure=failure)
            else:
                patch = interaction is Interaction.PATCH
                event = balp.update(ctx, shown, patch=patch, patient=patient, failure=failure)
            if ref is None:
                _untargeted(event, rtype)
            return event

        return build

    def _result_patients(self, target: Target, response: FhirResponse) -> list[str]:
        """The patients whose data the answer holds (never the data itself)."""
        if target.interaction in BUNDLES:
            return []
        single = target.interaction in (Interaction.READ, Interaction.VREAD)
        if not response.body:  # 304 Not Modified: the client holds the resource already
            return self._stored_patients([(target.rtype, target.id)] if single else [])
        try:
            body = (
                response.resource if response.resource is not None else orjson.loads(response.body)
            )
        except orjson.JSONDecodeError:
            return []
        if not isinstance(body, dict):
            return []
        if single or body.get("resourceType") != "Bundle":
            resources = [body]
        else:
            resources = [
                e["resource"]
                for e in body.get("entry") or ()
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            ]
        # _elements/_summary may have cut the elements that name the patient: ask the store.
        whole = [r for r in resources if not _subsetted(r)]
        keys = [(r.get("resourceType"), r.get("id")) for r in resources if _subsetted(r)]
        return [*self._patients_of(whole), *self._stored_patients(keys)]

    def _stored_patients(self, keys: Iterable[tuple[Any, Any]]) -> list[str]:
        wanted = [(t, i) for t, i in keys if isinstance(t, str) and isinstance(i, str)]
        if not wanted or self._fetch is None:
            return []
        stored = self._fetch(wanted)
        return self._patients_of(orjson.loads(v.content) for v in stored if v.content)

    def _patients_of(self, resources: Iterable[JSONObject]) -> list[str]:
        """The patients of a result. An AuditEvent's is its data subject (entity role 1) only:
        the agent of a patient's attempt on someone else's record is not whose data it is
        (else reading B's trail would be recorded as touching A's data, and show in A's)."""
        found: list[str] = []
        for resource in resources:
            if resource.get("resourceType") == "AuditEvent":
                found.extend(data_subjects(resource))
            else:
                found.extend(self.links.of(resource))
        return list(dict.fromkeys(found))


def _change_builder(ctx: RequestContext, kind: str, ref: str) -> Callable[[str | None], JSONObject]:
    if kind == "create":
        return lambda p: balp.create(ctx, ref, patient=p)
    if kind == "delete":
        return lambda p: balp.delete(ctx, ref, patient=p)
    if kind in ("update", "patch"):
        patch = kind == "patch"
        return lambda p: balp.update(ctx, ref, patch=patch, patient=p)
    raise ValueError(f"unknown change {kind!r}")


def principal_json(principal: Principal | None) -> JSONObject | None:
    """What the audit needs of a principal, as JSON (None: the system)."""
    if principal is None:
        return None
    return {
        "subject": principal.subject,
        "client_id": principal.client_id,
        "roles": sorted(principal.roles),
        "patient": principal.patient,
        "fhir_user": principal.fhir_user,
        "organization": principal.organization,
        "issuer": principal.issuer,
        "token_id": principal.token_id,
        "session_id": principal.session_id,
        "address": principal.address,
        "name": principal.name,
        "break_glass": principal.break_glass,
    }


def principal_from_json(data: Any) -> Principal | None:
    if data is None:
        return None
    fields = dict(data)
    roles = frozenset(Role(r) for r in fields.pop("roles"))
    return Principal(scopes=_NO_SCOPES, roles=roles, **fields)


def _emergency_access(
    events: list[JSONObject], contexts: Iterable[RequestContext]
) -> list[JSONObject]:
    """Break-the-glass: a BALP AuthZ decision (permit, purpose BTG with the stated reason) per
    patient reached, and every event of the access labelled BTG in ``meta.security``, so the
    privacy officer finds them: ``AuditEvent?_security=<v3-ActReason>|BTG`` (R4 AuditEvent has
    no purpose-of-use search parameter)."""
    ctx = next(iter(contexts), None)
    if ctx is None or ctx.break_the_glass is None:
        return []
    reached = dict.fromkeys(p for event in events for p in _patient_ids(event))
    decisions = [balp.authz_decision(ctx, patient=p, permit=True) for p in reached]
    for event in (*events, *decisions):
        event["meta"] = {"security": [balp.BREAK_THE_GLASS.to_json()]}
    return decisions


def _break_glass_reason(request: FhirRequest) -> str | None:
    """The reason stated to ``Patient/[id]/$break-glass`` (Parameters ``reason``)."""
    if not request.path.rstrip("/").endswith("/$break-glass"):
        return None
    body: Any = request.parsed
    if body is None and request.body:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return None
    parameters = body.get("parameter") if isinstance(body, dict) else None
    for parameter in parameters if isinstance(parameters, list) else ():
        if isinstance(parameter, dict) and parameter.get("name") == "reason":
            reason = parameter.get("valueString")
            if isinstance(reason, str) and reason.strip():
                return reason.strip()
    return None


def _patient_ids(event: JSONObject) -> list[str]:
    return [
        e["what"]["reference"].removeprefix("Patient/")
        for e in event["entity"]
        if e.get("role", {}).get("code") == "1"
    ]


def data_subjects(event: JSONObject) -> list[str]:
    """The ids of the patients an AuditEvent is about (BALP: ``entity`` with role 1 "Patient"),
    tolerant of events this server did not build."""
    found = []
    for entity in event.get("entity") or ():
        if not isinstance(entity, dict):
            continue
        role, what = entity.get("role"), entity.get("what")
        if not (isinstance(role, dict) and role.get("code") == "1" and isinstance(what, dict)):
            continue
        reference = what.get("reference")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            found.append(reference.removeprefix("Patient/").partition("/")[0])
    return found


def _subsetted(resource: dict[str, Any]) -> bool:
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return isinstance(tags, list) and any(
        isinstance(t, dict) and t.get("code") == "SUBSETTED" for t in tags
    )


def _failure(response: FhirResponse, refusal: Refusal | None) -> Failure | None:
    if response.status < 400 and refusal is None:
        return None
    outcome: Any = None
    if response.body:
        try:
            outcome = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            outcome = None
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        outcome = _generic_outcome(response.status)
    if refusal is not None:
        outcome = {**outcome, "issue": [*outcome.get("issue", ()), _refusal_issue(refusal)]}
    return Failure(_failure_code(response.status, refusal is not None), outcome)


def _generic_outcome(status: int) -> JSONObject:
    code = "exception" if status >= 500 else "processing"
    text = f"HTTP {status}"
    return {"resourceType": "OperationOutcome", "issue": [_issue(code, text)]}


def _refusal_issue(refusal: Refusal) -> JSONObject:
    return _issue("forbidden", f"access refused: {refusal.reason}")


def _issue(code: str, text: str) -> JSONObject:
    return {"severity": "error", "code": code, "diagnostics": text}


def internal_error() -> FhirResponse:
    """What the HTTP layer answers an unexpected exception with (for the failure event)."""
    outcome = {"resourceType": "OperationOutcome", "issue": [_issue("exception", "internal error")]}
    return FhirResponse.json(500, outcome)


def _bundle_kind(request: FhirRequest) -> Interaction:
    body: Any = request.parsed
    if body is None and request.body:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
    kind = body.get("type") if isinstance(body, dict) else None
    return Interaction.BATCH if kind == "batch" else Interaction.TRANSACTION


def _bundle_event(
    ctx: RequestContext, kind: Interaction, failure: Failure | None, patient: str | None
) -> JSONObject:
    """A batch/transaction as a whole (BALP has no pattern for it; recorded only when it failed
    as a whole: its entries are recorded one by one). Built as a Query-like execute event
    without the query entity: the bundle holds the resources themselves, not a query."""
    event = balp.query(
        ctx, b"", interaction=Interaction.OPERATION, patient=patient, failure=failure
    )
    event["subtype"] = [kind.coding().to_json()]
    event["entity"] = [e for e in event["entity"] if e.get("role", {}).get("code") != "24"]
    return event


def _untargeted(event: JSONObject, rtype: str) -> None:
    """No resource was written: the data entity names the type only (Reference.type)."""
    for entity in event["entity"]:
        if entity.get("role", {}).get("code") == "4":
            entity["what"] = {"type": rtype}


def _location(response: FhirResponse) -> str | None:
    location = response.headers.get("location")
    if not location:
        return None
    parts = location.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        return "/".join(parts[-4:])
    return "/".join(parts[-2:]) if len(parts) >= 2 else None
