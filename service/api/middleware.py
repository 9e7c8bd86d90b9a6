"""Pure ASGI middleware around every HTTP request: in-flight count, latency metrics, draining, access log.

Pure ASGI rather than BaseHTTPMiddleware, so streaming bodies and client disconnects pass through
untouched. The route label is the route's template (`/v1/models/{name}/log-prob`), never the raw path,
and the model label is a served model's name or "" (unknown names cannot grow the label set).
"""

from __future__ import annotations

import asyncio
import logging
import time

from . import metrics
from .errors import APIError, RequestTimeout, ShuttingDown, error_response

log = logging.getLogger("made.access")
errors_log = logging.getLogger("made.api")
ALWAYS_OPEN = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")


class RequestTracking:
    """Wraps an ASGI app (FastAPI's routes): the status is learned from the response as it is sent.
    `respond` tracks a handler that returns its Response (the direct routes) the same way, more cheaply."""

    def __init__(self, app=None, access_log: bool = False):
        self.app = app  # what __call__ wraps (none for a tracker that only `respond`s)
        self.access_log = access_log
        # (route, method, model, status) -> its latency series: labels() per request costs more than
        # observing (the label values are bounded: templates, served models, statuses)
        self._durations: dict[tuple[str, str, str, int], object] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        engine = getattr(scope["app"].state, "engine", None) if "app" in scope else None
        if engine is not None and engine.draining and scope["path"] not in ALWAYS_OPEN:
            return await _shutting_down(scope["path"])(scope, receive, send)
        status = 500
        responded = False

        async def send_wrapper(message):
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        started, receive = self._begin(engine, receive)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if not responded:
                await _unhandled(scope)(scope, receive, send_wrapper)
            else:
                _unhandled(scope)
        finally:
            self._end(scope, engine, status, started)

    async def respond(self, scope, receive, send, handler) -> None:
        """`handler(scope, receive, engine)` returns the Response to send: tracked as __call__ tracks an
        app, without wrapping `send`, since the status is the response's own. For routes that never stay
        open while draining."""
        engine = getattr(scope["app"].state, "engine", None)
        if engine is not None and engine.draining:
            return await _shutting_down(scope["path"])(scope, receive, send)
        status = 500
        response = None
        started, receive = self._begin(engine, receive)
        try:
            response = await handler(scope, receive, engine)
            status = response.status_code
            await response(scope, receive, send)
        except Exception:
            if response is None:
                await _unhandled(scope)(scope, receive, send)
            else:  # failed while sending: nothing more can be sent
                _unhandled(scope)
        finally:
            self._end(scope, engine, status, started)

    @staticmethod
    def _begin(engine, receive):
        """(the start time, the body's `receive`, timed): the request is counted in flight."""
        metrics.HTTP_IN_FLIGHT.add(1)
        if engine is None:
            return time.perf_counter(), receive
        engine.in_flight += 1
        return time.perf_counter(), _read_timeout(receive, engine.settings.read_timeout_s)

    def _end(self, scope, engine, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.HTTP_IN_FLIGHT.add(-1)
        if engine is not None:
            engine.in_flight -= 1
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        name = (scope.get("path_params") or {}).get("name", "")
        model = name if engine is not None and name in engine.registry.entries else ""
        key = (template, scope["method"], model, status)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = metrics.REQUEST_DURATION.labels(
                route=template, method=scope["method"], model=model, status=str(status)
            )
        series.observe(elapsed)
        if self.access_log:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "seconds": round(elapsed, 6),
                },
            )


def _shutting_down(path: str):
    """The answer to every request but the health checks and /metrics while draining (before routing: no
    model label)."""
    metrics.REJECTIONS.labels(model="", reason=ShuttingDown.code).inc()
    return error_response(
        path,
        ShuttingDown.status,
        ShuttingDown.code,
        "the server is shutting down; retry elsewhere",
        headers={"Connection": "close", "Retry-After": "1"},
    )


def _unhandled(scope):
    """A bug, not a user error: logged once (called in the except block), answered as JSON if nothing was
    sent yet, and the server goes on."""
    errors_log.exception("unhandled error", extra={"method": scope["method"], "path": scope["path"]})
    metrics.ERRORS.labels(model="", reason=APIError.code).inc()
    return error_response(scope["path"], APIError.status, APIError.code, "internal error; see the server log")


def _read_timeout(receive, seconds: float):
    """`receive` that raises RequestTimeout (408, connection closed) when the body pauses over `seconds`:
    a stalled upload must not hold its connection, a compute slot or the drain on SIGTERM. Once the body
    is complete, receive only waits for a disconnect, which may take as long as the response does.

    A timer on every read costs the event loop more than a small request's read itself, so none is set
    while uvicorn's request cycle (the `receive` it hands over is a method of it) already holds the whole
    body: then receive cannot wait for body bytes, and when it does so already as the request begins,
    `receive` is returned as it is. Under any other server the timer is always set."""
    cycle = getattr(receive, "__self__", None)
    if getattr(cycle, "more_body", True) is False:
        return receive
    body_complete = False

    async def timed_receive():
        nonlocal body_complete
        if body_complete or getattr(cycle, "more_body", True) is False:
            return await receive()
        try:
            async with asyncio.timeout(seconds):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(f"request body paused for more than {seconds} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_complete = True
        return message

    return timed_receive
