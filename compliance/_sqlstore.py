"""compliance's own tables (``auth_*``) on the record core's database, SQLite or PostgreSQL.

The only compliance module that imports SQLAlchemy (Core, no ORM). The tables are created with
``metadata.create_all`` when the store opens (idempotent, serialised by an advisory lock on
PostgreSQL and by ``BEGIN IMMEDIATE`` on SQLite), next to one row in ``auth_schema`` naming the
schema version, so a newer schema is refused instead of misread.

Besides accounts, sessions, codes, refresh tokens, clients and signing keys, this module
implements the storage ports of the building blocks: :class:`SqlJtiStore` (tokens.JtiStore),
:class:`SqlUsedSteps` (totp.UsedSteps), :class:`SqlFailureStore` (throttle.FailureStore),
:class:`SqlJoinGrantStore` (join_links.JoinGrantStore) and :class:`SqlDataKeyStore`
(envelope.DataKeyStore). Every "atomically" of those ports is a single statement (an upsert with a
condition, or ``UPDATE … RETURNING``), which both databases execute atomically; whether it
changed a row is read from RETURNING for inserts (their rowcount is not reliable with psycopg).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from compliance.auth_records import (
    AccountRecord,
    ClientKind,
    ClientRecord,
    CodeRecord,
    RefreshRecord,
    SessionRecord,
    SigningKeyRecord,
)
from compliance.join_links import JoinGrant, Kind
from compliance.principal import Role
from compliance.throttle import Failures

__all__ = [
    "SCHEMA_VERSION",
    "AuthStore",
    "Duplicate",
    "SchemaTooNew",
    "SqlDataKeyStore",
    "SqlFailureStore",
    "SqlJoinGrantStore",
    "SqlJtiStore",
    "SqlUsedSteps",
]

SCHEMA_VERSION = 1
_COMPONENT = "auth"
_PG_SCHEMA_LOCK = 727_104  # advisory lock id (the record core's migrations use 727100)
_SECOND = 1_000_000

metadata = sa.MetaData()
_id = sa.String(64)

schema_version = sa.Table(
    "auth_schema",
    metadata,
    sa.Column("component", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
account = sa.Table(
    "auth_account",
    metadata,
    sa.Column("id", _id, primary_key=True),
    sa.Column("username", sa.String(128), nullable=False, unique=True),
    sa.Column("display_name", sa.String(256), nullable=False),
    sa.Column("roles", sa.String(256), nullable=False),  # space-separated Role values
    sa.Column("organization", _id),
    sa.Column("fhir_user", sa.String(160)),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("totp_secret", sa.LargeBinary),  # sealed; NULL: no second factor enrolled
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("password_changed_at", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
session = sa.Table(
    "auth_session",
    metadata,
    sa.Column("id", _id, primary_key=True),
    sa.Column("account_id", _id, sa.ForeignKey("auth_account.id"), nullable=False, index=True),
    sa.Column("client_id", sa.String(128)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("revoked_at", sa.BigInteger),
    sa.Column("cookie_hash", sa.LargeBinary(32), unique=True),
)
code = sa.Table(
    "auth_code",
    metadata,
    sa.Column("code_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("family_id", _id, nullable=False),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("account_id", _id, sa.ForeignKey("auth_account.id"), nullable=False),
    sa.Column("session_id", _id, sa.ForeignKey("auth_session.id"), nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("code_challenge", sa.String(64), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("patient", _id),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("used_at", sa.BigInteger),
)
refresh_token = sa.Table(
    "auth_refresh_token",
    metadata,
    sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("family_id", _id, nullable=False, index=True),
    sa.Column("session_id", _id, sa.ForeignKey("auth_session.id"), nullable=False, index=True),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("patient", _id),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("rotated_at", sa.BigInteger),
    sa.Column("revoked_at", sa.BigInteger),
)
client = sa.Table(
    "auth_client",
    metadata,
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("redirect_uris", sa.Text, nullable=False),  # JSON array
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("jwks", sa.Text),  # JSON object
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)
used_jti = sa.Table(
    "auth_jti",
    metadata,
    sa.Column("issuer", sa.String(256), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),  # epoch seconds
)
totp_step = sa.Table(
    "auth_totp_step",
    metadata,
    sa.Column("account_id", sa.String(256), primary_key=True),
    sa.Column("step", sa.BigInteger, nullable=False),
)
login_failure = sa.Table(
    "auth_login_failure",
    metadata,
    sa.Column("key", sa.String(320), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("last_at", sa.BigInteger, nullable=False, index=True),
)
join_grant = sa.Table(
    "auth_join_grant",
    metadata,
    sa.Column("grant_id", _id, primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("secret_hash", sa.LargeBinary(32), nullable=False, index=True),
    sa.Column("subject", sa.String(160), nullable=False),
    sa.Column("purpose", sa.String(256), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("used_at", sa.BigInteger),
)
signing_key = sa.Table(
    "auth_signing_key",
    metadata,
    sa.Column("kid", sa.String(128), primary_key=True),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("sealed_jwk", sa.LargeBinary, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("demoted_at", sa.BigInteger),
)
data_key = sa.Table(
    "auth_data_key",
    metadata,
    sa.Column("purpose", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
)


class Duplicate(Exception):
    """A row with this key exists already (user name, client id)."""


class SchemaTooNew(Exception):
    """The database holds a newer auth schema than this code knows: upgrade Medi-KUS first."""


def _normalize_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Same settings as the record core's connections to the same file (fhir_server/_sqlstore.py):
    # transactions under our control, WAL, durable commits, a generous busy wait.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=60000", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql(connection.info.pop("begin", "BEGIN"))


def create_engine(url: str, *, pool_size: int = 5) -> Engine:
    url = _normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
    )


class _Base:
    """Transactions on the shared engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # Reads on PostgreSQL run in autocommit: one statement, no BEGIN/ROLLBACK round trips
        # (authenticate's session lookup is on the request path). SQLite's BEGIN costs nothing.
        self._reader = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect == "postgresql"
            else engine
        )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                # Take the write lock at BEGIN: a read-then-write transaction cannot deadlock.
                connection.info["begin"] = "BEGIN IMMEDIATE"
            with connection.begin():
                yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for one read statement (several statements may see different commits)."""
        with self._reader.connect() as connection, connection.begin():
            yield connection

    def _insert(self, table: sa.Table) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(table)


# --- ports of the building blocks -------------------------------------------------------------


class SqlJtiStore(_Base):
    """tokens.JtiStore: (issuer, jti) pairs seen in client assertions, until they expire."""

    def __init__(self, engine: Engine, clock_s: Any) -> None:
        super().__init__(engine)
        self._clock_s = clock_s  # () -> epoch seconds

    def remember(self, issuer: str, jti: str, expires_at: int) -> bool:
        with self._write() as c:
            # An expired assertion is refused before its jti is looked at: its row is useless.
            c.execute(sa.delete(used_jti).where(used_jti.c.expires_at < self._clock_s()))
            statement = self._insert(used_jti).values(issuer=issuer, jti=jti, expires_at=expires_at)
            statement = statement.on_conflict_do_nothing().returning(used_jti.c.jti)
            return c.execute(statement).first() is not None


class SqlUsedSteps(_Base):
    """totp.UsedSteps: the last accepted TOTP time step per account."""

    def advance(self, user_id: str, step: int) -> bool:
        statement = self._insert(totp_step).values(account_id=user_id, step=step)
        statement = statement.on_conflict_do_update(
            index_elements=[totp_step.c.account_id],
            set_={"step": statement.excluded.step},
            where=totp_step.c.step < statement.excluded.step,
        ).returning(totp_step.c.step)
        with self._write() as c:
            # A row comes back only if it was inserted or advanced (rowcount of an INSERT is not
            # reliable across drivers).
            return c.execute(statement).first() is not None


class SqlFailureStore(_Base):
    """throttle.FailureStore: consecutive failed logins per account name and per address."""

    def get(self, key: str) -> Failures | None:
        with self._read() as c:
            row = c.execute(
                sa.select(login_failure.c.count, login_failure.c.last_at).where(
                    login_failure.c.key == key
                )
            ).first()
        return None if row is None else Failures(row[0], row[1])

    def add_failure(self, key: str, at: int, forget_before: int) -> Failures:
        statement = self._insert(login_failure).values(key=key, count=1, last_at=at)
        statement = statement.on_conflict_do_update(
            index_elements=[login_failure.c.key],
            set_={
                "count": sa.case(
                    (login_failure.c.last_at < forget_before, 1),
                    else_=login_failure.c.count + 1,
                ),
                "last_at": at,
            },
        ).returning(login_failure.c.count, login_failure.c.last_at)
        with self._write() as c:
            row = c.execute(statement).one()
        return Failures(row[0], row[1])

    def clear(self, key: str) -> None:
        with self._write() as c:
            c.execute(sa.delete(login_failure).where(login_failure.c.key == key))


class SqlJoinGrantStore(_Base):
    """join_links.JoinGrantStore: single-use patient links and phone codes."""

    def add(self, grant: JoinGrant) -> None:
        try:
            with self._write() as c:
                c.execute(
                    sa.insert(join_grant).values(
                        grant_id=grant.grant_id,
                        kind=grant.kind.value,
                        secret_hash=grant.secret_hash,
                        subject=grant.subject,
                        purpose=grant.purpose,
                        created_at=grant.created_at,
                        expires_at=grant.expires_at,
                        max_attempts=grant.max_attempts,
                        attempts=grant.attempts,
                        used_at=grant.used_at,
                    )
                )
        except IntegrityError as exc:
            raise ValueError(f"duplicate grant id {grant.grant_id}") from exc

    def find_link(self, secret_hash: bytes) -> JoinGrant | None:
        with self._read() as c:
            row = c.execute(
                sa.select(join_grant).where(
                    join_grant.c.secret_hash == secret_hash, join_grant.c.kind == Kind.LINK.value
                )
            ).first()
        return None if row is None else _join_grant(row)

    def count_attempt(self, grant_id: str) -> JoinGrant | None:
        statement = (
            sa.update(join_grant)
            .where(join_grant.c.grant_id == grant_id)
            .values(attempts=join_grant.c.attempts + 1)
            .returning(*join_grant.c)
        )
        with self._write() as c:
            row = c.execute(statement).first()
        return None if row is None else _join_grant(row)

    def mark_used(self, grant_id: str, at: int) -> bool:
        with self._write() as c:
            return _stamp_once(c, join_grant.c.grant_id == grant_id, join_grant.c.used_at, at) == 1

    def revoke(self, grant_id: str) -> None:
        with self._write() as c:
            c.execute(sa.delete(join_grant).where(join_grant.c.grant_id == grant_id))


def _join_grant(row: Row[Any]) -> JoinGrant:
    return JoinGrant(
        grant_id=row.grant_id,
        kind=Kind(row.kind),
        secret_hash=bytes(row.secret_hash),
        subject=row.subject,
        purpose=row.purpose,
        created_at=row.created_at,
        expires_at=row.expires_at,
        max_attempts=row.max_attempts,
        attempts=row.attempts,
        used_at=row.used_at,
    )


class SqlDataKeyStore(_Base):
    """envelope.DataKeyStore: the wrapped data keys of compliance's own encrypted columns."""

    def load(self, purpose: str, version: int) -> bytes | None:
        with self._read() as c:
            value = c.execute(
                sa.select(data_key.c.wrapped).where(
                    data_key.c.purpose == purpose, data_key.c.version == version
                )
            ).scalar()
        return None if value is None else bytes(value)

    def insert_if_absent(self, purpose: str, version: int, wrapped: bytes) -> bytes:
        statement = self._insert(data_key).values(purpose=purpose, version=version, wrapped=wrapped)
        with self._write() as c:
            c.execute(statement.on_conflict_do_nothing())
            stored = c.execute(
                sa.select(data_key.c.wrapped).where(
                    data_key.c.purpose == purpose, data_key.c.version == version
                )
            ).scalar_one()
        return bytes(stored)


# --- the store --------------------------------------------------------------------------------


class AuthStore(_Base):
    """Accounts, sessions, OAuth grants, clients and signing keys; the ports as attributes."""

    def __init__(self, engine: Engine, clock_s: Any) -> None:
        super().__init__(engine)
        self.jti = SqlJtiStore(engine, clock_s)
        self.totp_steps = SqlUsedSteps(engine)
        self.failures = SqlFailureStore(engine)
        self.join_grants = SqlJoinGrantStore(engine)
        self.data_keys = SqlDataKeyStore(engine)

    @classmethod
    def open(cls, url: str, *, clock_s: Any, pool_size: int = 5) -> AuthStore:
        """Opens the store on ``url`` and creates the tables if needed.

        ``clock_s``: the current time in epoch seconds (for purging expired assertion ids).
        """
        engine = create_engine(url, pool_size=pool_size)
        store = cls(engine, clock_s)
        try:
            store._create_schema()
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def _create_schema(self) -> None:
        with self._write() as c:
            if self.dialect == "postgresql":
                c.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_SCHEMA_LOCK})
            metadata.create_all(c)
            found = c.execute(
                sa.select(schema_version.c.version).where(schema_version.c.component == _COMPONENT)
            ).scalar()
            if found is None:
                c.execute(sa.insert(schema_version).values(component=_COMPONENT, version=1))
            elif found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the database holds auth schema version {found}; this Medi-KUS knows "
                    f"{SCHEMA_VERSION}"
                )

    # --- accounts ---

    def insert_account(self, record: AccountRecord) -> None:
        try:
            with self._write() as c:
                c.execute(sa.insert(account).values(**_account_row(record)))
        except IntegrityError as exc:
            raise Duplicate(f"user name {record.username!r} exists already") from exc

    def account_by_username(self, username: str) -> AccountRecord | None:
        return self._account(account.c.username == username)

    def account_by_id(self, account_id: str) -> AccountRecord | None:
        return self._account(account.c.id == account_id)

    def _account(self, condition: Any) -> AccountRecord | None:
        with self._read() as c:
            row = c.execute(sa.select(account).where(condition)).first()
        return None if row is None else _account_record(row)

    def update_account(self, account_id: str, **values: Any) -> None:
        """Sets columns of one account (password_hash, password_changed_at, totp_secret, …)."""
        with self._write() as c:
            c.execute(sa.update(account).where(account.c.id == account_id).values(**values))

    # --- sessions ---

    def insert_session(self, record: SessionRecord) -> None:
        with self._write() as c:
            c.execute(sa.insert(session).values(**_session_row(record)))

    def session_with_account(self, session_id: str) -> tuple[SessionRecord, AccountRecord] | None:
        """One query: what authenticating a user's access token needs."""
        statement = sa.select(session, account).join(account, session.c.account_id == account.c.id)
        with self._read() as c:
            row = c.execute(statement.where(session.c.id == session_id)).first()
        if row is None:
            return None
        mapping = row._mapping
        return _session_record(mapping), _account_record(
            {col.name: mapping[col] for col in account.c}
        )

    def session_by_cookie(self, cookie_hash: bytes) -> SessionRecord | None:
        with self._read() as c:
            row = c.execute(sa.select(session).where(session.c.cookie_hash == cookie_hash)).first()
        return None if row is None else _session_record(row._mapping)

    def touch_session(self, session_id: str, at: int) -> None:
        with self._write() as c:
            c.execute(
                sa.update(session)
                .where(session.c.id == session_id, session.c.last_seen < at)
                .values(last_seen=at)
            )

    def revoke_session(self, session_id: str, at: int) -> bool:
        """Ends the session and its refresh tokens; False if it was ended already."""
        with self._write() as c:
            ended = _stamp_once(c, session.c.id == session_id, session.c.revoked_at, at)
            _revoke_refresh(c, refresh_token.c.session_id == session_id, at)
        return bool(ended)

    def revoke_account_sessions(self, account_id: str, at: int) -> list[str]:
        """Ends every live session of the account and their refresh tokens; their ids."""
        with self._write() as c:
            ids = list(
                c.execute(
                    sa.select(session.c.id).where(
                        session.c.account_id == account_id, session.c.revoked_at.is_(None)
                    )
                ).scalars()
            )
            _stamp_once(c, session.c.account_id == account_id, session.c.revoked_at, at)
            owned = sa.select(session.c.id).where(session.c.account_id == account_id)
            _revoke_refresh(c, refresh_token.c.session_id.in_(owned), at)
        return ids

    def purge(self, now: int) -> None:
        """Deletes what can no longer be used, a day after that (an hour for codes): expired
        codes, refresh tokens, sessions, forgotten login failures and join grants."""
        hour, day = 3600 * _SECOND, 24 * 3600 * _SECOND
        with self._write() as c:
            c.execute(sa.delete(code).where(code.c.expires_at < now - hour))
            c.execute(sa.delete(refresh_token).where(refresh_token.c.expires_at < now - day))
            c.execute(
                sa.delete(session).where(
                    session.c.expires_at < now - day,
                    session.c.id.not_in(sa.select(code.c.session_id)),
                    session.c.id.not_in(sa.select(refresh_token.c.session_id)),
                )
            )
            c.execute(sa.delete(login_failure).where(login_failure.c.last_at < now - day))
            c.execute(sa.delete(join_grant).where(join_grant.c.expires_at < now - 7 * day))

    def forget_patient(self, patient_id: str) -> int:
        """GDPR erasure follow-up (Art. 17) after the record core expunged ``patient_id``: the
        patient's accounts with their sessions, codes, tokens and second factor, and the
        patient's join links go; the number of rows deleted."""
        fhir_user = f"Patient/{patient_id}"
        accounts = sa.select(account.c.id).where(account.c.fhir_user == fhir_user)
        sessions = sa.select(session.c.id).where(session.c.account_id.in_(accounts))
        statements = (
            sa.delete(refresh_token).where(
                sa.or_(
                    refresh_token.c.patient == patient_id,
                    refresh_token.c.session_id.in_(sessions),
                )
            ),
            sa.delete(code).where(
                sa.or_(code.c.patient == patient_id, code.c.session_id.in_(sessions))
            ),
            sa.delete(session).where(session.c.account_id.in_(accounts)),
            sa.delete(totp_step).where(totp_step.c.account_id.in_(accounts)),
            sa.delete(account).where(account.c.fhir_user == fhir_user),
            sa.delete(join_grant).where(join_grant.c.subject == fhir_user),
        )
        with self._write() as c:
            return sum(c.execute(statement).rowcount or 0 for statement in statements)

    # --- authorization codes ---

    def insert_code(self, record: CodeRecord) -> None:
        with self._write() as c:
            c.execute(sa.insert(code).values(**_fields(record)))

    def code(self, code_hash: bytes) -> CodeRecord | None:
        with self._read() as c:
            row = c.execute(sa.select(code).where(code.c.code_hash == code_hash)).first()
        return None if row is None else CodeRecord(**{**row._mapping, "code_hash": code_hash})

    def use_code(self, code_hash: bytes, at: int) -> bool:
        """Marks the code used; False if it was used already (a replay or a lost race)."""
        with self._write() as c:
            return _stamp_once(c, code.c.code_hash == code_hash, code.c.used_at, at) == 1

    # --- refresh tokens ---

    def insert_refresh(self, record: RefreshRecord) -> None:
        with self._write() as c:
            c.execute(sa.insert(refresh_token).values(**_fields(record)))

    def refresh(self, token_hash: bytes) -> RefreshRecord | None:
        with self._read() as c:
            row = c.execute(
                sa.select(refresh_token).where(refresh_token.c.token_hash == token_hash)
            ).first()
        return None if row is None else RefreshRecord(**{**row._mapping, "token_hash": token_hash})

    def rotate_refresh(self, old_hash: bytes, at: int, new: RefreshRecord) -> bool:
        """Retires ``old_hash`` and stores ``new`` in one transaction; False (nothing stored) if
        the old token was rotated or revoked meanwhile."""
        with self._write() as c:
            retired = c.execute(
                sa.update(refresh_token)
                .where(
                    refresh_token.c.token_hash == old_hash,
                    refresh_token.c.rotated_at.is_(None),
                    refresh_token.c.revoked_at.is_(None),
                )
                .values(rotated_at=at)
            ).rowcount
            if retired != 1:
                return False
            c.execute(sa.insert(refresh_token).values(**_fields(new)))
            c.execute(
                sa.update(session)
                .where(session.c.id == new.session_id, session.c.last_seen < at)
                .values(last_seen=at)
            )
        return True

    def revoke_grant(self, family_id: str, session_id: str | None, at: int) -> None:
        """Revokes every refresh token of the grant ``family_id`` and, if given, its session."""
        with self._write() as c:
            _revoke_refresh(c, refresh_token.c.family_id == family_id, at)
            if session_id is not None:
                _stamp_once(c, session.c.id == session_id, session.c.revoked_at, at)

    # --- clients ---

    def insert_client(self, record: ClientRecord) -> None:
        try:
            with self._write() as c:
                c.execute(sa.insert(client).values(**_client_row(record)))
        except IntegrityError as exc:
            raise Duplicate(f"client {record.client_id!r} exists already") from exc

    def client(self, client_id: str) -> ClientRecord | None:
        with self._read() as c:
            row = c.execute(sa.select(client).where(client.c.client_id == client_id)).first()
        return None if row is None else _client_record(row)

    def set_client_disabled(self, client_id: str, disabled: bool) -> bool:
        with self._write() as c:
            result = c.execute(
                sa.update(client).where(client.c.client_id == client_id).values(disabled=disabled)
            )
            return bool(result.rowcount == 1)

    def jwks(self, client_id: str) -> Mapping[str, Any] | None:
        """tokens.ClientKeys: the JWKS of an enabled confidential client, else None."""
        record = self.client(client_id)
        if record is None or record.disabled or record.kind is not ClientKind.CONFIDENTIAL:
            return None
        return record.jwks

    # --- signing keys ---

    def signing_keys(self) -> list[SigningKeyRecord]:
        """The current key first, then the previous one (if any)."""
        with self._read() as c:
            rows = c.execute(sa.select(signing_key)).all()
        records = [
            SigningKeyRecord(**{**r._mapping, "sealed_jwk": bytes(r.sealed_jwk)}) for r in rows
        ]
        return sorted(records, key=lambda r: r.state != "current")

    def add_signing_key(self, new: SigningKeyRecord, *, first_only: bool) -> bool:
        """Makes ``new`` the current key: the current one becomes previous, the previous one is
        deleted (its private key is gone for good). With ``first_only``, only if there is no key
        yet (several workers starting at once create one key). False if nothing was done."""
        with self._write() as c:
            if self.dialect == "postgresql":
                c.execute(sa.text("LOCK TABLE auth_signing_key IN EXCLUSIVE MODE"))
            current = c.execute(
                sa.select(signing_key.c.kid).where(signing_key.c.state == "current")
            ).scalar()
            if first_only and current is not None:
                return False
            c.execute(sa.delete(signing_key).where(signing_key.c.state == "previous"))
            c.execute(
                sa.update(signing_key)
                .where(signing_key.c.state == "current")
                .values(state="previous", demoted_at=new.created_at)
            )
            c.execute(sa.insert(signing_key).values(**_fields(new)))
        return True


# --- row conversions ---------------------------------------------------------------------------


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def _stamp_once(c: Connection, condition: Any, column: sa.Column[Any], at: int) -> int:
    """Sets ``column`` to ``at`` on the rows matching ``condition`` where it is still unset (a
    code or link used once, a session or token revoked once); how many rows it set."""
    statement = sa.update(column.table).where(condition, column.is_(None)).values({column: at})
    return int(c.execute(statement).rowcount)


def _revoke_refresh(c: Connection, condition: Any, at: int) -> None:
    _stamp_once(c, condition, refresh_token.c.revoked_at, at)


def _account_row(record: AccountRecord) -> dict[str, Any]:
    row = _fields(record)
    row["roles"] = " ".join(sorted(r.value for r in record.roles))
    return row


def _account_record(row: Any) -> AccountRecord:
    values = dict(row._mapping) if isinstance(row, Row) else dict(row)
    values["roles"] = frozenset(Role(r) for r in values["roles"].split())
    if values["totp_secret"] is not None:
        values["totp_secret"] = bytes(values["totp_secret"])
    return AccountRecord(**values)


def _session_row(record: SessionRecord) -> dict[str, Any]:
    return _fields(record)


def _session_record(mapping: Any) -> SessionRecord:
    values = {col.name: mapping[col] for col in session.c}
    if values["cookie_hash"] is not None:
        values["cookie_hash"] = bytes(values["cookie_hash"])
    return SessionRecord(**values)


def _client_row(record: ClientRecord) -> dict[str, Any]:
    row = _fields(record)
    row["kind"] = record.kind.value
    row["redirect_uris"] = json.dumps(list(record.redirect_uris))
    row["jwks"] = None if record.jwks is None else json.dumps(record.jwks)
    return row


def _client_record(row: Row[Any]) -> ClientRecord:
    values = dict(row._mapping)
    values["kind"] = ClientKind(values["kind"])
    values["redirect_uris"] = tuple(json.loads(values["redirect_uris"]))
    values["jwks"] = None if values["jwks"] is None else json.loads(values["jwks"])
    return ClientRecord(**values)
