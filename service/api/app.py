"""The FastAPI application factory. Settings are read here, at start-up, never at import time."""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__, logs
from ..settings import Settings
from . import errors
from .direct import DirectRoutes
from .engine import Engine
from .middleware import RequestTracking
from .routes import health, inference, kserve, models

DESCRIPTION = """Exact log-likelihoods, anomaly scores and samples from MADE density models.

Errors are JSON: `{"error": {"code", "message", ...details}}` (under /v2: `{"error": "<message>"}`).
Limits are in the server's settings (`MADE_*` environment variables); see docs/api.md."""


class Service(FastAPI):
    """FastAPI, with the direct routes (direct.py) answered ahead of its own layers; they are tracked by
    the same RequestTracking as the routes FastAPI answers."""

    def __init__(self, *, routers, access_log: bool, **kwargs):
        super().__init__(**kwargs)
        for router in routers:
            self.include_router(router)
        self.direct_routes = DirectRoutes(routers)
        self.direct_tracking = RequestTracking(access_log=access_log)
        self.add_middleware(RequestTracking, access_log=access_log)

    async def __call__(self, scope, receive, send) -> None:
        if self.direct_routes.match(scope):
            scope["app"] = self  # as Starlette sets it: Request.app, and the engine, are found through it
            return await self.direct_tracking.respond(scope, receive, send, self.direct_routes.answer)
        await super().__call__(scope, receive, send)


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

    app = Service(
        title="made-service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        routers=(health.router, models.router, inference.router, kserve.router),
        access_log=settings.access_log,
    )
    app.state.settings = settings
    errors.install(app)
    _openapi_with_served_examples(app, settings)
    return app


def _openapi_with_served_examples(app: FastAPI, settings: Settings) -> None:
    """/openapi.json: FastAPI's document with two fixes. Routes that read their own bodies document them
    with pydantic's schema (deps.body_docs), whose nested models sit in a local "$defs" while its $refs
    point at #/components/schemas: they are moved there, so every $ref resolves (tools build `sample` and
    `infer` bodies from them). And the inference routes get examples that are valid for the models served
    now (a row of D values for each), rebuilt when the served versions change."""
    generate = app.openapi
    built: dict = {}

    def base() -> dict:
        if "base" not in built:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    for media in operation.get("requestBody", {}).get("content", {}).values():
                        for name, definition in media.get("schema", {}).pop("$defs", {}).items():
                            components.setdefault(name, definition)
            built["base"] = schema
        return built["base"]

    def openapi() -> dict:
        engine = getattr(app.state, "engine", None)
        served = (
            [e.current for e in engine.registry.entries.values() if e.current is not None] if engine else []
        )
        signature = tuple((m.name, m.version) for m in served)
        if built.get("signature") != signature or app.openapi_schema is None:
            app.openapi_schema = _with_examples(copy.deepcopy(base()), served, settings.min_drift_rows)
            built["signature"] = signature
        return app.openapi_schema

    app.openapi = openapi


EXAMPLE_OPERATIONS = {
    "/v1/models/{name}/log-prob": "v1",
    "/v1/models/{name}/anomaly": "v1",
    "/v1/models/{name}/drift": "v1",
    "/v2/models/{name}/infer": "v2",
    "/v2/models/{name}/versions/{version}/infer": "v2",
}
CALIBRATED_ONLY = ("/v1/models/{name}/anomaly", "/v1/models/{name}/drift")


def _with_examples(schema: dict, served: list, drift_rows: int) -> dict:
    """Named examples, one per served model: the path's `name` and a body of rows of zeros (in the support
    of every likelihood: one row, or the `drift_rows` a drift check needs), so each example is an answerable
    request for the model it names."""
    if not served:
        return schema
    for path, kind in EXAMPLE_OPERATIONS.items():
        operation = schema["paths"].get(path, {}).get("post")
        if operation is None:
            continue
        models = [m for m in served if path not in CALIBRATED_ONLY or m.calibration is not None]
        row = {m.name: [0] * m.config.n_dims for m in models}
        count = drift_rows if path.endswith("drift") else 1
        bodies = {
            m.name: {"inputs": [row[m.name]] * count}
            if kind == "v1"
            else {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, m.config.n_dims], "data": row[m.name]}
                ]
            }
            for m in models
        }
        operation["requestBody"]["content"]["application/json"]["examples"] = {
            m.name: {"summary": f"one row for {m.name} (D={m.config.n_dims})", "value": bodies[m.name]}
            for m in models
        }
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "name":
                parameter["examples"] = {m.name: {"value": m.name} for m in models}
            elif parameter["name"] == "version":
                parameter["examples"] = {m.name: {"value": str(m.version)} for m in models}
    return schema
