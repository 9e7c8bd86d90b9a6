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
    _hoist_body_schema_definitions(app)
    return app


def _hoist_body_schema_definitions(app: FastAPI) -> None:
    """Routes that read their own bodies document them with pydantic's schema (deps.body_docs), whose
    nested models sit in a local "$defs" while its $refs point at #/components/schemas: move them there,
    so every $ref of /openapi.json resolves (tools build `sample` and `infer` bodies from them)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    for media in operation.get("requestBody", {}).get("content", {}).values():
                        for name, definition in media.get("schema", {}).pop("$defs", {}).items():
                            components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
