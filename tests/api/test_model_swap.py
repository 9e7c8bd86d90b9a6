"""A reload that changes the model's width (D) while requests stream in: every request is validated and
computed by one version, so each gets a clean answer (200 from that version, or a clean 422/503), never a
500. Loopback only, bounded in count and time."""

from __future__ import annotations

import itertools
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.helpers import copy_version, running, save_tiny
from tests.helpers import markov_chain

WIDTHS = {1: 10, 2: 12, 3: 10, 4: 12}  # version -> D: three swaps, each changing D
ROWS = 4
CLIENTS = 10


@pytest.fixture
def swapping_repository(tmp_path):
    """Version 1 (D=10) in the repository; versions 2..4 (copies of a D=12 and the D=10 model) to be
    dropped in one by one."""
    built = {width: tmp_path / f"built-d{width}" for width in (10, 12)}
    for seed, (width, path) in enumerate(built.items()):
        save_tiny(path, seed=seed, n_dims=width, steps=10)
    root = tmp_path / "models"
    copy_version(root, "tiny", built[WIDTHS[1]], 1)
    return root, {version: built[WIDTHS[version]] for version in (2, 3, 4)}


def one_request(server, operation: str, width: int):
    """(operation, width sent, response) for one request; rows of `width` whatever the model's D is now."""
    if operation == "sample":
        return operation, None, server.client.post("/v1/models/tiny/sample", json={"n": ROWS})
    rows = markov_chain(ROWS, width, seed=width).tolist()
    return operation, width, server.client.post(f"/v1/models/tiny/{operation}", json={"inputs": rows})


def check_answer(operation: str, width: int | None, response) -> None:
    """200: a body from the one version its X-Model-Version names; otherwise a clean refusal."""
    body = response.json()
    if response.status_code == 422:
        assert operation != "sample", body
        assert f"rows have {width} values; the model expects" in body["error"]["message"], body
        return
    if response.status_code == 503:
        assert body["error"]["code"] in ("model_not_ready", "queue_full"), body
        return
    assert response.status_code == 200, (operation, width, response.status_code, body)
    version = int(response.headers["x-model-version"])
    assert body["version"] == version
    if operation == "sample":
        assert len(body["samples"]) == ROWS and {len(s) for s in body["samples"]} == {WIDTHS[version]}
    else:
        assert width == WIDTHS[version]  # rows of another width would have been refused, not computed
        answers = body["log_prob"] if operation == "log-prob" else body["score"]
        assert len(answers) == ROWS


def test_a_reload_that_changes_the_width_answers_every_request_cleanly(swapping_repository):
    root, staged = swapping_repository
    answers, stop = [], threading.Event()

    def client(seed: int):
        chooser = random.Random(seed)
        for operation in itertools.cycle(("log-prob", "anomaly", "sample")):
            if stop.is_set():
                return
            answers.append(one_request(server, operation, chooser.choice((10, 12))))

    env = {"MADE_RELOAD_POLL_S": "0", "MADE_MAX_BATCH_DELAY_MS": "5"}
    with running(root, env=env) as server, ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(client, seed) for seed in range(CLIENTS)]
        time.sleep(0.3)
        for version in (2, 3, 4):
            copy_version(root, "tiny", staged[version], version)
            assert server.client.post("/v1/models/tiny/reload").status_code == 202
            wait_for_version(server, version)
            time.sleep(0.3)
        stop.set()
        for done in clients:
            done.result()

    statuses = [response.status_code for _, _, response in answers]
    assert 500 not in statuses, f"{statuses.count(500)} answers of 500 in {len(statuses)}"
    for answer in answers:
        check_answer(*answer)
    served = {int(r.headers["x-model-version"]) for _, _, r in answers if r.status_code == 200}
    assert served == {1, 2, 3, 4}  # every version answered some requests


def wait_for_version(server, version: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while server.client.get("/v1/models/tiny").json()["version"] != version:
        assert time.monotonic() < deadline, f"version {version} never served"
        time.sleep(0.02)
