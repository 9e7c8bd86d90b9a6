"""The container's start command is the integration tests' server command, and it works.

No Docker engine here, so the image's final-stage ENTRYPOINT/CMD is read from the Dockerfile and run on the
host exactly as written (the executable resolved through the image's PATH, i.e. the virtualenv's bin), with
the image's ENV. Only three variables differ from the image, to run on loopback against a test repository:
MADE_HOST (127.0.0.1 instead of 0.0.0.0), MADE_PORT (a free port) and MADE_MODEL_REPOSITORY. The image's
HEALTHCHECK command is run against it too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import SERVE_COMMAND, free_port
from tests.deploy.support import VENV_BIN, parse_dockerfile

LOOPBACK_OVERRIDES = ("MADE_HOST", "MADE_PORT", "MADE_MODEL_REPOSITORY")


@pytest.fixture(scope="module")
def image():
    dockerfile = parse_dockerfile()
    final = dockerfile.stages[-1]
    return dockerfile.command(final), dockerfile.env(final), final.last("HEALTHCHECK").exec_form()


def resolve(executable: str, image_path: str) -> str:
    """Look the executable up as the container does: PATH=/opt/venv/bin:... -> here, this virtualenv."""
    assert image_path.split(":")[0] == "/opt/venv/bin", image_path
    found = shutil.which(executable, path=str(VENV_BIN))
    assert found, f"{executable} is not in {VENV_BIN}"
    return found


def test_cmd_is_exec_form_made_serve_the_integration_tests_command(image):
    argv, env, _ = image
    assert argv == ["made", "serve"]
    # tests/api/conftest.py starts every integration-test server with SERVE_COMMAND (+ flags): the same
    # program and arguments, once `made` is resolved from the virtualenv as the image's PATH resolves it.
    assert [resolve(argv[0], env["PATH"]), *argv[1:]] == SERVE_COMMAND


def test_cmd_starts_the_service_and_drains_on_sigterm(image, tiny_repository, tmp_path):
    argv, image_env, healthcheck = image
    command = [resolve(argv[0], image_env["PATH"]), *argv[1:]]
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MADE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env |= {k: v for k, v in image_env.items() if k != "PATH"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "2"
    assert image_env["MADE_HOST"] == "0.0.0.0" and image_env["MADE_MODEL_REPOSITORY"] == "/models"
    overrides = {
        "MADE_HOST": "127.0.0.1",
        "MADE_PORT": str(port),
        "MADE_MODEL_REPOSITORY": str(tiny_repository),
    }
    assert set(overrides) == set(LOOPBACK_OVERRIDES)
    env |= overrides

    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def healthcheck_exit_code() -> int:
        command = [resolve(healthcheck[0], image_env["PATH"]), *healthcheck[1:]]
        return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode

    try:
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{base}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            time.sleep(0.1)
        assert process.poll() is None, f"exited with {process.returncode}:\n{log_path.read_text()}"
        assert ready is not None and ready.status_code == 200, log_path.read_text()
        assert ready.json()["models"] == {"tiny": "ready"}
        assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        answer = httpx.post(f"{base}/v1/models/tiny/log-prob", json={"inputs": [[0] * 8]}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["log_prob"]) == 1
        assert healthcheck_exit_code() == 0, "the image's HEALTHCHECK fails against a healthy server"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, f"SIGTERM should drain and exit 0, got {code}:\n{log_path.read_text()}"
    assert healthcheck_exit_code() != 0, "the HEALTHCHECK passes with no server running"

    # MADE_LOG_FORMAT=json from the image took effect: every log line is a JSON object.
    lines = [line for line in Path(log_path).read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert any(r.get("msg") == "drained" for r in records), lines
