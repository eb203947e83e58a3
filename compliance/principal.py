"""Who is asking: the authenticated caller of one request, as every access decision sees it.

Built by the identity layer from a verified access token and the account behind it (roles and
organisation are looked up server-side, not carried in the token: BSI TR-03161 O.Auth_19 keeps
tokens free of more than they need, and a role change takes effect at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from compliance.scopes import Scopes, parse_scopes


class Role(StrEnum):
    """Account roles. Staff roles are bound to one organisation (an MVZ, the pilot centre, a
    nursing service); ``patient`` accounts are bound to their Patient resource."""

    DOCTOR = "doctor"
    CARE_STAFF = "care-staff"
    COORDINATOR = "coordinator"
    ADMINISTRATOR = "administrator"
    PRIVACY_OFFICER = "privacy-officer"
    PATIENT = "patient"


STAFF_ROLES = frozenset(
    {Role.DOCTOR, Role.CARE_STAFF, Role.COORDINATOR, Role.ADMINISTRATOR, Role.PRIVACY_OFFICER}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request.

    ``subject``: the account id (users) or the client id (backend services, no user).
    ``patient``: the patient in context: a patient's own id, or the launch patient of a
    ``patient/`` scope. ``fhir_user``: ``Practitioner/…`` or ``Patient/…``.
    ``organization``: the staff member's organisation id (``Organization/<id>`` without prefix).
    ``break_glass``: the stated reason when the token was issued for emergency access.
    """

    subject: str
    client_id: str
    scopes: Scopes
    roles: frozenset[Role] = frozenset()
    patient: str | None = None
    fhir_user: str | None = None
    organization: str | None = None
    issuer: str | None = None
    token_id: str | None = None  # jti
    session_id: str | None = None
    address: str | None = None  # the TCP peer, for the audit trail
    name: str | None = None  # display name, for the audit trail
    break_glass: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_user(self) -> bool:
        return bool(self.roles)

    @property
    def is_system(self) -> bool:
        """A backend service acting on its own behalf (client credentials)."""
        return not self.roles

    def has(self, role: Role) -> bool:
        return role in self.roles


def system_principal(
    scope: str = "system/*.cruds", client_id: str = "medikus-internal"
) -> Principal:
    """The principal of in-process calls by the system itself (loaders, jobs, tests' set-up)."""
    return Principal(subject=client_id, client_id=client_id, scopes=parse_scopes(scope))


class Unauthenticated(Exception):
    """No valid credentials: the record core answers 401 with an RFC 6750 challenge.

    ``error``: the RFC 6750 error code (``invalid_token``, or empty when no token was sent)."""

    def __init__(self, description: str, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.error = error
