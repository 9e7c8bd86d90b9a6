"""Fixtures for the deployment checks: a tiny model repository and one live server's /metrics.

No Docker engine is needed (or available on the development and CI machines): the container's files are
checked statically, and its start command is run on the host (test_image_cmd.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.helpers import running, save_tiny


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy-models")
    save_tiny(root / "tiny" / "1", steps=20)
    return root


@pytest.fixture(scope="session")
def live_metrics(tiny_repository) -> str:
    """The /metrics text of a real server (`made serve`, as the integration tests start it) after one
    request of each operation, so that every family the service declares is in the exposition."""
    with running(tiny_repository) as server:
        assert (
            server.client.post("/v1/models/tiny/log-prob", json={"inputs": [[0] * 8, [1] * 8]}).status_code
            == 200
        )
        assert server.client.post("/v1/models/tiny/sample", json={"n": 2, "seed": 0}).status_code == 200
        return server.client.get("/metrics").text
