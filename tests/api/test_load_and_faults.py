"""Queue-full 503, deadline 504, reload under load, SIGTERM drain, metrics, and several workers.

Loopback only, bounded in count and time. A deliberately heavy model (a 32-mask request of 1024 rows takes
seconds) makes queueing observable without any test hook in the server.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from service import checkpoint
from tests.api.helpers import SLOW_MODEL_ENV, copy_version, running, save_tiny
from tests.helpers import markov_chain

SLOW_ROWS = np.random.default_rng(0).integers(0, 2, size=(1024, 128)).astype(float).tolist()


def slow_request(server, masks=32, timeout=None):
    headers = {"x-request-timeout": str(timeout)} if timeout else {}
    started = time.monotonic()
    answer = server.client.post(
        "/v1/models/slow/log-prob", json={"inputs": SLOW_ROWS, "masks": masks}, headers=headers
    )
    return answer, time.monotonic() - started


def test_full_queue_answers_503_at_once_and_expired_requests_504_without_reaching_the_model(slow_repository):
    flags = ["--max-queue-requests", "2", "--max-batch-rows", "1024", "--max-batch-delay-ms", "0"]
    with running(slow_repository, *flags, env=SLOW_MODEL_ENV) as server:
        with ThreadPoolExecutor(4) as pool:
            computing = pool.submit(slow_request, server)  # A: taken by the model at once
            time.sleep(0.5)
            queued = pool.submit(slow_request, server)  # B: waits behind A
            time.sleep(0.3)
            expiring = pool.submit(slow_request, server, 32, 0.5)  # D: waits, then its deadline passes
            time.sleep(0.2)
            refused, refused_after = slow_request(server)  # C: the queue holds B and D
            late, late_after = expiring.result()
            assert computing.result()[0].status_code == 200 and queued.result()[0].status_code == 200

        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        assert refused.headers["retry-after"] and refused_after < 1.0  # at once, not after a wait
        assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"
        assert late_after < 1.5  # answered at its deadline, while A and B were still computing
        # Exactly two batches reached the model: A and B. D expired in the queue, C never entered it.
        assert server.metric("made_batch_rows_count", model="slow") == 2
        assert server.metric("made_rejections_total", model="slow", reason="queue_full") == 1
        assert server.metric("made_rejections_total", model="slow", reason="deadline_exceeded") == 1
        assert_metrics_exposed(server)


def assert_metrics_exposed(server):
    """Each metric the service promises, with values that make sense after the traffic above."""
    text = server.client.get("/metrics").text
    for name in (
        "made_http_request_duration_seconds_bucket",
        "made_http_requests_in_flight",
        "made_queue_wait_seconds_bucket",
        "made_model_compute_seconds_bucket",
        "made_batch_rows_bucket",
        "made_request_rows_bucket",
        "made_queue_depth",
        "made_rejections_total",
        "made_errors_total",
        "made_model_state",
        "made_model_loads_total",
        "made_model_load_duration_seconds",
        "made_model_info",
    ):
        assert name in text, name
    assert (
        server.metric(
            "made_http_request_duration_seconds_count",
            route="/v1/models/{name}/log-prob",
            model="slow",
            status="200",
        )
        == 2
    )
    assert server.metric("made_model_compute_seconds_sum", model="slow") > 0.5  # the two slow batches
    assert server.metric("made_queue_wait_seconds_count", model="slow") == 2
    assert server.metric("made_batch_rows_sum", model="slow") == 2048
    assert (
        server.metric("made_request_rows_sum", model="slow", operation="log_prob") == 3 * 1024
    )  # A, B, D: C was refused
    assert server.metric("made_queue_depth", model="slow") == 0
    assert server.metric("made_http_requests_in_flight") == 1  # this very /metrics request
    assert server.metric("made_errors_total", model="slow") == 0
    assert server.metric("made_model_state", model="slow", state="ready") == 1
    assert server.metric("made_model_load_duration_seconds", model="slow") > 0
    info = dict(model="slow", version="1", likelihood="bernoulli", device="cpu")  # SLOW_MODEL_ENV
    assert server.metric("made_model_info", **info) == 1
    if not torch.cuda.is_available():
        assert "made_device_memory_bytes{" not in text  # only reported where there is a GPU


@pytest.fixture
def mutable_repository(tmp_path):
    root = tmp_path / "models"
    save_tiny(root / "tiny" / "1", seed=0)
    save_tiny(tmp_path / "tiny-v2", seed=1, steps=60)
    return root, tmp_path / "tiny-v2"


def test_reload_under_load_fails_no_request_and_a_bad_version_keeps_the_old_one(mutable_repository):
    root, version_2 = mutable_repository
    rows = markov_chain(16, 8, seed=3)
    expected = {
        v: checkpoint.load(p)[0].log_prob(rows).detach().numpy()
        for v, p in ((1, root / "tiny" / "1"), (2, version_2))
    }
    answers, stop = [], threading.Event()

    def hammer(server):
        while not stop.is_set():
            sent = time.monotonic()
            r = server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows.tolist()})
            answers.append((r.status_code, r.json(), sent, time.monotonic()))

    with running(root, env={"MADE_RELOAD_POLL_S": "0.2", "MADE_ADMIN_TOKEN": "s3cret"}) as server:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(hammer, server)
            time.sleep(0.5)
            copy_version(root, "tiny", version_2, 2)  # dropped in while requests flow
            wait_for(lambda: server.client.get("/v1/models/tiny").json()["version"] == 2)
            time.sleep(0.5)
            broken = root / "tiny" / "3"
            shutil.copytree(version_2, broken)
            (broken / "weights.safetensors").write_bytes(b"not safetensors at all")
            wait_for(lambda: "version 3" in (server.client.get("/v1/models/tiny").json()["last_error"] or ""))
            unauthorised = server.client.post("/v1/models/tiny/reload")
            accepted = server.client.post(
                "/v1/models/tiny/reload", headers={"authorization": "Bearer s3cret"}
            )
            time.sleep(0.5)
            stop.set()
        info = server.client.get("/v1/models/tiny").json()
        failed_loads = server.metric("made_model_loads_total", model="tiny", result="failed")

    assert unauthorised.status_code == 401
    assert accepted.status_code == 202 and accepted.json() == {
        "model": "tiny",
        "status": "loading",
        "version": 3,
    }
    assert info["version"] == 2 and info["status"] == "ready" and "corrupt or truncated" in info["last_error"]
    assert failed_loads >= 2  # found by the watcher, then asked for by the reload route
    statuses = [status for status, *_ in answers]
    assert len(answers) > 20 and statuses.count(200) == len(statuses), set(statuses)
    versions = [body["version"] for _, body, *_ in answers]
    assert versions[0] == 1 and versions[-1] == 2
    # One switch, never back: a request sent after a version-2 answer arrived is answered by version 2. (A
    # request that arrived before the swap is answered by version 1, the version it was validated against,
    # even if that answer completes after the first version-2 answer.)
    first_v2_answered = min(received for _, body, _, received in answers if body["version"] == 2)
    assert all(body["version"] == 2 for _, body, sent, _ in answers if sent > first_v2_answered)
    for _, body, *_ in answers:  # every answer is the one of the version it names
        np.testing.assert_allclose(body["log_prob"], expected[body["version"]], atol=1e-5)


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if condition():
                return
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def test_sigterm_drains_in_flight_and_queued_requests_then_exits_0(slow_repository):
    with running(slow_repository, "--max-batch-delay-ms", "0", env=SLOW_MODEL_ENV) as server:
        with ThreadPoolExecutor(6) as pool:
            in_flight = [pool.submit(slow_request, server, 4) for _ in range(6)]  # ~0.5 s each, one at a time
            time.sleep(0.4)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            readiness = server.client.get("/readyz")
            newcomer = server.client.post("/v1/models/slow/log-prob", json={"inputs": SLOW_ROWS[:1]})
            answers = [f.result()[0] for f in in_flight]
        code = server.process.wait(timeout=60)

    assert readiness.status_code == 503 and readiness.json()["draining"] is True
    assert newcomer.status_code == 503 and newcomer.json()["error"]["code"] == "shutting_down"
    assert [a.status_code for a in answers] == [200] * 6  # zero dropped
    assert all(len(a.json()["log_prob"]) == 1024 for a in answers)
    assert code == 0


def test_several_workers_aggregate_their_metrics(repository):
    with running(repository, "--workers", "2") as server:
        wait_for(lambda: server.metric("made_model_loads_total", model="tiny", result="loaded") == 2)
        rows = markov_chain(3, 8).tolist()
        for _ in range(40):
            assert server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows}).status_code == 200
        count = server.metric("made_http_request_duration_seconds_count", route="/v1/models/{name}/log-prob")
        rows_seen = server.metric("made_request_rows_sum", model="tiny", operation="log_prob")
    assert count == 40 and rows_seen == 120  # whichever worker answered, /metrics counts them all


def test_a_model_that_fails_to_load_is_reported_and_the_others_still_serve(tmp_path):
    root = tmp_path / "models"
    save_tiny(root / "tiny" / "1", steps=20)
    save_tiny(root / "broken" / "1", steps=5)
    (root / "broken" / "1" / "weights.safetensors").write_bytes(b"\x00" * 64)
    with running(root, ready=False) as server:
        wait_for(lambda: server.client.get("/v1/models/broken").json()["status"] == "failed")
        wait_for(lambda: server.client.get("/v1/models/tiny").json()["status"] == "ready")
        broken = server.client.get("/v1/models/broken").json()
        readiness = server.client.get("/readyz")
        served = server.client.post("/v1/models/tiny/log-prob", json={"inputs": [[0] * 8]})
        refused = server.client.post("/v1/models/broken/log-prob", json={"inputs": [[0] * 8]})
        failed_state = server.metric("made_model_state", model="broken", state="failed")
    log = server.log_path.read_text()
    assert "corrupt or truncated" in broken["last_error"] and broken["version"] is None
    assert readiness.status_code == 503 and readiness.json()["models"] == {
        "broken": "failed",
        "tiny": "ready",
    }
    assert served.status_code == 200
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_not_ready"
    assert "corrupt or truncated" in refused.json()["error"]["message"]
    assert failed_state == 1
    assert "model failed to load" in log and "broken" in log


def test_a_slow_first_load_is_not_started_twice_by_the_watcher(slow_repository):
    with running(slow_repository, env={**SLOW_MODEL_ENV, "MADE_RELOAD_POLL_S": "0.01"}) as server:
        time.sleep(0.3)
        loads = server.metric("made_model_loads_total", model="slow", result="loaded")
    assert loads == 1


def test_only_configured_models_are_served_or_reloaded(repository):
    with running(repository, env={"MADE_MODELS": '["tiny"]'}) as server:
        names = [m["name"] for m in server.client.get("/v1/models").json()["models"]]
        reload_other = server.client.post("/v1/models/gauss/reload")
        reload_tiny = server.client.post("/v1/models/tiny/reload")
    assert names == ["tiny"]
    assert reload_other.status_code == 404 and reload_tiny.status_code == 202
