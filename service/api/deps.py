"""Reusable route dependencies: the engine, the request's deadline, admin auth, and body parsing."""

from __future__ import annotations

import functools
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ..settings import Settings
from . import codecs
from .engine import Engine
from .errors import InvalidInput, Unauthorized
from .schemas import REFUSED

# A deadline shorter than this could not be met by any request that waits for a batch (the batching
# delay alone is 2 ms by default): it is refused (422) rather than answered with a certain 504.
MIN_REQUEST_TIMEOUT_S = 0.01
RequestTimeout = Annotated[float, Field(ge=MIN_REQUEST_TIMEOUT_S)]  # X-Request-Timeout, in seconds
_REQUEST_TIMEOUT = TypeAdapter(RequestTimeout)


async def get_engine(request: Request) -> Engine:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def request_deadline(
    engine: EngineDep,
    x_request_timeout: Annotated[
        RequestTimeout | None,
        Header(
            description="seconds this request may wait in the queue (at least 0.01); lowers the server's "
            "default",
        ),
    ] = None,
) -> float:
    return engine.deadline(x_request_timeout)


DeadlineDep = Annotated[float, Depends(request_deadline)]


def header_deadline(engine: Engine, header: str | None) -> float:
    """request_deadline for the direct routes (direct.py), from the raw header: the same type checks it,
    and a bad value gets the message FastAPI's validation gives (errors.install)."""
    if header is None:
        return engine.deadline(None)
    try:
        return engine.deadline(_REQUEST_TIMEOUT.validate_python(header, strict=False))
    except ValidationError as exc:
        raise InvalidInput(f"X-Request-Timeout: {exc.errors()[0]['msg']}") from None


def has_admin_token(request: Request, engine: Engine) -> bool:
    """The request carries the configured admin token (never true while none is configured)."""
    token = engine.settings.admin_token
    if token is None:
        return False
    # "Bearer" is an auth scheme, and schemes are case-insensitive (RFC 7235 section 2.1); the token is not.
    scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    )


async def is_admin(request: Request, engine: EngineDep) -> bool:
    return has_admin_token(request, engine)


AdminDep = Annotated[bool, Depends(is_admin)]


async def require_admin(request: Request, engine: EngineDep) -> None:
    """Admin routes: open while no admin token is configured, else only with it."""
    if engine.settings.admin_token is not None and not has_admin_token(request, engine):
        raise Unauthorized(
            "this admin route needs 'Authorization: Bearer <admin token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def validate_options(
    model: type[BaseModel], values: dict, settings: Settings | None = None, *, strict: bool = True
):
    """The options, validated by their schema; `settings` (the validation context) for limits that are
    server settings, such as max_sample_n. From JSON they are strict, as documented: `"masks": "1"` or
    `"per_dimension": "yes"` is refused, not coerced. A query string has only text, so it is not
    (`strict=False`: `?masks=1&per_dimension=true`)."""
    try:
        return model.model_validate(values, context=settings, strict=strict)
    except ValidationError as exc:
        err = exc.errors()[0]
        # pydantic puts the member of a union into the location ("observed.Observed.indices.0"): drop it
        parts = [str(p) for p in err["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]
        where = ".".join(parts) or "body"
        if err["type"] == REFUSED:  # the schema's own refusal: its message, and its details (a limit)
            details = {k: v for k, v in err["ctx"].items() if k != "message"}
            raise InvalidInput(err["msg"], field=where, **details) from None
        raise InvalidInput(f"{where}: {err['msg']}", field=where) from None


def json_options(model: type[BaseModel], values: dict):
    """The options of a JSON body (its members besides `inputs`); a body that gives none gets the defaults,
    validated once (routes read options, never change them)."""
    return validate_options(model, values) if values else _default_options(model)


@functools.cache
def _default_options(model: type[BaseModel]):
    return validate_options(model, {})


async def read_rows_and_options(request: Request, engine: Engine, options_model: type[BaseModel]):
    """(options, rows) from a JSON body, or from an .npy body with the options in the query string."""
    kind = codecs.require_content_type(request, codecs.JSON, codecs.NPY)
    body = await codecs.read_body(request, engine.settings.max_body_bytes)
    if kind == codecs.NPY:
        options = validate_options(options_model, dict(request.query_params), strict=False)
        return options, codecs.rows_from_npy(body)
    numeric = codecs.numeric_rows_from_json(body)
    if numeric is not None:
        rows, others = numeric
        return json_options(options_model, others), rows
    obj = codecs.parse_json(body)
    if "inputs" not in obj:
        raise InvalidInput("the body needs 'inputs': a list of rows", field="inputs")
    options = json_options(options_model, {k: v for k, v in obj.items() if k != "inputs"})
    return options, codecs.rows_from_json(obj["inputs"])


def body_docs(model: type[BaseModel], npy: bool = False, query: type[BaseModel] | None = None) -> dict:
    """openapi_extra for routes that parse their body themselves: the JSON schema, and .npy if accepted."""
    content = {codecs.JSON: {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}
    if npy:
        content[codecs.NPY] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "an (N, D) .npy array; options in the query string",
            }
        }
    extra: dict = {"requestBody": {"required": True, "content": content}}
    if query is not None:
        extra["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": f"with an .npy body: {field.description or name}",
            }
            for name, field in query.model_fields.items()
        ]
    return extra
