"""The app factory: one FastAPI application with the record core at /fhir, health and readiness.

Every response carries the security headers (security_headers.py); uvicorn's request log lines
never hold a query string, since FHIR searches carry PHI there (OWASP ASVS 5.0 14.2.1).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from fhir_server.context import Settings
from fhir_server.core import RecordCore
from medikus import __version__
from medikus.config import Config
from medikus.security_headers import ASGIApp, SecurityHeaders


class _App(FastAPI):
    """FastAPI with its whole middleware stack inside the security headers: the error middleware
    sits outside all user middleware, so only this way do 500 responses get the headers too."""

    def build_middleware_stack(self) -> ASGIApp:
        docs = (self.docs_url, self.swagger_ui_oauth2_redirect_url)
        return SecurityHeaders(
            super().build_middleware_stack(), docs_paths=[p for p in docs if p is not None]
        )


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


def create_app(config: Config | None = None, record: RecordCore | None = None) -> FastAPI:
    """Builds the application; ``record`` may be injected (tests), else opened from ``config``."""
    config = config or Config()
    if record is None:
        settings = Settings(
            max_body_bytes=config.max_body_bytes, enforce_references=config.enforce_references
        )
        record = RecordCore.open(
            config.resolved_database_url(),
            settings=settings,
            migrate=config.migrate,
            pool_size=config.pool_size,
            version=__version__,
        )
        record.warm_up()
    core = record

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Every worker runs a dispatcher; one per database delivers, the others stand by.
        core.start_notifications()
        yield
        await run_in_threadpool(core.stop_notifications)
        core.close()

    _redact_server_log()
    # ReDoc would need Google Fonts and inline styles in its CSP; Swagger UI at /docs suffices.
    app = _App(title="Medi-KUS", version=__version__, lifespan=lifespan, redoc_url=None)
    core.install(app)

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
    return app
