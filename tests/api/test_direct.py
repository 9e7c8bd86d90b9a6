"""The direct routes: which routes skip FastAPI's layers, and how a request finds one (the answers
themselves are tested against the real server, where every inference request takes this way)."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Request

from service.api.app import create_app
from service.api.direct import DirectRoute, DirectRoutes, direct
from service.settings import Settings

INFERENCE = {
    ("POST", "/v1/models/{name}/log-prob"),
    ("POST", "/v1/models/{name}/anomaly"),
    ("POST", "/v1/models/{name}/drift"),
    ("POST", "/v1/models/{name}/sample"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
}


def scope(path: str, method: str = "POST", root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> DirectRoutes:
    app = create_app(Settings(model_repository=tmp_path_factory.mktemp("models")))
    return app.direct_routes


def test_the_inference_routes_and_only_they_are_direct(routes):
    assert {(route.method, route.path) for route in routes.routes} == INFERENCE


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/models/mnist/log-prob", {"name": "mnist"}),
        ("/v1/models/a.b-c/sample", {"name": "a.b-c"}),
        ("/v2/models/m/versions/3/infer", {"name": "m", "version": "3"}),
        ("/v2/models/m/infer", {"name": "m"}),
    ],
)
def test_a_request_finds_its_route_and_path_parameters(routes, path, params):
    request = scope(path)
    assert routes.match(request)
    assert request["path_params"] == params
    assert (request["route"].method, request["route"].path) in INFERENCE


@pytest.mark.parametrize(
    "request_scope",
    [
        scope("/v1/models//log-prob"),  # a parameter is never empty
        scope("/v1/models/m/log-prob/"),
        scope("/v1/models/m/log-prob", method="GET"),  # FastAPI's: 405
        scope("/v1/models/m"),
        scope("/v1/models/m/reload"),  # an admin route, with its own dependency
        scope("/metrics", method="GET"),
        {"type": "websocket", "path": "/v1/models/m/log-prob"},
    ],
)
def test_anything_else_is_left_to_fastapi(routes, request_scope):
    assert not routes.match(request_scope)
    assert "route" not in request_scope


def test_matched_paths_are_remembered_within_a_bound(routes):
    """A path matched once is found again without matching, with parameters of its own each time; the
    paths remembered are bounded, whatever paths clients send."""
    first, again = scope("/v1/models/kept/log-prob"), scope("/v1/models/kept/log-prob")
    assert routes.match(first) and routes.match(again)
    assert again["path_params"] == {"name": "kept"} and again["path_params"] is not first["path_params"]
    assert ("POST", "/v1/models/kept/log-prob") in routes.matched
    for i in range(3 * routes.MATCHES_KEPT):
        assert routes.match(scope(f"/v1/models/m{i}/sample"))
    assert len(routes.matched) <= routes.MATCHES_KEPT
    assert not routes.match(scope("/v1/models/kept/log-prob", method="GET"))  # the method is in the key


def test_a_path_prefix_is_stripped_as_starlette_does(routes):
    request = scope("/made/v1/models/m/anomaly", root_path="/made")
    assert routes.match(request) and request["path_params"] == {"name": "m"}


def test_a_direct_route_takes_only_what_it_is_given():
    router = APIRouter()

    @router.post("/x/{name}/go")
    @direct
    async def fine(name: str, request: Request, deadline: float):
        return None

    @router.post("/y/{name}/go")
    @direct
    async def wants_more(name: str, request: Request, user: str):
        return None

    @router.post("/z/{name}/{version}")
    @direct
    async def ends_in_a_parameter(name: str, version: str, request: Request):
        return None

    assert DirectRoute.of(router.routes[0]).wants == {"request", "deadline"}
    with pytest.raises(TypeError, match="a direct route takes only"):
        DirectRoute.of(router.routes[1])
    with pytest.raises(TypeError, match="ends in a literal segment"):
        DirectRoute.of(router.routes[2])
