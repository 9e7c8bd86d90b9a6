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
    status = 500
    code = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class InvalidInput(APIError):
    """422: the request is well-formed but its values cannot be scored (shape, NaN, support, limits)."""

    status, code = 422, "invalid_input"


class MalformedRequest(APIError):
    """400: the body cannot be parsed (bad JSON, a broken .npy)."""

    status, code = 400, "malformed_request"


class Unauthorized(APIError):
    """401: an admin route without the right bearer token."""

    status, code = 401, "unauthorized"


class ModelNotFound(APIError):
    """404: no such model in the repository."""

    status, code = 404, "model_not_found"


class NotAcceptable(APIError):
    """406: the Accept header asks for a representation this route cannot give."""

    status, code = 406, "not_acceptable"


class PayloadTooLarge(APIError):
    """413: the body is over max_body_bytes."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(APIError):
    """415: a Content-Type this route does not read."""

    status, code = 415, "unsupported_media_type"


class ComputeFailed(APIError):
    """500: the model failed on rows that passed validation (reported, never hidden)."""

    status, code = 500, "compute_failed"


class ModelNotReady(APIError):
    """503: the model exists but failed to load or is still loading."""

    status, code = 503, "model_not_ready"


class QueueFull(APIError):
    """503 with Retry-After: the model's queue is at max_queue_requests."""

    status, code = 503, "queue_full"


class OutOfMemory(APIError):
    """503 with Retry-After: the device ran out of memory even on the smallest split of the batch."""

    status, code = 503, "out_of_memory"


class ShuttingDown(APIError):
    """503: the server is draining after SIGTERM and takes no new work."""

    status, code = 503, "shutting_down"


class DeadlineExceeded(APIError):
    """504: the request's deadline passed while it waited in the queue; it never reached the model."""

    status, code = 504, "deadline_exceeded"


def error_response(path: str, status: int, code: str, message: str, details: dict | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    if path.startswith("/v2"):
        body = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, **(details or {})}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


SERVER_FAULTS = ("compute_failed", "out_of_memory", "internal_error")  # counted as errors; the rest as rejections


def count(request: Request, code: str) -> None:
    """Every error answer is counted once: a model's fault under made_errors_total, a refused request
    under made_rejections_total, by reason (the error code)."""
    from . import metrics

    name = request.path_params.get("name", "") if hasattr(request, "path_params") else ""
    engine = getattr(request.app.state, "engine", None)
    model = name if engine is not None and name in engine.registry.entries else ""
    counter = metrics.ERRORS if code in SERVER_FAULTS else metrics.REJECTIONS
    counter.labels(model=model, reason=code).inc()


HTTP_CODES = {400: "malformed_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input"}


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        count(request, exc.code)
        return error_response(request.url.path, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        count(request, "invalid_input")
        return error_response(request.url.path, 422, "invalid_input", "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        count(request, code)
        return error_response(request.url.path, exc.status_code, code, message, headers=exc.headers)
