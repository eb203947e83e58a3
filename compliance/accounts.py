"""Accounts, login and sessions (BSI TR-03161-3 O.Auth_4/9/10/11/12/16, OWASP ASVS 5.0 V6/V7).

- Passwords: argon2id with the minimal policy of passwords.py, rehashed on login when the cost
  parameters were raised.
- Second factor: TOTP (totp.py, replay-protected) is mandatory for every staff role (O.Auth_4);
  patients may enrol. The secret is stored sealed with envelope.py under the keyring's
  ``envelope:auth-totp-secret`` key, bound to its account row.
- Throttling per account name and per client address (throttle.py); every failure is reported
  to the event sink with a reason code, while the user sees one message for all reasons (no
  account enumeration).
- Sessions: an idle time-out (default 15 min) and an absolute one (default 12 h) (O.Auth_10/11).
  Logout ends a session and its refresh tokens; a password change needs the current password and
  TOTP code and ends every session of the account (O.Auth_12/16), as does disabling it. Access
  tokens carry the session id (``sid``), so the resource server refuses them at once
  (identity.Authenticator).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from compliance._sqlstore import AuthStore, Duplicate
from compliance.auth_events import Events
from compliance.auth_records import AccountRecord, SessionRecord
from compliance.envelope import Aad, Envelope
from compliance.keyring import Keyring
from compliance.passwords import PasswordHasher, Verification, Violation, check_password
from compliance.principal import STAFF_ROLES, Role
from compliance.throttle import LoginThrottle
from compliance.totp import TotpVerifier, new_secret, provisioning_uri

__all__ = [
    "TOTP_ENVELOPE_PURPOSE",
    "Account",
    "AccountError",
    "Identity",
    "IdentityError",
    "Login",
    "LoginFailed",
    "PasswordRejected",
    "Session",
    "SessionPolicy",
    "normalize_username",
]

Clock = Callable[[], int]
TOTP_ENVELOPE_PURPOSE = "auth-totp-secret"
_SECOND = 1_000_000
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{2,63}", re.ASCII)
_PATIENT_REFERENCE = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}", re.ASCII)
_GENERIC_FAILURE_DE = "Anmeldung fehlgeschlagen: Benutzername, Passwort oder Einmalcode ist falsch."
_GENERIC_FAILURE_EN = "Login failed: user name, password or one-time code is wrong."


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_timeout_s: int = 15 * 60
    absolute_timeout_s: int = 12 * 3600
    # last_seen is written at most this often per session (a write per request would cost more
    # than the whole token check); the idle time-out is exact to within this interval.
    touch_interval_s: int = 60


class IdentityError(Exception):
    """Base error of identity. ``str(error)`` is English (logs, APIs); ``de`` is for the UI."""

    def __init__(self, code: str, en: str, de: str) -> None:
        super().__init__(en)
        self.code = code
        self.de = de


class AccountError(IdentityError):
    """An account cannot be created or changed as asked."""


class PasswordRejected(IdentityError):
    """The new password breaks the password policy."""

    def __init__(self, violations: tuple[Violation, ...]) -> None:
        super().__init__(
            "password-policy",
            " ".join(v.en for v in violations),
            " ".join(v.de for v in violations),
        )
        self.violations = violations


class LoginFailed(IdentityError):
    """Credentials refused. ``reason`` is for the audit trail only (unknown-account, password,
    disabled, totp-missing, totp-invalid, totp-replayed, totp-not-enrolled, throttled)."""

    def __init__(self, reason: str, retry_after_s: int = 0) -> None:
        if reason == "throttled":
            super().__init__(
                "throttled",
                f"Too many failed logins; try again in {retry_after_s} s.",
                "Zu viele fehlgeschlagene Anmeldungen. Bitte versuchen Sie es in "
                f"{retry_after_s} Sekunden erneut.",
            )
        else:
            super().__init__("login-failed", _GENERIC_FAILURE_EN, _GENERIC_FAILURE_DE)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Account:
    """An account without its secrets."""

    id: str
    username: str
    display_name: str
    roles: frozenset[Role]
    organization: str | None
    fhir_user: str | None
    disabled: bool
    has_totp: bool

    @property
    def is_staff(self) -> bool:
        return bool(self.roles & STAFF_ROLES)

    @property
    def patient(self) -> str | None:
        """The own Patient id of a patient account."""
        if Role.PATIENT in self.roles and self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.removeprefix("Patient/")
        return None

    @classmethod
    def of(cls, record: AccountRecord) -> Account:
        return cls(
            record.id,
            record.username,
            record.display_name,
            record.roles,
            record.organization,
            record.fhir_user,
            record.disabled,
            record.totp_secret is not None,
        )


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    account_id: str
    created_at: int
    last_seen: int
    expires_at: int
    client_id: str | None
    revoked_at: int | None

    @classmethod
    def of(cls, record: SessionRecord) -> Session:
        return cls(
            record.id,
            record.account_id,
            record.created_at,
            record.last_seen,
            record.expires_at,
            record.client_id,
            record.revoked_at,
        )

    def refusal(self, now: int, policy: SessionPolicy) -> str | None:
        """Why the session is over ("revoked", "expired", "idle"), or None while it is live."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if now - self.last_seen >= policy.idle_timeout_s * _SECOND:
            return "idle"
        return None


@dataclass(frozen=True, slots=True)
class Login:
    """A successful login: the account, its new session and the session cookie's value."""

    account: Account
    session: Session
    cookie: str


def normalize_username(username: str) -> str:
    return username.strip().casefold()


RevocationListener = Callable[[str | None, str | None], None]
"""Called with (session id, account id) when sessions end, to drop cached copies."""


class Identity:
    """Accounts and sessions on the auth store."""

    def __init__(
        self,
        store: AuthStore,
        keyring: Keyring,
        clock: Clock,
        *,
        events: Events | None = None,
        policy: SessionPolicy | None = None,
        hasher: PasswordHasher | None = None,
        throttle: LoginThrottle | None = None,
        new_id: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.store = store
        self.clock = clock
        self.policy = policy or SessionPolicy()
        self.events = events or Events()
        self._hasher = hasher or PasswordHasher()
        self._throttle = throttle or LoginThrottle(store.failures, clock)
        self._totp = TotpVerifier(store.totp_steps, clock)
        self._secrets = Envelope(keyring, store.data_keys, TOTP_ENVELOPE_PURPOSE)
        self._new_id = new_id
        self._listeners: list[RevocationListener] = []
        self._purged_at = 0

    def on_revocation(self, listener: RevocationListener) -> None:
        self._listeners.append(listener)

    # --- accounts ---

    def create_account(
        self,
        username: str,
        password: str,
        *,
        display_name: str,
        roles: Iterable[Role],
        organization: str | None = None,
        fhir_user: str | None = None,
        totp: bool | None = None,
    ) -> tuple[Account, str | None]:
        """A new account and, if it has a second factor, its TOTP secret (to enrol the app).

        Staff always get TOTP (O.Auth_4); patients only with ``totp=True``.
        """
        name = normalize_username(username)
        role_set = frozenset(roles)
        _check_account(name, display_name, role_set, organization, fhir_user)
        staff = bool(role_set & STAFF_ROLES)
        if staff and totp is False:
            raise AccountError(
                "totp-required",
                "staff accounts must have a second factor (BSI TR-03161 O.Auth_4)",
                "Konten von Mitarbeitenden brauchen einen zweiten Faktor.",
            )
        self._check_new_password(password, name, display_name)
        account_id = self._new_id()
        secret = new_secret() if staff or totp else None
        now = self.clock()
        record = AccountRecord(
            id=account_id,
            username=name,
            display_name=display_name.strip(),
            roles=role_set,
            password_hash=self._hasher.hash(password),
            password_changed_at=now,
            created_at=now,
            organization=organization,
            fhir_user=fhir_user,
            totp_secret=None if secret is None else self._seal(account_id, secret),
        )
        try:
            self.store.insert_account(record)
        except Duplicate as exc:
            raise AccountError(
                "duplicate",
                f"user name {name!r} exists already",
                f"Der Benutzername „{name}“ ist bereits vergeben.",
            ) from exc
        self.events.emit(
            "account-created",
            account=account_id,
            username=name,
            roles=" ".join(sorted(role_set)),
            organization=organization,
        )
        return Account.of(record), secret

    def account(self, username: str) -> Account | None:
        record = self.store.account_by_username(normalize_username(username))
        return None if record is None else Account.of(record)

    def account_by_id(self, account_id: str) -> Account | None:
        record = self.store.account_by_id(account_id)
        return None if record is None else Account.of(record)

    def totp_uri(self, account: Account, secret: str, issuer: str = "Medi-KUS") -> str:
        return provisioning_uri(secret, account.username, issuer)

    def set_disabled(self, username: str, disabled: bool = True) -> Account:
        """Disables (ending all its sessions) or re-enables an account."""
        record = self._existing(username)
        self.store.update_account(record.id, disabled=disabled)
        if disabled:
            self._end_all_sessions(record.id)
        self.events.emit("account-disabled" if disabled else "account-enabled", account=record.id)
        return Account.of(self._existing(username))

    # --- login and sessions ---

    def login(
        self,
        username: str,
        password: str,
        totp_code: str | None,
        address: str | None,
        *,
        client_id: str | None = None,
    ) -> Login:
        """Checks the credentials and opens a session; raises :class:`LoginFailed`."""
        name, where = normalize_username(username), address or "unknown"
        record = self._authenticate(name, password, totp_code, where, "login-failed")
        now = self.clock()
        cookie = secrets.token_urlsafe(32)
        session = SessionRecord(
            id=secrets.token_urlsafe(16),
            account_id=record.id,
            created_at=now,
            last_seen=now,
            expires_at=now + self.policy.absolute_timeout_s * _SECOND,
            client_id=client_id,
            cookie_hash=_sha256(cookie),
        )
        self.store.insert_session(session)
        if now - self._purged_at >= 3600 * _SECOND:  # housekeeping, at most hourly per process
            self._purged_at = now
            self.store.purge(now)
        self.events.emit(
            "login-succeeded",
            account=record.id,
            username=name,
            address=where,
            session=session.id,
            client=client_id,
        )
        return Login(Account.of(record), Session.of(session), cookie)

    def live_session(self, session_id: str) -> tuple[Session, Account] | None:
        """The session and its account if the session is live and the account enabled."""
        found = self.store.session_with_account(session_id)
        if found is None:
            return None
        session, account = Session.of(found[0]), Account.of(found[1])
        if session.refusal(self.clock(), self.policy) is not None or account.disabled:
            return None
        return session, account

    def session_for_cookie(self, cookie: str) -> Session | None:
        """The live session a login cookie belongs to."""
        record = self.store.session_by_cookie(_sha256(cookie))
        if record is None:
            return None
        live = self.live_session(record.id)
        return None if live is None else live[0]

    def logout(self, session_id: str, address: str | None = None) -> bool:
        """Ends the session and its refresh tokens; False if it had ended already."""
        owner = self.store.session_with_account(session_id)
        ended = self.store.revoke_session(session_id, self.clock())
        self._notify(session_id, None)
        if ended:
            account = owner[1].id if owner is not None else None
            self.events.emit("logout", session=session_id, account=account, address=address)
        return ended

    def change_password(
        self,
        username: str,
        current_password: str,
        totp_code: str | None,
        new_password: str,
        address: str | None,
    ) -> int:
        """Re-authenticates, sets the new password and ends every session of the account
        (O.Auth_12/16); returns how many sessions ended. Raises :class:`LoginFailed` or
        :class:`PasswordRejected`."""
        name, where = normalize_username(username), address or "unknown"
        record = self._authenticate(
            name, current_password, totp_code, where, "password-change-failed"
        )
        try:
            self._check_new_password(new_password, record.username, record.display_name)
            if new_password == current_password:
                raise AccountError(
                    "password-unchanged",
                    "the new password must differ from the current one",
                    "Das neue Passwort muss sich vom bisherigen unterscheiden.",
                )
        except IdentityError as exc:
            self.events.emit(
                "password-change-failed", account=record.id, address=where, reason=exc.code
            )
            raise
        now = self.clock()
        self.store.update_account(
            record.id, password_hash=self._hasher.hash(new_password), password_changed_at=now
        )
        ended = self._end_all_sessions(record.id)
        self.events.emit(
            "password-changed", account=record.id, address=where, sessions_ended=str(ended)
        )
        return ended

    # --- internals ---

    def _authenticate(
        self, name: str, password: str, totp_code: str | None, where: str, failure_kind: str
    ) -> AccountRecord:
        verdict = self._throttle.check(name, where)
        if not verdict.allowed:
            self.events.emit(
                failure_kind,
                username=name,
                address=where,
                reason="throttled",
                retry_after_s=str(verdict.retry_after_s),
            )
            raise LoginFailed("throttled", verdict.retry_after_s)
        try:
            record = self._check_credentials(name, password, totp_code)
        except LoginFailed as exc:
            self._throttle.failed(name, where)
            self.events.emit(failure_kind, username=name, address=where, reason=exc.reason)
            raise
        self._throttle.succeeded(name, where)
        return record

    def _check_credentials(self, name: str, password: str, totp_code: str | None) -> AccountRecord:
        record = self.store.account_by_username(name)
        if record is None:
            self._hasher.verify_unknown_user(password)
            raise LoginFailed("unknown-account")
        verification = self._hasher.verify(record.password_hash, password)
        if not verification.ok:
            raise LoginFailed("password")
        if record.disabled:
            raise LoginFailed("disabled")
        self._check_totp(record, totp_code)
        if verification is Verification.VALID_NEEDS_REHASH:
            self.store.update_account(record.id, password_hash=self._hasher.hash(password))
        return record

    def _check_totp(self, record: AccountRecord, code: str | None) -> None:
        if record.totp_secret is None:
            if record.roles & STAFF_ROLES:
                raise LoginFailed("totp-not-enrolled")
            return
        if not code or not code.strip():
            raise LoginFailed("totp-missing")
        aad = _totp_aad(record.id)
        secret = self._secrets.decrypt(record.totp_secret, aad).decode()
        result = self._totp.verify(record.id, secret, code)
        if not result.ok:
            raise LoginFailed("totp-" + result.value)
        if self._secrets.needs_rewrap(record.totp_secret):  # after a master key rotation
            self.store.update_account(
                record.id, totp_secret=self._secrets.rewrap(record.totp_secret, aad)
            )

    def _check_new_password(self, password: str, username: str, display_name: str) -> None:
        personal = (username, display_name, *display_name.split())
        violations = check_password(password, personal=personal)
        if violations:
            raise PasswordRejected(violations)

    def _seal(self, account_id: str, secret: str) -> bytes:
        return self._secrets.encrypt(secret.encode(), _totp_aad(account_id))

    def _existing(self, username: str) -> AccountRecord:
        record = self.store.account_by_username(normalize_username(username))
        if record is None:
            raise AccountError(
                "unknown", f"no account {username!r}", f"Es gibt kein Konto „{username}“."
            )
        return record

    def _end_all_sessions(self, account_id: str) -> int:
        ended = self.store.revoke_account_sessions(account_id, self.clock())
        self._notify(None, account_id)
        return len(ended)

    def _notify(self, session_id: str | None, account_id: str | None) -> None:
        for listener in self._listeners:
            listener(session_id, account_id)


def _check_account(
    name: str,
    display_name: str,
    roles: frozenset[Role],
    organization: str | None,
    fhir_user: str | None,
) -> None:
    def refuse(code: str, en: str, de: str) -> AccountError:
        return AccountError(code, en, de)

    if _USERNAME.fullmatch(name) is None:
        raise refuse(
            "username",
            "user names are 3-64 characters: letters a-z, digits, '.', '_', '@', '-'",
            "Benutzernamen haben 3 bis 64 Zeichen: Buchstaben a–z, Ziffern, „.“, „_“, „@“, „-“.",
        )
    if not display_name.strip():
        raise refuse("name", "a display name is required", "Bitte geben Sie einen Namen an.")
    if not roles:
        raise refuse("roles", "an account needs a role", "Ein Konto braucht eine Rolle.")
    if Role.PATIENT in roles:
        if len(roles) > 1:
            raise refuse(
                "roles",
                "a patient account has no staff role",
                "Ein Patientenkonto hat keine weitere Rolle.",
            )
        if fhir_user is None or _PATIENT_REFERENCE.fullmatch(fhir_user) is None:
            raise refuse(
                "patient",
                "a patient account needs fhir_user Patient/<id>",
                "Ein Patientenkonto braucht den Verweis auf seine Patientenakte.",
            )
        if organization is not None:
            raise refuse(
                "organization",
                "a patient account belongs to no organisation",
                "Ein Patientenkonto gehört zu keiner Einrichtung.",
            )
    elif not organization:
        raise refuse(
            "organization",
            "a staff account needs its organisation",
            "Ein Konto für Mitarbeitende braucht seine Einrichtung.",
        )


def _totp_aad(account_id: str) -> Aad:
    return Aad("auth_account", account_id, "totp_secret")


def _sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
