"""The FastAPI application factory. Settings are read here, at start-up, never at import time."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__, logs
from ..settings import Settings
from . import errors
from .engine import Engine
from .middleware import RequestTracking
from .routes import health, inference, kserve, models

DESCRIPTION = """Exact log-likelihoods, anomaly scores and samples from MADE density models.

Errors are JSON: `{"error": {"code", "message", ...details}}` (under /v2: `{"error": "<message>"}`).
Limits are in the server's settings (`MADE_*` environment variables); see docs/api.md."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = Engine(settings)
        app.state.engine = engine
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="made-service", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    errors.install(app)
    for router in (health.router, models.router, inference.router, kserve.router):
        app.include_router(router)
    app.add_middleware(RequestTracking, access_log=settings.access_log)
    return app
