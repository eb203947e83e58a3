"""The app factory: one FastAPI application with the record core at /fhir, health and readiness.

Every response carries the security headers (security_headers.py) and every client has rate
limits (rate_limit.py); uvicorn's request log lines never hold a query string, since FHIR searches
carry PHI there (OWASP ASVS 5.0 14.2.1).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from compliance._http import install_auth
from compliance.auth import AuthServices
from compliance.auth_events import EventSink
from compliance.identity import AuthenticationFailed
from compliance.principal import Principal, Unauthenticated
from fhir_server.context import Settings
from fhir_server.core import Authenticate, RecordCore
from medikus import __version__
from medikus.auth_setup import keyring as master_keys
from medikus.auth_setup import open_auth
from medikus.config import Config
from medikus.rate_limit import Clock, MemoryBuckets, RateLimit, RedisBuckets
from medikus.security_headers import ASGIApp, SecurityHeaders
from medikus.video_setup import (
    EncounterRecorder,
    access,
    appointment_participants,
    authenticator,
    build_hub,
)
from video._http import install_video
from video.hub import Hub


class _App(FastAPI):
    """FastAPI with its whole middleware stack inside the security headers: the error middleware
    sits outside all user middleware, so only this way do 500 responses get the headers too.
    ``limit`` (the rate limiter) wraps the stack just inside them: a 429 carries the headers."""

    def __init__(self, *, limit: Callable[[ASGIApp], ASGIApp] | None = None, **kwargs: Any):
        self._limit = limit
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        docs = (self.docs_url, self.swagger_ui_oauth2_redirect_url)
        stack = super().build_middleware_stack()
        if self._limit is not None:
            stack = self._limit(stack)
        return SecurityHeaders(stack, docs_paths=[p for p in docs if p is not None])


class _NoQueryInLog(logging.Filter):
    """Cuts the query string from the request paths uvicorn logs (access lines, websocket
    handshakes); the server logs at level warning, this holds when someone turns them on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_query(a) for a in record.args)
        return True


def _without_query(arg: object) -> object:
    if isinstance(arg, str) and arg.startswith("/") and "?" in arg:
        return arg.partition("?")[0] + "?[redacted]"
    return arg


def _redact_server_log() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoQueryInLog) for f in logger.filters):
            logger.addFilter(_NoQueryInLog())


def _rate_limit(config: Config, clock: Clock | None) -> Callable[[ASGIApp], ASGIApp] | None:
    if not config.rate_limit:
        return None
    buckets = RedisBuckets(config.redis_url) if config.redis_url else MemoryBuckets()
    return partial(RateLimit, buckets=buckets, clock=clock)


_security = logging.getLogger("medikus.security")


def _security_log(kind: str, details: Mapping[str, Any]) -> None:
    """Logins, logouts, token refusals… (OWASP ASVS 16.3.1); the details hold no secrets."""
    _security.info("%s %s", kind, dict(details))


def _security_sink(core: RecordCore) -> EventSink:
    """The sink of the auth services' security events: the log, and an AuditEvent in the
    tamper-evident trail (queued: the sink is called inside the login or token request)."""

    def sink(kind: str, details: Mapping[str, str]) -> None:
        _security_log(kind, details)
        core.security_event(kind, details)

    return sink


def _authenticator(auth: AuthServices) -> Authenticate:
    """The bearer-token check of the FHIR API, in the record core's terms."""

    def authenticate(authorization: str | None, address: str | None) -> Principal:
        try:
            return auth.authenticate(authorization, address)
        except AuthenticationFailed as failure:
            raise Unauthenticated(failure.description, failure.error or "") from failure

    return authenticate


def create_app(
    config: Config | None = None,
    record: RecordCore | None = None,
    *,
    clock: Clock | None = None,
    auth: AuthServices | None = None,
) -> FastAPI:
    """Builds the application; ``record`` may be injected (tests), else opened from ``config``;
    ``clock`` (epoch microseconds) is the rate limits' time, the system clock by default.
    ``auth`` (identity and the SMART authorization server) may be injected, else it is opened
    from ``config`` with the record core (on the same database and master keys)."""
    config = config or Config()
    if record is None:
        settings = Settings(
            max_body_bytes=config.max_body_bytes,
            enforce_references=config.enforce_references,
            allow_private_endpoints=config.allow_private_endpoints,
        )
        record = RecordCore.open(
            config.resolved_database_url(),
            settings=settings,
            migrate=config.migrate,
            pool_size=config.pool_size,
            version=__version__,
            # Always encrypted at rest (fhir_server/encryption.py): no keys, no start.
            keyring=master_keys(config),
            audit=True,
        )
        record.warm_up()
        auth = auth or open_auth(config)
    core = record
    hub: Hub | None = None  # video signalling (with identity only)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Every worker runs a dispatcher and an audit chainer; one of each per database works,
        # the others stand by.
        core.start_notifications()
        core.start_audit()
        yield
        await run_in_threadpool(core.stop_notifications)
        await run_in_threadpool(core.stop_audit)
        core.close()
        if hub is not None:
            await hub.bus.close()
        if auth is not None:
            auth.close()

    _redact_server_log()
    # ReDoc would need Google Fonts and inline styles in its CSP; Swagger UI at /docs suffices.
    app = _App(
        title="Medi-KUS",
        version=__version__,
        lifespan=lifespan,
        redoc_url=None,
        limit=_rate_limit(config, clock),
    )
    if auth is not None:
        auth.events.connect(_security_sink(core))
        install_auth(app, auth)  # first: its /fhir/.well-known route precedes the FHIR routes
        core.install(app, authenticate=_authenticator(auth))
        hub = build_hub(config, EncounterRecorder(core))
        allowed = access(appointment_participants(core))
        install_video(app, hub, authenticator(auth), allowed)
    else:
        core.install(app)  # an injected record core without identity: tests acting as the system

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        try:
            await run_in_threadpool(core.ready)
        except Exception:  # any failure means not ready; the reason is in the log
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ready", "database": "ok"})

    app.state.record = core
    app.state.auth = auth
    _mount_web_apps(app)
    return app


# The web apps (frontend/, built by `make setup` into frontend/dist), when they are built.
WEB_APPS = Path(__file__).resolve().parents[1] / "frontend" / "dist"


def _mount_web_apps(app: FastAPI) -> None:
    if WEB_APPS.is_dir():
        app.mount("/app", StaticFiles(directory=WEB_APPS, html=True), name="app")
