"""A short soak: several clients send a mix of good and bad requests for a while. The server's memory
stays flat, nothing answers 5xx, and its metrics count exactly what the clients saw. (bench/faults.py
runs the long version.)"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import running

SOAK_S = 15.0
WARM_UP_S = 3.0
CLIENTS = 4
ROW = [0, 1, 1, 0, 1, 0, 0, 1]


def npy(rows) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(rows, dtype=np.uint8))
    return buffer.getvalue()


# (route template as the server labels it, method, path, request keyword arguments)
REQUESTS = [
    ("/v1/models/{name}/log-prob", "/v1/models/tiny/log-prob", dict(json={"inputs": [ROW] * 8})),
    (
        "/v1/models/{name}/log-prob",
        "/v1/models/tiny/log-prob",
        dict(content=npy([ROW] * 64), headers={"content-type": "application/x-npy"}),
    ),
    ("/v1/models/{name}/log-prob", "/v1/models/tiny/log-prob", dict(json={"inputs": [[0, 1]]})),  # 422
    ("/v1/models/{name}/anomaly", "/v1/models/tiny/anomaly", dict(json={"inputs": [ROW] * 4})),
    ("/v1/models/{name}/sample", "/v1/models/tiny/sample", dict(json={"n": 16})),
    (
        "/v2/models/{name}/infer",
        "/v2/models/tiny/infer",
        dict(json={"inputs": [{"name": "input", "datatype": "UINT8", "shape": [2, 8], "data": ROW * 2}]}),
    ),
    ("/v1/models/{name}/log-prob", "/v1/models/none/log-prob", dict(json={"inputs": [ROW]})),  # 404
]
ROUTES = {route for route, _, _ in REQUESTS}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def server_counts(server) -> Counter:
    """(route, status) -> requests answered, for the routes this test sends to."""
    counts = Counter()
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "made_http_request_duration_seconds_count" and sample.labels["route"] in ROUTES:
                counts[(sample.labels["route"], sample.labels["status"])] += int(sample.value)
    return counts


def drive(server, seconds: float) -> Counter:
    """CLIENTS threads cycling through REQUESTS for `seconds`; (route, status) -> answers received."""
    seen, lock, stop = Counter(), threading.Lock(), time.monotonic() + seconds

    def client(offset: int):
        for route, path, kwargs in itertools.islice(itertools.cycle(REQUESTS), offset, None):
            if time.monotonic() > stop:
                return
            status = server.client.post(path, **kwargs).status_code
            with lock:
                seen[(route, str(status))] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def test_a_short_soak_keeps_memory_flat_and_metrics_exact(repository):
    with running(repository, env={"MADE_RELOAD_POLL_S": "0"}) as server:
        drive(server, WARM_UP_S)  # allocator pools, batch shapes and caches reach their working size
        before, rss_before = server_counts(server), rss_mb(server.process.pid)
        seen = drive(server, SOAK_S)
        after, rss_after = server_counts(server), rss_mb(server.process.pid)

    assert sum(seen.values()) > 500  # it was a soak
    assert {status for _, status in seen} == {"200", "404", "422"}, seen  # no 5xx, no surprise
    assert after - before == seen  # the server counted exactly what the clients saw
    assert rss_after - rss_before < 25, (rss_before, rss_after)  # MB: flat, not a leak per request
