"""The inference routes without the framework's per-request layers.

FastAPI declares every route: it builds the OpenAPI document and routes and validates everything else. For
the POST inference routes its layers cost more than the model does at small requests. A profile under 64
clients x 1-row log-prob requests put about half of the event loop's core in routing over every route,
dependency solving and the exception and exit-stack layers, against 7% in the route function itself.

So the routes marked `@direct` are answered before FastAPI's layers (app.Service), inside the same request
tracking as every other route. A request's path is matched by its segments; the route function gets the
arguments FastAPI would give it (path parameters, the Request, the engine, the deadline from
X-Request-Timeout), and it is the same function. An APIError becomes the same response it gets under
FastAPI (errors.api_error_response). Every other request goes to FastAPI unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .deps import header_deadline

Endpoint = Callable[..., Awaitable[Response]]
# what a direct route function may ask for, besides its path parameters
GIVEN = frozenset({"request", "engine", "deadline"})


def direct(endpoint: Endpoint) -> Endpoint:
    """Marks a route function to be called by DirectRoutes. Its parameters must be its path parameters and
    any of `request`, `engine` and `deadline` (what DirectRoutes gives; checked when the table is built)."""
    endpoint.direct = True
    return endpoint


@dataclass(frozen=True)
class DirectRoute:
    path: str  # the template as declared (`/v1/models/{name}/log-prob`): the metrics' route label too
    method: str
    endpoint: Endpoint
    segments: tuple[str | None, ...]  # the path split at "/", None where a path parameter goes
    params: tuple[str, ...]  # the path parameters' names, in order
    wants: frozenset[str]  # which of GIVEN the function takes

    @classmethod
    def of(cls, route: APIRoute) -> DirectRoute:
        (method,) = route.methods
        segments = tuple(None if s.startswith("{") else s for s in route.path.split("/"))
        params = tuple(s.strip("{}") for s in route.path.split("/") if s.startswith("{"))
        taken = set(inspect.signature(route.endpoint).parameters)
        if not taken <= GIVEN | set(params) or route.dependencies:
            raise TypeError(
                f"{route.path}: a direct route takes only {sorted(GIVEN)} and its path parameters"
            )
        if segments[-1] is None:  # DirectRoutes looks routes up by their last segment
            raise TypeError(f"{route.path}: a direct route's path ends in a literal segment")
        return cls(route.path, method, route.endpoint, segments, params, frozenset(taken & GIVEN))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """The path parameters, if `parts` (a path split at "/") is this route's path."""
        if len(parts) != len(self.segments):
            return None
        values = []
        for part, segment in zip(parts, self.segments, strict=True):
            if segment is None:
                if not part:  # a parameter is never empty, as in Starlette's `{name}`
                    return None
                values.append(part)
            elif part != segment:
                return None
        return dict(zip(self.params, values, strict=True))


class DirectRoutes:
    """The `@direct` routes of `routers` (APIRouters the app includes as they are, with no prefix of its
    own): `match` finds a request's route and path parameters (into the scope, where FastAPI puts them),
    and calling it answers the request matched."""

    def __init__(self, routers):
        self.routes = [
            DirectRoute.of(route)
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute) and getattr(route.endpoint, "direct", False)
        ]
        # the candidates by method, number of segments and last segment (every direct path ends in a literal)
        self.candidates: dict[tuple[str, int, str | None], list[DirectRoute]] = {}
        for route in self.routes:
            key = (route.method, len(route.segments), route.segments[-1])
            self.candidates.setdefault(key, []).append(route)
        # (method, path) -> its route and path parameters: a few paths take nearly every request, and
        # matching segment by segment costs more than the lookup. Bounded: paths are the client's to choose.
        self.matched: dict[tuple[str, str], tuple[DirectRoute, dict[str, str]]] = {}

    MATCHES_KEPT = 1024

    def match(self, scope) -> bool:
        if scope["type"] != "http":
            return False
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # as Starlette's routing does behind a path prefix
            path = path[len(root) :]
        key = (scope["method"], path)
        found = self.matched.get(key)
        if found is None:
            found = self._match(key[0], path)
            if found is None:
                return False
            if len(self.matched) >= self.MATCHES_KEPT:
                self.matched.clear()
            self.matched[key] = found
        scope["route"], scope["path_params"] = found[0], dict(found[1])
        return True

    def _match(self, method: str, path: str) -> tuple[DirectRoute, dict[str, str]] | None:
        parts = path.split("/")
        for route in self.candidates.get((method, len(parts), parts[-1]), ()):
            if (params := route.match(parts)) is not None:
                return route, params
        return None

    async def answer(self, scope, receive, engine) -> Response:
        """The response of the route `match` found (RequestTracking.respond sends it)."""
        route: DirectRoute = scope["route"]
        request = DirectRequest(scope, receive)
        given = {"request": request, "engine": engine}
        try:
            if "deadline" in route.wants:
                given["deadline"] = header_deadline(engine, request.headers.get("x-request-timeout"))
            return await route.endpoint(**scope["path_params"], **{k: given[k] for k in route.wants})
        except errors.APIError as exc:
            return errors.api_error_response(request, exc)


class IndexedHeaders(Headers):
    """Starlette's Headers, looked up in a dict made once: Headers scans its list and decodes every name
    on each lookup, and a header that is absent (most of those a route asks for) costs a KeyError. The
    first of repeated headers wins, as in Headers."""

    def __init__(self, scope) -> None:
        super().__init__(scope=scope)
        self._index = dict(reversed(self._list))

    def _raw(self, key: str) -> bytes | None:
        return self._index.get(key.lower().encode("latin-1"))

    def get(self, key: str, default=None):
        value = self._raw(key)
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, key: str) -> str:
        value = self._raw(key)
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and self._raw(key) is not None


class DirectRequest(Request):
    """The Request a direct route gets: Starlette's, with IndexedHeaders."""

    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = IndexedHeaders(self.scope)
        return self._headers
