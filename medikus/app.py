"""The app factory: one FastAPI application with the record core at /fhir, health and readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from fhir_server.context import Settings
from fhir_server.core import RecordCore
from medikus import __version__
from medikus.config import Config


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

    app = FastAPI(title="Medi-KUS", version=__version__, lifespan=lifespan)
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
