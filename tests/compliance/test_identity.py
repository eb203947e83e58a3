"""Accounts, login, sessions and compliance's own tables on SQLite and PostgreSQL (accounts.py,
identity.py, _sqlstore.py): account rules, encrypted secrets at rest, rehash on login, password
change, the storage ports under concurrency, schema creation, and the cost of authenticate."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from compliance._sqlstore import SCHEMA_VERSION, AuthStore, SchemaTooNew
from compliance.accounts import AccountError, LoginFailed, PasswordRejected, SessionPolicy
from compliance.auth import AuthServices
from compliance.auth_records import CodeRecord, RefreshRecord
from compliance.envelope import key_version
from compliance.keyring import Keyring
from compliance.passwords import HashParameters, PasswordHasher
from compliance.principal import Role
from compliance.throttle import ADDRESS_POLICY
from tests.compliance.auth_helpers import (  # noqa: F401 # fixtures
    BASE,
    FAST_HASHER,
    PASSWORD,
    Recorded,
    auth_fixture,
    keyring_fixture,
    make_doctor,
    make_patient,
    open_services,
    recorded_fixture,
    totp_now,
)
from tests.compliance.clock import ManualClock


def raw(auth: AuthServices, query: str) -> list[Any]:
    with auth.store.engine.connect() as connection:
        return list(connection.execute(sa.text(query)).all())


# --- accounts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "kwargs", "code"),
    [
        ("ab", {}, "username"),
        ("dr weber", {}, "username"),
        ("-dr", {}, "username"),
        ("dr.weber", {"roles": []}, "roles"),
        ("dr.weber", {"organization": None}, "organization"),
        ("dr.weber", {"display_name": "  "}, "name"),
        ("dr.weber", {"totp": False}, "totp-required"),
        ("erika", {"roles": [Role.PATIENT], "organization": None}, "patient"),
        ("erika", {"roles": [Role.PATIENT], "fhir_user": "Practitioner/1"}, "patient"),
        (
            "erika",
            {"roles": [Role.PATIENT, Role.DOCTOR], "fhir_user": "Patient/1"},
            "roles",
        ),
        (
            "erika",
            {"roles": [Role.PATIENT], "fhir_user": "Patient/1", "organization": "mvz-1"},
            "organization",
        ),
    ],
)
def test_account_rules(
    auth: AuthServices, username: str, kwargs: dict[str, Any], code: str
) -> None:
    arguments: dict[str, Any] = {
        "display_name": "Dr. Anna Weber",
        "roles": [Role.DOCTOR],
        "organization": "mvz-1",
        **kwargs,
    }
    with pytest.raises(AccountError) as info:
        auth.identity.create_account(username, PASSWORD, **arguments)
    assert info.value.code == code and info.value.de  # a German message for the UI


def test_password_policy_and_duplicates(auth: AuthServices, recorded: Recorded) -> None:
    for weak in ("kurz", "Passwort2025!", "anna-weber-2026-xx"):
        with pytest.raises(PasswordRejected) as info:
            auth.identity.create_account(
                "dr.weber",
                weak,
                display_name="Anna Weber",
                roles=[Role.DOCTOR],
                organization="mvz-1",
            )
        assert info.value.violations
    make_doctor(auth)
    with pytest.raises(AccountError) as duplicate:
        make_doctor(auth, username="DR.WEBER")  # user names are case-insensitive
    assert duplicate.value.code == "duplicate"
    assert recorded.kinds() == ["account-created"]


def test_staff_always_get_totp_patients_only_on_request(auth: AuthServices) -> None:
    doctor = make_doctor(auth)
    assert doctor.totp_secret is not None and doctor.account.has_totp
    patient = make_patient(auth)
    assert patient.totp_secret is None and patient.account.patient == "pat-1"
    uri = auth.identity.totp_uri(doctor.account, doctor.totp_secret)
    assert uri.startswith("otpauth://totp/Medi-KUS:dr.weber?secret=")


def test_secrets_are_encrypted_at_rest(auth: AuthServices) -> None:
    doctor = make_doctor(auth)
    assert doctor.totp_secret is not None
    [(sealed,)] = raw(auth, "SELECT totp_secret FROM auth_account")
    assert doctor.totp_secret.encode() not in bytes(sealed)
    [(password_hash,)] = raw(auth, "SELECT password_hash FROM auth_account")
    assert password_hash.startswith("$argon2id$") and PASSWORD not in password_hash
    private_d = auth.signing.tokens().keys.current.private_jwk()["d"]
    for (blob,) in raw(auth, "SELECT sealed_jwk FROM auth_signing_key"):
        assert private_d.encode() not in bytes(blob) and b'"d"' not in bytes(blob)


def test_another_key_file_cannot_read_the_secrets(
    database_url: str, auth: AuthServices, clock: ManualClock
) -> None:
    make_doctor(auth)
    stranger = Keyring({1: os.urandom(32)}, 1)
    with pytest.raises(Exception, match=r"does not unwrap|does not authenticate"):
        open_services(database_url, stranger, clock)


def test_master_key_rotation_rewraps_the_totp_secret_on_login(
    database_url: str, auth: AuthServices, keyring: Keyring, clock: ManualClock
) -> None:
    doctor = make_doctor(auth)
    rotated = keyring.with_version(2, os.urandom(32))
    services = open_services(database_url, rotated, clock)
    try:
        services.identity.login("dr.weber", PASSWORD, totp_now(doctor, clock), None)
        [(sealed,)] = raw(services, "SELECT totp_secret FROM auth_account")
        assert key_version(bytes(sealed)) == 2
        clock.advance(30)
        services.identity.login("dr.weber", PASSWORD, totp_now(doctor, clock), None)
    finally:
        services.close()


# --- login --------------------------------------------------------------------------------------


def test_login_opens_a_session_with_both_timeouts(auth: AuthServices, clock: ManualClock) -> None:
    doctor = make_doctor(auth)
    login = auth.identity.login(" Dr.Weber ", PASSWORD, totp_now(doctor, clock), "192.0.2.1")
    session = login.session
    assert session.account_id == doctor.account.id and session.revoked_at is None
    assert session.expires_at - session.created_at == 12 * 3600 * 1_000_000
    policy = auth.identity.policy
    assert session.refusal(clock.now, policy) is None
    assert session.refusal(clock.now + 15 * 60 * 1_000_000, policy) == "idle"
    assert auth.identity.session_for_cookie(login.cookie) == session
    assert auth.identity.session_for_cookie("forged") is None
    [(cookie_hash,)] = raw(auth, "SELECT cookie_hash FROM auth_session")
    assert login.cookie.encode() not in bytes(cookie_hash)  # only its hash is stored


def test_disabled_account_cannot_log_in(
    auth: AuthServices, clock: ManualClock, recorded: Recorded
) -> None:
    patient = make_patient(auth)
    auth.identity.set_disabled("erika")
    with pytest.raises(LoginFailed):
        auth.identity.login("erika", PASSWORD, None, None)
    assert recorded.of("login-failed")[-1]["reason"] == "disabled"
    auth.identity.set_disabled("erika", False)
    assert auth.identity.login("erika", PASSWORD, None, None).account.id == patient.account.id


def test_rehash_on_login_after_raising_the_cost(
    database_url: str, auth: AuthServices, keyring: Keyring, clock: ManualClock
) -> None:
    make_patient(auth)
    [(before,)] = raw(auth, "SELECT password_hash FROM auth_account")
    stronger = PasswordHasher(HashParameters(time_cost=2, memory_kib=46 * 1024))
    services = AuthServices.open(database_url, keyring, BASE, clock=clock, hasher=stronger)
    try:
        services.identity.login("erika", PASSWORD, None, None)
        [(after,)] = raw(services, "SELECT password_hash FROM auth_account")
        assert after != before and ",t=2," in after
    finally:
        services.close()


def test_address_throttle_spans_accounts(auth: AuthServices, recorded: Recorded) -> None:
    make_patient(auth)
    for i in range(ADDRESS_POLICY.free + 1):  # one address guessing many accounts
        with pytest.raises(LoginFailed):
            auth.identity.login(f"user{i}", "irgendein-Passwort-1", None, "203.0.113.9")
    with pytest.raises(LoginFailed) as info:
        auth.identity.login("erika", PASSWORD, None, "203.0.113.9")
    assert info.value.reason == "throttled"
    auth.identity.login("erika", PASSWORD, None, "198.51.100.1")  # another address is fine


def test_change_password(auth: AuthServices, clock: ManualClock, recorded: Recorded) -> None:
    doctor = make_doctor(auth)
    auth.identity.login("dr.weber", PASSWORD, totp_now(doctor, clock), None)
    clock.advance(30)
    with pytest.raises(LoginFailed):
        auth.identity.change_password(
            "dr.weber", "falsch-falsch-1", totp_now(doctor, clock), "Neues-Kennwort-2026", None
        )
    with pytest.raises(LoginFailed):  # the TOTP code is part of the re-authentication
        auth.identity.change_password("dr.weber", PASSWORD, None, "Neues-Kennwort-2026", None)
    with pytest.raises(AccountError):
        auth.identity.change_password("dr.weber", PASSWORD, totp_now(doctor, clock), PASSWORD, None)
    clock.advance(30)
    ended = auth.identity.change_password(
        "dr.weber", PASSWORD, totp_now(doctor, clock), "Neues-Kennwort-2026", "192.0.2.3"
    )
    assert ended == 1
    clock.advance(30)
    with pytest.raises(LoginFailed):
        auth.identity.login("dr.weber", PASSWORD, totp_now(doctor, clock), None)
    auth.identity.login("dr.weber", "Neues-Kennwort-2026", totp_now(doctor, clock), None)
    reasons = [d["reason"] for d in recorded.of("password-change-failed")]
    assert reasons == ["password", "totp-missing", "password-unchanged"]
    [(changed_at,)] = raw(auth, "SELECT password_changed_at FROM auth_account")
    assert changed_at > doctor_created(auth)


def doctor_created(auth: AuthServices) -> int:
    [(created,)] = raw(auth, "SELECT created_at FROM auth_account")
    return int(created)


def test_custom_session_policy(database_url: str, keyring: Keyring, clock: ManualClock) -> None:
    services = AuthServices.open(
        database_url,
        keyring,
        BASE,
        clock=clock,
        hasher=FAST_HASHER,
        policy=SessionPolicy(idle_timeout_s=60, absolute_timeout_s=600),
    )
    try:
        make_patient(services)
        login = services.identity.login("erika", PASSWORD, None, None)
        clock.advance(59)
        assert services.identity.live_session(login.session.id) is not None
        clock.advance(2)
        assert services.identity.live_session(login.session.id) is None
    finally:
        services.close()


# --- the tables -----------------------------------------------------------------------------------


def test_schema_is_created_once_with_its_version(
    database_url: str, auth: AuthServices, keyring: Keyring, clock: ManualClock
) -> None:
    again = open_services(database_url, keyring, clock)  # idempotent, keeps the data
    again.close()
    assert raw(auth, "SELECT component, version FROM auth_schema") == [("auth", SCHEMA_VERSION)]
    assert len(raw(auth, "SELECT kid FROM auth_signing_key")) == 1
    with auth.store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE auth_schema SET version = 99"))
    with pytest.raises(SchemaTooNew):
        AuthStore.open(database_url, clock_s=lambda: 0)


def test_workers_starting_together_create_one_signing_key(
    database_url: str, keyring: Keyring, clock: ManualClock
) -> None:
    with ThreadPoolExecutor(4) as pool:
        services = list(pool.map(lambda _: open_services(database_url, keyring, clock), range(4)))
    try:
        kids = {s.signing.tokens().keys.current.kid for s in services}
        assert len(kids) == 1
    finally:
        for s in services:
            s.close()


def race(count: int, action: Callable[[int], bool]) -> list[bool]:
    barrier = threading.Barrier(count)

    def run(i: int) -> bool:
        barrier.wait()
        return action(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_single_use_holds_under_concurrency(auth: AuthServices, clock: ManualClock) -> None:
    store = auth.store
    patient = make_patient(auth)
    login = auth.identity.login("erika", PASSWORD, None, None)
    code_hash = b"c" * 32
    store.insert_code(
        CodeRecord(
            code_hash,
            "fam",
            "app",
            patient.account.id,
            login.session.id,
            "https://a/cb",
            "x" * 43,
            "patient/*.rs",
            clock.now + 60_000_000,
        )
    )
    assert sorted(race(6, lambda _: store.use_code(code_hash, clock.now))) == [False] * 5 + [True]
    assert sorted(race(6, lambda _: store.totp_steps.advance("acct", 7))).count(True) == 1
    assert (
        race(6, lambda _: store.jti.remember("svc", "jti-1", clock.now // 10**6 + 60)).count(True)
        == 1
    )

    old = RefreshRecord(
        b"r" * 32, "fam", login.session.id, "app", "s", clock.now, clock.now + 10**9
    )
    store.insert_refresh(old)

    def rotate(i: int) -> bool:
        new = RefreshRecord(
            bytes([i]) * 32, "fam", login.session.id, "app", "s", clock.now, clock.now + 10**9
        )
        return store.rotate_refresh(old.token_hash, clock.now, new)

    assert race(6, rotate).count(True) == 1
    counts = race(8, lambda _: store.failures.add_failure("k", clock.now, 0).count > 0)
    assert all(counts)
    failures = store.failures.get("k")
    assert failures is not None and failures.count == 8


def test_failures_are_forgotten_after_the_window(auth: AuthServices, clock: ManualClock) -> None:
    failures = auth.store.failures
    failures.add_failure("acct:x", clock.now, 0)
    assert failures.add_failure("acct:x", clock.now, 0).count == 2
    assert failures.add_failure("acct:x", clock.now, clock.now + 1).count == 1  # window passed
    failures.clear("acct:x")
    assert failures.get("acct:x") is None


def test_totp_steps_only_advance(auth: AuthServices) -> None:
    steps = auth.store.totp_steps
    assert steps.advance("a", 10) and not steps.advance("a", 10) and not steps.advance("a", 9)
    assert steps.advance("a", 11)


def test_jti_store_purges_expired_ids(auth: AuthServices, clock: ManualClock) -> None:
    now = clock.now // 10**6
    assert auth.store.jti.remember("svc", "j", now + 5)
    assert not auth.store.jti.remember("svc", "j", now + 5)
    clock.advance(10)
    assert auth.store.jti.remember("svc", "other", now + 300)  # purges the expired "j"
    assert raw(auth, "SELECT jti FROM auth_jti") == [("other",)]


def test_join_grant_store(auth: AuthServices, clock: ManualClock) -> None:
    issued = auth.join.issue_code("Patient/p", "Appointment/a", ttl_s=60)
    grants = auth.store.join_grants
    assert grants.count_attempt(issued.grant.grant_id).attempts == 1  # type: ignore[union-attr]
    assert grants.count_attempt("unknown") is None
    link = auth.join.issue_link("Patient/p", "Appointment/a")
    assert grants.find_link(link.grant.secret_hash) == link.grant
    auth.join.revoke(link.grant.grant_id)
    assert grants.find_link(link.grant.secret_hash) is None
    with pytest.raises(ValueError, match="Patient"):
        auth.join.issue_link("Practitioner/x", "Appointment/a")
    with pytest.raises(ValueError, match="purpose"):
        auth.join.issue_link("Patient/p", "not a reference")


# --- cost of authenticate -------------------------------------------------------------------------


def test_authenticate_cost(auth: AuthServices, clock: ManualClock, database_url: str) -> None:
    """Per-request cost of authenticate: cached (the same token again within 2 s: no database
    access) and uncached (a new token: signature check, and one query for session and account).
    The times are printed (run with -s); the machine's load decides them, so the test asserts
    the number of statements, not the microseconds."""
    doctor = make_doctor(auth)
    login = auth.identity.login("dr.weber", PASSWORD, totp_now(doctor, clock), None)
    tokens = auth.signing.tokens()

    def issue() -> str:
        return (
            "Bearer "
            + tokens.issue(
                subject=doctor.account.id, client_id="app", scope="user/*.rs", sid=login.session.id
            )[0]
        )

    fresh = [issue() for _ in range(300)]
    same = issue()
    auth.authenticate(same, None)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    def timed(headers: list[str], between: Callable[[], None] = lambda: None) -> list[float]:
        samples = []
        for header in headers:
            between()
            start = time.perf_counter()
            auth.authenticate(header, "192.0.2.1")
            samples.append((time.perf_counter() - start) * 1e6)
        return samples

    sa.event.listen(auth.store.engine, "before_cursor_execute", count)
    try:
        cached = timed([same] * 2000)
        assert statements == []
        uncached = timed(fresh, between=lambda: auth.authenticator.invalidate(login.session.id))
    finally:
        sa.event.remove(auth.store.engine, "before_cursor_execute", count)
    # One query per new token (BEGIN on SQLite and pool pings on PostgreSQL aside).
    queries = [s for s in statements if s.strip(" ;").upper() not in ("", "BEGIN", "SELECT 1")]
    assert len(queries) == len(fresh) and all("FROM auth_session JOIN" in q for q in queries)
    kind = database_url.split(":")[0]
    print(
        f"\nauthenticate on {kind}: cached p50 {statistics.median(cached):.0f} µs, "
        f"uncached p50 {statistics.median(uncached):.0f} µs "
        f"(p90 {statistics.quantiles(uncached, n=10)[-1]:.0f} µs)"
    )


def test_purge_keeps_what_is_live(auth: AuthServices, clock: ManualClock) -> None:
    make_patient(auth)
    old = auth.identity.login("erika", PASSWORD, None, None)
    store = auth.store
    store.insert_refresh(
        RefreshRecord(
            b"r" * 32, "fam", old.session.id, "app", "s", clock.now, old.session.expires_at
        )
    )
    store.failures.add_failure("acct:x", clock.now, 0)
    auth.join.issue_link("Patient/p", "Appointment/a", ttl_s=60)
    clock.advance(8 * 24 * 3600)
    live = auth.identity.login("erika", PASSWORD, None, None)  # purges (hourly, per process)
    assert raw(auth, "SELECT id FROM auth_session") == [(live.session.id,)]
    for table in ("auth_refresh_token", "auth_login_failure", "auth_join_grant"):
        assert raw(auth, f"SELECT * FROM {table}") == [], table
