"""FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP 1.1, FHIR R4 edition).

Reference: https://profiles.ihe.net/ITI/BALP/ (FSH: https://github.com/IHE/ITI.BasicAudit),
compliance.md §3 "AuditEvent per IHE BALP".

Patterns built here: Create, Read (read/vread), Update (update/patch), Delete and Query (search,
history and operations such as ``$everything``), each as its Patient variant when a patient is
given; AuthZconsent (an authorisation decision, also for break-the-glass); failures carry
outcome 4/8/12, ``outcomeDesc`` and the OperationOutcome (contained, referenced by an entity).
Security events of identity and authorisation (compliance/auth_events.py: logins, logouts,
tokens, account and client changes) follow DICOM PS3.15 A.5 as IHE ATNA uses it
(:func:`security`; token issuance as BALP's IUA ITI-71 pattern).
OAuth enrichment is BALP's "Minimal" one: ``sub``/``iss`` as ``agent[user].who.identifier``,
``client_id`` as ``agent[client].who.identifier``, the ``jti`` (or at most the last 32
characters of an opaque token, :func:`opaque_token_id`) as ``agent.policy``.

One AuditEvent per patient (:func:`per_patient`); search results are never recorded, only
the raw query (base64, so even malicious input is kept exactly). Events are plain JSON dicts,
time is injected (``RequestContext.recorded``). They claim no ``meta.profile``: failures and
agents without a known network address fall outside the profiles' fixed values.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

__all__ = [
    "Client",
    "Coding",
    "Failure",
    "Interaction",
    "RequestContext",
    "SecurityKind",
    "Server",
    "User",
    "authz_decision",
    "create",
    "delete",
    "opaque_token_id",
    "per_patient",
    "query",
    "read",
    "security",
    "security_kind",
    "update",
]

JSONObject = dict[str, Any]

_DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
_BALP_CS: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/"
_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
_PATIENT_REF: Final = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}\Z", re.ASCII)


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display is not None:
            out["display"] = self.display
        return out


REST: Final = Coding(
    "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful Operation"
)
SECURITY_ALERT: Final = Coding(_DCM, "110113", "Security Alert")
# DICOM/IHE name the requester "Source" and the server "Destination" (BALP Query profile note).
CLIENT_ROLE: Final = Coding(_DCM, "110153", "Source Role ID")
SERVER_ROLE: Final = Coding(_DCM, "110152", "Destination Role ID")
APPLICATION: Final = Coding(_DCM, "110150", "Application")
INFORMATION_RECIPIENT: Final = Coding(
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", "information recipient"
)
HEALTHCARE_PROVIDER: Final = Coding(
    "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "PROV", "healthcare provider"
)
AUTHORIZATION_SERVER: Final = Coding(
    "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
    "authserver",
    "authorization server",
)
BREAK_THE_GLASS: Final = Coding(
    "http://terminology.hl7.org/CodeSystem/v3-ActReason", "BTG", "break the glass"
)
PERSON: Final = Coding(_ENTITY_TYPE, "1", "Person")
SYSTEM_OBJECT: Final = Coding(_ENTITY_TYPE, "2", "System Object")
PATIENT_ROLE: Final = Coding(_OBJECT_ROLE, "1", "Patient")
DOMAIN_RESOURCE: Final = Coding(_OBJECT_ROLE, "4", "Domain Resource")
QUERY_ROLE: Final = Coding(_OBJECT_ROLE, "24", "Query")
X_REQUEST_ID: Final = Coding(_BALP_CS + "BasicAuditEntityType", "XrequestId")
OAUTH_TOKEN: Final = Coding(_BALP_CS + "UserAgentTypes", "UserOauthAgent")
CONSENT: Final = Coding(_RESOURCE_TYPES, "Consent", "Consent")
OPERATION_OUTCOME: Final = Coding(_RESOURCE_TYPES, "OperationOutcome", "OperationOutcome")
APPLICATION_SERVER: Final = Coding(_SOURCE_TYPE, "4", "Application Server")
SECURITY_SERVER: Final = Coding(_SOURCE_TYPE, "6", "Security Server")
SECURITY_RESOURCE: Final = Coding(_OBJECT_ROLE, "13", "Security Resource")
# DICOM PS3.16 CID 400 (audit event ids) and CID 401/403 (their type codes).
USER_AUTHENTICATION: Final = Coding(_DCM, "110114", "User Authentication")
LOGIN: Final = Coding(_DCM, "110122", "Login")
LOGOUT: Final = Coding(_DCM, "110123", "Logout")
SECURITY_CONFIGURATION: Final = Coding(_DCM, "110129", "Security Configuration")
RESTRICTED_FUNCTION: Final = Coding(_DCM, "110132", "Use of Restricted Function")
USER_SECURITY_ATTRIBUTES: Final = Coding(_DCM, "110137", "User Security Attributes Changed")
GET_ACCESS_TOKEN: Final = Coding("urn:ihe:event-type-code", "ITI-71", "Get Access Token")
# The event kind as compliance/auth_events.py names it: a second subtype, so each kind is
# searchable on its own (``AuditEvent?subtype=login-failed``).
SECURITY_EVENT_KIND: Final = "https://medi-kus.de/fhir/CodeSystem/security-event"


class Interaction(StrEnum):
    """http://hl7.org/fhir/restful-interaction (R4), the AuditEvent ``subtype``."""

    READ = "read"
    VREAD = "vread"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    HISTORY = "history"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    CREATE = "create"
    SEARCH = "search"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    CAPABILITIES = "capabilities"
    TRANSACTION = "transaction"
    BATCH = "batch"
    OPERATION = "operation"

    def coding(self) -> Coding:
        return Coding("http://hl7.org/fhir/restful-interaction", self.value, self.value)


_QUERY_LIKE: Final = frozenset(
    {
        Interaction.SEARCH,
        Interaction.SEARCH_TYPE,
        Interaction.SEARCH_SYSTEM,
        Interaction.HISTORY,
        Interaction.HISTORY_INSTANCE,
        Interaction.HISTORY_TYPE,
        Interaction.HISTORY_SYSTEM,
        Interaction.OPERATION,
        Interaction.CAPABILITIES,
    }
)


@dataclass(frozen=True, slots=True)
class Client:
    """agent[client]: the OAuth client (``client_id``) and the TCP peer address."""

    client_id: str
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Server:
    """agent[server] and ``source.observer``: this FHIR server (``id``: its base URL)."""

    id: str
    address: str


@dataclass(frozen=True, slots=True)
class User:
    """agent[user]: the person (OAuth ``sub`` in ``id``, ``iss`` in ``issuer``)."""

    id: str
    issuer: str | None = None
    reference: str | None = None  # e.g. "Practitioner/123"
    name: str | None = None
    roles: tuple[Coding, ...] = ()
    organization: str | None = None  # e.g. "Organization/mvz-1" (AuthZ agent[userorg])


@dataclass(frozen=True, slots=True)
class Failure:
    """A refused or failed request: outcome 4 (minor), 8 (serious) or 12 (major)."""

    outcome: Literal["4", "8", "12"]
    operation_outcome: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked, where, when and why; shared by all events of one request."""

    server: Server
    client: Client
    recorded: datetime
    user: User | None = None
    request_id: str | None = None  # X-Request-Id
    token_id: str | None = None  # jti, or opaque_token_id(token)
    purpose_of_use: tuple[Coding, ...] = ()
    break_the_glass: str | None = None  # the stated reason; adds purposeOfUse BTG


def opaque_token_id(token: str) -> str:
    """What BALP lets us keep of an opaque token: at most its last 32 characters."""
    return token[-32:]


# --- the REST patterns ---------------------------------------------------------------------


def create(
    ctx: RequestContext,
    resource: str,
    *,
    patient: str | None = None,
    failure: Failure | None = None,
) -> JSONObject:
    """BALP Create / PatientCreate; ``resource`` is "Type/id" or "Type/id/_history/v"."""
    return _rest(ctx, Interaction.CREATE, "C", [_data(resource)], patient, failure)


def read(
    ctx: RequestContext,
    resource: str,
    *,
    vread: bool = False,
    patient: str | None = None,
    failure: Failure | None = None,
) -> JSONObject:
    """BALP Read / PatientRead (read, or vread when ``vread``)."""
    interaction = Interaction.VREAD if vread else Interaction.READ
    return _rest(ctx, interaction, "R", [_data(resource)], patient, failure)


def update(
    ctx: RequestContext,
    resource: str,
    *,
    patch: bool = False,
    patient: str | None = None,
    failure: Failure | None = None,
) -> JSONObject:
    """BALP Update / PatientUpdate (update, or patch when ``patch``)."""
    interaction = Interaction.PATCH if patch else Interaction.UPDATE
    return _rest(ctx, interaction, "U", [_data(resource)], patient, failure)


def delete(
    ctx: RequestContext,
    resource: str,
    *,
    patient: str | None = None,
    failure: Failure | None = None,
) -> JSONObject:
    """BALP Delete / PatientDelete."""
    return _rest(ctx, Interaction.DELETE, "D", [_data(resource)], patient, failure)


def query(
    ctx: RequestContext,
    raw_query: bytes | str,
    *,
    interaction: Interaction = Interaction.SEARCH_TYPE,
    description: str | None = None,
    patient: str | None = None,
    failure: Failure | None = None,
) -> JSONObject:
    """BALP Query / PatientQuery: ``raw_query`` exactly as received (URL with query string, or
    the POST body), kept base64; ``description`` may hold the cleaned search."""
    if interaction not in _QUERY_LIKE:
        raise ValueError(f"{interaction.value} is not a query-like interaction")
    raw = raw_query.encode("utf-8") if isinstance(raw_query, str) else raw_query
    entity: JSONObject = {
        "type": SYSTEM_OBJECT.to_json(),
        "role": QUERY_ROLE.to_json(),
        "query": base64.b64encode(raw).decode("ascii"),
    }
    if description is not None:
        entity["description"] = description
    return _rest(ctx, interaction, "E", [entity], patient, failure)


def per_patient(
    build: Callable[[str | None], JSONObject], patient_ids: Iterable[str]
) -> list[JSONObject]:
    """One event per distinct patient (first-seen order); one without a patient if none.

    ``build(patient_id)`` makes one event, e.g. ``lambda p: query(ctx, raw, patient=p)``.
    """
    distinct = list(dict.fromkeys(patient_ids))
    return [build(p) for p in distinct] if distinct else [build(None)]


def _rest(
    ctx: RequestContext,
    interaction: Interaction,
    action: str,
    entities: list[JSONObject],
    patient: str | None,
    failure: Failure | None,
) -> JSONObject:
    event: JSONObject = {
        "resourceType": "AuditEvent",
        "type": REST.to_json(),
        "subtype": [interaction.coding().to_json()],
        "action": action,
        "recorded": _instant(ctx.recorded),
        "outcome": "0",
        "agent": _rest_agents(ctx),
        "source": _source(ctx.server, APPLICATION_SERVER),
        "entity": _patient_entity(patient) + entities + _transaction(ctx),
    }
    _add_purpose_of_event(event, ctx)
    if failure is not None:
        _add_failure(event, failure)
    return event


# --- authorisation decisions ----------------------------------------------------------------


def authz_decision(
    ctx: RequestContext,
    *,
    patient: str,
    permit: bool,
    consents: Sequence[str] = (),
    reason: str | None = None,
) -> JSONObject:
    """BALP AuthZconsent: a permit/deny decision on access to ``patient``'s data.

    ``consents`` are the Consent ids the decision used (subtype AuthZ-Consent); without them
    the decision rests on roles only (AuthZ-Role), as for break-the-glass, whose reason comes
    from ``ctx.break_the_glass``. ``reason`` explains a deny (``outcomeDesc``).
    """
    subtype = "AuthZ-Consent" if consents else "AuthZ-Role"
    entities = _patient_entity(patient) + [
        {"type": CONSENT.to_json(), "what": {"reference": f"Consent/{_plain_id(c)}"}}
        for c in consents
    ]
    if ctx.token_id is not None:
        jti = {"identifier": {"value": f"urn:ietf:params:oauth:jti:{ctx.token_id}"}}
        entities.append({"type": OAUTH_TOKEN.to_json(), "what": jti})
    event: JSONObject = {
        "resourceType": "AuditEvent",
        "type": SECURITY_ALERT.to_json(),
        "subtype": [Coding(_BALP_CS + "AuthZsubType", subtype).to_json()],
        "action": "E",
        "recorded": _instant(ctx.recorded),
        "outcome": "0" if permit else "8",
        "agent": _authz_agents(ctx),
        "source": _source(ctx.server, SECURITY_SERVER),
        "entity": entities + _transaction(ctx),
    }
    if reason is not None:
        event["outcomeDesc"] = reason
    _add_purpose_of_event(event, ctx)
    return event


def _authz_agents(ctx: RequestContext) -> list[JSONObject]:
    client = _client_agent(ctx, APPLICATION)
    client.pop("policy", None)  # the token is an entity here
    agents = [client]
    if ctx.user is not None:
        user = _user_agent(ctx, ctx.user)
        user.pop("policy", None)
        agents.append(user)
        if ctx.user.organization is not None:
            org = {"reference": ctx.user.organization}
            agents.append(_agent(HEALTHCARE_PROVIDER, org, requestor=False))
    server = {"identifier": {"value": ctx.server.id}}
    agents.append(_agent(AUTHORIZATION_SERVER, server, requestor=False))
    return agents


# --- security events (DICOM PS3.15 A.5.3, IHE ATNA) -----------------------------------------


@dataclass(frozen=True, slots=True)
class SecurityKind:
    """How one kind of security event is recorded: DICOM event id and type code, outcome, and
    whether the user or client the details name acted (``agent.requestor``) or was acted on
    (an administrator created the account)."""

    type: Coding
    subtype: Coding
    outcome: Literal["0", "4", "8"] = "0"
    acting: bool = True


_AUTHN_FAILED = SecurityKind(USER_AUTHENTICATION, LOGIN, "4")
_ATTRIBUTES = SecurityKind(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES, acting=False)
SECURITY_KINDS: Final[Mapping[str, SecurityKind]] = {
    "login-succeeded": SecurityKind(USER_AUTHENTICATION, LOGIN),
    "login-failed": _AUTHN_FAILED,  # also when throttled (reason "throttled")
    "logout": SecurityKind(USER_AUTHENTICATION, LOGOUT),
    "join-redeemed": SecurityKind(USER_AUTHENTICATION, LOGIN),  # the link is the credential
    "join-refused": _AUTHN_FAILED,
    "token-issued": SecurityKind(USER_AUTHENTICATION, GET_ACCESS_TOKEN),
    "token-refused": SecurityKind(USER_AUTHENTICATION, GET_ACCESS_TOKEN, "4"),
    "password-changed": SecurityKind(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES),
    "password-change-failed": SecurityKind(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES, "4"),
    "token-revoked": SecurityKind(SECURITY_ALERT, USER_SECURITY_ATTRIBUTES),
    "account-created": _ATTRIBUTES,
    "account-disabled": _ATTRIBUTES,
    "account-enabled": _ATTRIBUTES,
    "join-link-issued": _ATTRIBUTES,
    "join-code-issued": _ATTRIBUTES,
    "join-grant-revoked": _ATTRIBUTES,
    "client-registered": SecurityKind(SECURITY_ALERT, SECURITY_CONFIGURATION, acting=False),
    # A used code or rotated refresh token came again: someone holds a copy (serious).
    "grant-revoked": SecurityKind(SECURITY_ALERT, RESTRICTED_FUNCTION, "8", acting=False),
}


def security_kind(kind: str) -> SecurityKind:
    """The recording of ``kind``; a kind not listed yet is a security alert (a failure when
    its name says so), so no event goes unrecorded."""
    found = SECURITY_KINDS.get(kind)
    if found is not None:
        return found
    failed = kind.endswith(("-failed", "-refused"))
    return SecurityKind(SECURITY_ALERT, Coding(SECURITY_EVENT_KIND, kind), "4" if failed else "0")


def security(
    kind: str, details: Mapping[str, str], *, server: Server, recorded: datetime
) -> JSONObject:
    """A security event of identity or authorisation as an AuditEvent.

    ``details`` as compliance/auth_events.py reports them (ids, the user name as typed, the
    client address, reason codes; never a secret). Agents: the user (``account``, or the
    token's ``subject``: an account id or ``Patient/…``), the OAuth ``client``, this server;
    the ``address`` is the network access point of the acting one. Entities: the patient of
    a join link (``subject``), the token (``jti``) and every detail as reported. A user name
    that did not authenticate is kept only as ``who.display`` (not indexed: it may be a
    mistyped password)."""
    how = security_kind(kind)
    subtypes = [how.subtype.to_json()]
    if how.subtype.system != SECURITY_EVENT_KIND:
        subtypes.append(Coding(SECURITY_EVENT_KIND, kind).to_json())
    event: JSONObject = {
        "resourceType": "AuditEvent",
        "type": how.type.to_json(),
        "subtype": subtypes,
        "action": "E",
        "recorded": _instant(recorded),
        "outcome": how.outcome,
        "agent": _security_agents(details, server, how.acting),
        "source": _source(server, SECURITY_SERVER),
        "entity": _security_entities(kind, details),
    }
    if how.outcome != "0":
        event["outcomeDesc"] = details.get("reason") or details.get("error") or kind
    return event


def _security_agents(details: Mapping[str, str], server: Server, acting: bool) -> list[JSONObject]:
    agents: list[JSONObject] = []
    client_id = details.get("client")
    subject = details.get("subject")
    account = details.get("account") or (subject if subject not in (None, client_id) else None)
    username = details.get("username")
    if account is not None:
        who: JSONObject = {"identifier": {"value": account}}
        if _PATIENT_REF.match(account):
            who = {"reference": account}
        user = _agent(INFORMATION_RECIPIENT, who, requestor=acting)
        if username is not None:
            user["name"] = username
        agents.append(user)
    elif username is not None:  # not authenticated: what was typed, unindexed
        agents.append(_agent(INFORMATION_RECIPIENT, {"display": username}, requestor=acting))
    if client_id is not None:
        who = {"identifier": {"value": client_id}}
        agents.append(_agent(APPLICATION, who, requestor=acting and not agents))
    address = details.get("address")
    if address is not None and address != "unknown":
        if agents:
            agents[0]["network"] = _network(address)
        else:  # only the peer is known (a logout by session, a refused join link)
            peer = {"type": {"coding": [CLIENT_ROLE.to_json()]}, "requestor": acting}
            agents.append(peer | {"network": _network(address)})
    server_who = {"identifier": {"value": server.id}}
    agents.append(_agent(AUTHORIZATION_SERVER, server_who, requestor=False))
    return agents


def _security_entities(kind: str, details: Mapping[str, str]) -> list[JSONObject]:
    entities: list[JSONObject] = []
    subject = details.get("subject") or ""
    if _PATIENT_REF.match(subject):
        entities.extend(_patient_entity(subject.removeprefix("Patient/")))
    jti = details.get("jti")
    if jti is not None:
        what = {"identifier": {"value": f"urn:ietf:params:oauth:jti:{jti}"}}
        entities.append({"type": OAUTH_TOKEN.to_json(), "what": what})
    reported: JSONObject = {
        "type": SYSTEM_OBJECT.to_json(),
        "role": SECURITY_RESOURCE.to_json(),
        "description": kind,
    }
    if details:
        reported["detail"] = [{"type": k, "valueString": v} for k, v in details.items()]
    entities.append(reported)
    return entities


# --- parts -------------------------------------------------------------------------------


def _agent(type_: Coding, who: JSONObject, *, requestor: bool) -> JSONObject:
    return {"type": {"coding": [type_.to_json()]}, "who": who, "requestor": requestor}


def _rest_agents(ctx: RequestContext) -> list[JSONObject]:
    agents = [_client_agent(ctx, CLIENT_ROLE)]
    server = _agent(SERVER_ROLE, {"identifier": {"value": ctx.server.id}}, requestor=False)
    server["network"] = _network(ctx.server.address)
    agents.append(server)
    if ctx.user is not None:
        agents.append(_user_agent(ctx, ctx.user))
    return agents


def _client_agent(ctx: RequestContext, type_: Coding) -> JSONObject:
    who = {"identifier": {"value": ctx.client.client_id}}
    # Without a user (client credentials) the client is the requestor and holds the token.
    agent = _agent(type_, who, requestor=ctx.user is None)
    if ctx.client.address is not None:
        agent["network"] = _network(ctx.client.address)
    if ctx.user is None and ctx.token_id is not None:
        agent["policy"] = [ctx.token_id]
    return agent


def _user_agent(ctx: RequestContext, user: User) -> JSONObject:
    identifier = {"value": user.id} | ({"system": user.issuer} if user.issuer else {})
    who: JSONObject = {"identifier": identifier}
    if user.reference is not None:
        who["reference"] = user.reference
    agent = _agent(INFORMATION_RECIPIENT, who, requestor=True)
    if user.name is not None:
        agent["name"] = user.name
    if user.roles:
        agent["role"] = [{"coding": [role.to_json()]} for role in user.roles]
    if ctx.token_id is not None:
        agent["policy"] = [ctx.token_id]
    purposes = _purposes(ctx)
    if purposes:
        agent["purposeOfUse"] = purposes
    return agent


def _purposes(ctx: RequestContext) -> list[JSONObject]:
    purposes: list[JSONObject] = [{"coding": [p.to_json()]} for p in ctx.purpose_of_use]
    if ctx.break_the_glass is not None:
        if not ctx.break_the_glass.strip():
            raise ValueError("break-the-glass needs a stated reason")
        purposes.append({"coding": [BREAK_THE_GLASS.to_json()], "text": ctx.break_the_glass})
    return purposes


def _add_purpose_of_event(event: JSONObject, ctx: RequestContext) -> None:
    purposes = _purposes(ctx)
    if purposes:
        event["purposeOfEvent"] = purposes


def _network(address: str) -> dict[str, str]:
    """R4 network types: 1 machine name, 2 IP address, 5 URI."""
    if "://" in address:
        return {"address": address, "type": "5"}
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"address": address, "type": "1"}
    return {"address": address, "type": "2"}


def _source(server: Server, type_: Coding) -> JSONObject:
    return {"observer": {"identifier": {"value": server.id}}, "type": [type_.to_json()]}


def _patient_entity(patient: str | None) -> list[JSONObject]:
    if patient is None:
        return []
    what = {"reference": f"Patient/{_plain_id(patient)}"}
    return [{"what": what, "type": PERSON.to_json(), "role": PATIENT_ROLE.to_json()}]


def _data(resource: str) -> JSONObject:
    type_, _, rest = resource.partition("/")
    if not type_ or not rest:
        raise ValueError(f"resource must be 'Type/id[/_history/v]', got {resource!r}")
    return {
        "what": {"reference": resource},
        "type": SYSTEM_OBJECT.to_json(),
        "role": DOMAIN_RESOURCE.to_json(),
    }


def _transaction(ctx: RequestContext) -> list[JSONObject]:
    if ctx.request_id is None:
        return []
    what = {"identifier": {"value": ctx.request_id}}
    return [{"what": what, "type": X_REQUEST_ID.to_json()}]


def _add_failure(event: JSONObject, failure: Failure) -> None:
    outcome = dict(failure.operation_outcome)
    if outcome.get("resourceType") != "OperationOutcome":
        raise ValueError("failure.operation_outcome must be an OperationOutcome")
    outcome["id"] = "outcome"
    event["outcome"] = failure.outcome
    event["outcomeDesc"] = _outcome_text(outcome)
    # Contained resources must be referenced from the container (R4 dom-3): an entity does it.
    event["contained"] = [outcome]
    what = {"reference": "#outcome"}
    event["entity"].append({"what": what, "type": OPERATION_OUTCOME.to_json()})


def _outcome_text(outcome: Mapping[str, Any]) -> str:
    texts = []
    for issue in outcome.get("issue", ()):
        text = issue.get("details", {}).get("text") or issue.get("diagnostics") or issue.get("code")
        if text:
            texts.append(str(text))
    return "; ".join(texts) or "failed"


def _plain_id(value: str) -> str:
    if "/" in value:
        raise ValueError(f"expected a plain id, got {value!r}")
    return value


def _instant(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("recorded must be timezone-aware")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
