"""Domain errors and the one table that turns them into HTTP responses.

Every error is JSON of one shape, `{"error": {"code": ..., "message": ..., <details>}}`, where details
name the row and column of a bad value, the limit that was exceeded, and so on. Routes raise these;
they never build error responses themselves. Under /v2 the Open Inference Protocol's own shape,
`{"error": "<message>"}`, is used instead, so KServe/Triton clients read it unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("made.api")


class APIError(Exception):
    """500: a bug, not a user error (the base of the table: every subclass below is one row of it)."""

    status = 500
    code = "internal_error"
    server_fault = True  # counted under made_errors_total; False: a refused request, made_rejections_total
    # Starlette's own HTTPException with this status (a 404 for no route, a 405, a body it cannot read)
    # is answered with this class's code.
    answers_http_status = False

    def __init__(self, message: str, headers: dict[str, str] | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class InvalidInput(APIError):
    """422: the request is well-formed but its values cannot be scored (shape, NaN, support, limits)."""

    status, code = 422, "invalid_input"
    server_fault, answers_http_status = False, True


class MalformedRequest(APIError):
    """400: the body cannot be parsed (bad JSON, a broken .npy)."""

    status, code = 400, "malformed_request"
    server_fault, answers_http_status = False, True


class Unauthorized(APIError):
    """401: an admin route without the right bearer token."""

    status, code = 401, "unauthorized"
    server_fault, answers_http_status = False, True


class RequestTimeout(APIError):
    """408: the request's body paused longer than read_timeout_s (or its head took longer); the connection
    is closed."""

    status, code = 408, "request_timeout"
    server_fault = False

    def __init__(self, message: str):
        super().__init__(message, headers={"Connection": "close"})


class HeaderTooLarge(APIError):
    """431: the request line and headers are over max_header_bytes; the connection is closed."""

    status, code = 431, "header_too_large"
    server_fault = False


class ClientDisconnected(APIError):
    """499 (nginx's code; no answer reaches the client): the client went away before its request was
    read. Its own reason, never a server error."""

    status, code = 499, "client_disconnected"
    server_fault = False


class ModelNotFound(APIError):
    """404: no such model in the repository."""

    status, code = 404, "model_not_found"
    server_fault = False


class NotAcceptable(APIError):
    """406: the Accept header asks for a representation this route cannot give."""

    status, code = 406, "not_acceptable"
    server_fault = False


class PayloadTooLarge(APIError):
    """413: the body is over max_body_bytes."""

    status, code = 413, "payload_too_large"
    server_fault, answers_http_status = False, True


class UnsupportedMediaType(APIError):
    """415: a Content-Type this route does not read."""

    status, code = 415, "unsupported_media_type"
    server_fault, answers_http_status = False, True


class RouteNotFound(APIError):
    """404: no route for this path (Starlette's own 404)."""

    status, code = 404, "not_found"
    server_fault, answers_http_status = False, True


class MethodNotAllowed(APIError):
    """405: the route exists but not for this HTTP method."""

    status, code = 405, "method_not_allowed"
    server_fault, answers_http_status = False, True


class NotCalibrated(APIError):
    """409: anomaly scoring needs calibration that this model version does not have."""

    status, code = 409, "not_calibrated"
    server_fault = False


class ComputeFailed(APIError):
    """500: the model failed on rows that passed validation (reported, never hidden)."""

    status, code = 500, "compute_failed"


class ModelNotReady(APIError):
    """503: the model exists but failed to load or is still loading."""

    status, code = 503, "model_not_ready"
    server_fault = False


class QueueFull(APIError):
    """503 with Retry-After: the model's queue is at max_queue_requests."""

    status, code = 503, "queue_full"
    server_fault = False


class OutOfMemory(APIError):
    """503 with Retry-After: the device ran out of memory even on the smallest split of the batch."""

    status, code = 503, "out_of_memory"


class ShuttingDown(APIError):
    """503: the server is draining after SIGTERM and takes no new work."""

    status, code = 503, "shutting_down"
    server_fault = False


class DeadlineExceeded(APIError):
    """504: the request's deadline passed while it waited in the queue; it never reached the model."""

    status, code = 504, "deadline_exceeded"
    server_fault = False


def error_response(
    path: str,
    status: int,
    code: str,
    message: str,
    details: dict | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if path.startswith("/v2"):
        body = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, **(details or {})}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_classes() -> list[type[APIError]]:
    """Every row of the table: APIError and all its subclasses."""
    found, pending = [], [APIError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


SERVER_FAULTS = frozenset(cls.code for cls in error_classes() if cls.server_fault)
HTTP_CODES = {cls.status: cls.code for cls in error_classes() if cls.answers_http_status}


def responses(*errors: type[APIError]) -> dict[int, dict]:
    """A route's `responses=` for the errors it may answer with: per status, the error body and the
    codes it can carry, from the classes' own docstrings."""
    from .schemas import ErrorResponse

    by_status: dict[int, list[str]] = {}
    for cls in errors:
        by_status.setdefault(cls.status, []).append(f"`{cls.code}`: {(cls.__doc__ or '').split(': ', 1)[-1]}")
    return {
        status: {"model": ErrorResponse, "description": "; ".join(lines)}
        for status, lines in sorted(by_status.items())
    }


def v2_responses(*errors: type[APIError]) -> dict[int, dict]:
    """responses() for the /v2 routes, whose error body is the protocol's {"error": "<message>"}."""
    from .schemas import V2ErrorResponse

    return {status: entry | {"model": V2ErrorResponse} for status, entry in responses(*errors).items()}


def count(request: Request, code: str) -> None:
    """Every error answer is counted once: a model's fault under made_errors_total, a refused request
    under made_rejections_total, by reason (the error code)."""
    from . import metrics

    name = request.path_params.get("name", "") if hasattr(request, "path_params") else ""
    engine = getattr(request.app.state, "engine", None)
    model = name if engine is not None and name in engine.registry.entries else ""
    counter = metrics.ERRORS if code in SERVER_FAULTS else metrics.REJECTIONS
    counter.labels(model=model, reason=code).inc()


def api_error_response(request: Request, exc: APIError) -> Response:
    """The answer to an APIError, counted: FastAPI's exception handler and the direct routes both use it."""
    count(request, exc.code)
    return error_response(request.url.path, exc.status, exc.code, exc.message, exc.details, exc.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return api_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            loc = err.get("loc", ())
            if loc[:1] == ("header",):  # named as the client wrote it: X-Request-Timeout
                loc = ("-".join(part.capitalize() for part in str(loc[-1]).split("-")),)
            where = ".".join(str(p) for p in loc if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        count(request, InvalidInput.code)
        return error_response(request.url.path, InvalidInput.status, InvalidInput.code, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        count(request, code)
        return error_response(request.url.path, exc.status_code, code, message, headers=exc.headers)
