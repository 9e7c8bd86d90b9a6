"""Integration fixtures: small models in a temporary model repository, and the real server as a
subprocess on 127.0.0.1 and a free port (the plain helpers live in tests/api/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.helpers import running, save_gaussian, save_slow, save_tiny


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny(root / "tiny" / "1")
    save_tiny(root / "tiny-fixed" / "1", n_masks=1, eval_masks=1, order="natural")
    save_gaussian(root / "gauss" / "1")
    return root


@pytest.fixture(scope="session")
def slow_repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slow-models")
    save_slow(root / "slow" / "1")
    return root


@pytest.fixture(scope="module")
def server(repository):
    with running(
        repository,
        env={
            "MADE_MAX_REQUEST_ROWS": "2000",
            "MADE_MAX_SAMPLE_N": "500",
            "MADE_MAX_BODY_BYTES": "200000",
            "MADE_ADMIN_TOKEN": "s3cret",
        },
    ) as s:
        yield s
