#!/usr/bin/env python3
"""The reliability and fault suite, as one script that prints what was tried and what held.

Starts the real server (`made serve`, as tests/api/helpers.Server does) on 127.0.0.1 over a temporary
model repository of small models, then:

1. fuzzes every route of the live /openapi.json, with schemathesis (its requests counted from its HAR
   report) and with a seeded stdlib-random fuzzer of its own (mutated JSON, .npy and binary-tensor
   bodies, random paths, methods, headers and query strings): no answer may be a 5xx;
2. sends hostile inputs one by one (an .npy header that declares 10^9 rows, absurd v2 shapes, a JSON
   nesting bomb, huge numbers, a pickled .npy, path traversal, gzip bodies, odd auth schemes, a 64 KiB
   header, a slow head, a stalled upload, 200 abandoned uploads), raw sockets where httpx cannot say it;
3. changes the model's width D (8 <-> 12) by dropping new versions into the repository while 10+ client
   threads keep scoring rows of the width they last saw: 422 for a stale width is fine, a 5xx is not;
4. soaks the server with a mix of log-prob, anomaly, sample and v2 infer, and checks that the server's
   Prometheus request counts equal the client's, status by status (and reports its RSS);
5. sends SIGTERM to a server of a deliberately slow model with requests in flight: all must be answered
   and the process must exit 0.

The result is a markdown table on stdout (and in --out FILE), with the machine, date and command line;
progress goes to stderr. Exit status 1 if anything did not hold. Only 127.0.0.1 is contacted.

    .venv/bin/python bench/faults.py --quick             # about 2 minutes
    .venv/bin/python bench/faults.py --out /tmp/faults.md  # about 10 minutes
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

try:
    import httpx
    import numpy as np
except ImportError:  # run by a Python without the project's packages
    if VENV_PYTHON.exists() and not os.environ.get("FAULTS_BENCH_REEXEC"):  # once, never in a loop
        os.environ["FAULTS_BENCH_REEXEC"] = "1"
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit("bench/faults.py needs httpx and numpy: run it with the project's .venv/bin/python")

sys.path.insert(0, str(ROOT))

import argparse
import contextlib
import gzip
import io
import json
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from tests.api.helpers import SLOW_MODEL_ENV, copy_version, running, save_slow, save_tiny

MODEL = "tiny"  # D=8, calibrated: fuzzing, hostile inputs, soak
SHIFTING = "shift"  # D alternates 8 and 12 across versions
TOKEN = "faults-s3cret"  # set, so that the auth scheme checks mean something
READ_TIMEOUT_S = 2.0
MAX_HEADER_BYTES = 16384
SERVER_ENV = {
    "MADE_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
    "MADE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    "MADE_RELOAD_POLL_S": "0.5",
    "MADE_ADMIN_TOKEN": TOKEN,
}
DURATION_COUNT = "made_http_request_duration_seconds_count"
# JSON values that break parsers and validators: the fuzzer's leaves
EDGE_VALUES = [None, True, False, 0, 1, -1, 2, 0.5, 1e308, -1e308, 2**63, 2**70]
EDGE_VALUES += ["", "x", "1", "NaN", "\u0000"]
INFERENCE_ROUTES = (
    "/v1/models/{name}/log-prob",
    "/v1/models/{name}/anomaly",
    "/v1/models/{name}/sample",
    "/v2/models/{name}/infer",
)


def log(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Result:
    """One row of the final table."""

    check: str
    tried: str
    requests: int
    expected: str
    observed: str
    held: bool


@dataclass
class Plan:
    """How much of everything to do: --quick or the full run."""

    st_examples: int
    own_fuzz: int
    reload_threads: int
    reload_swaps: int
    drain_requests: int
    soak_seconds: float
    soak_threads: int
    disconnects: int = 200


QUICK = Plan(
    st_examples=10,
    own_fuzz=300,
    reload_threads=10,
    reload_swaps=3,
    drain_requests=4,
    soak_seconds=15,
    soak_threads=4,
)
FULL = Plan(
    st_examples=200,
    own_fuzz=6000,
    reload_threads=12,
    reload_swaps=10,
    drain_requests=8,
    soak_seconds=60,
    soak_threads=6,
)


# --- the model repository and the servers ------------------------------------------------------------


def build_repository(work: Path) -> tuple[Path, dict[int, Path]]:
    """The served repository (tiny, shift at D=8) and, aside from it, one D=8 and one D=12 version to drop
    into shift/ later (built once, copied in under each new version number)."""
    repository = work / "models"
    save_tiny(repository / MODEL / "1", seed=0, n_dims=8)
    save_tiny(repository / SHIFTING / "1", seed=1, n_dims=8, steps=60)
    aside = {8: work / "aside" / "d8", 12: work / "aside" / "d12"}
    save_tiny(aside[8], seed=2, n_dims=8, steps=60)
    save_tiny(aside[12], seed=3, n_dims=12, steps=60)
    return repository, aside


def server_rss_kib(pid: int) -> int:
    """VmRSS of the server process (one worker: the process that serves), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def counts_by_status(server, routes=INFERENCE_ROUTES, model=MODEL) -> Counter:
    """The server's own request counts (latency histogram _count) for these routes, by status."""
    counts: Counter = Counter()
    for line in server.client.get("/metrics").text.splitlines():
        if not line.startswith(DURATION_COUNT + "{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("route") in routes and labels.get("model") == model:
            counts[int(labels["status"])] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def healthy(server) -> bool:
    """The process is alive and answers /healthz."""
    if server.process.poll() is not None:
        return False
    try:
        return httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


# --- raw sockets --------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 15.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket times out)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, None if there was none."""
    if not answer.startswith(b"HTTP/"):
        return None
    return int(answer.split(b" ", 2)[1])


def raw_exchange(port: int, request: bytes) -> int | None:
    """Send a whole request as bytes (httpx normalises paths and refuses odd heads) and read one answer."""
    sock = connect(port)
    try:
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        return status_of(answer)
    finally:
        sock.close()


def post_head(path: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: faults\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


# --- bodies -------------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_with_header(shape: tuple, descr: str = "<f8", payload: bytes = b"\0" * 80) -> bytes:
    """An .npy whose header says `shape` whatever follows it: the header must not be believed."""
    return npy_with_raw_header(
        repr({"descr": descr, "fortran_order": False, "shape": shape}).encode(), payload
    )


def npy_with_raw_header(header: bytes, payload: bytes = b"\0" * 64) -> bytes:
    """An .npy of this header text, padded as numpy pads it: broken headers must be refused as such."""
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def rows(rng: random.Random, n: int, d: int) -> list[list[int]]:
    return [[rng.randint(0, 1) for _ in range(d)] for _ in range(n)]


def v2_body(data, shape, datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}


# --- 1. fuzzing ---------------------------------------------------------------------------------------


def schemathesis_fuzz(server, work: Path, examples: int) -> Result:
    """schemathesis against the live schema, every request recorded in a HAR file, which is what is
    counted (its own summary counts test cases, not requests). The path parameters are pinned to the
    served model so that generated bodies reach validation; the own fuzzer below varies names. The
    coverage phase is left out: in this environment it stops with an internal hypothesis error
    ("AST constructor recursion depth mismatch") before sending anything, which is not the server's."""
    config = work / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.name" = "{MODEL}"\n"path.version" = "1"\n')
    har = work / "schemathesis.har"
    command = [
        str(ROOT / ".venv" / "bin" / "st"),
        "--config-file",
        str(config),
        "run",
        server.url + "/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,fuzzing,stateful",
        "--max-examples",
        str(examples),
        "--workers",
        "2",
        "--seed",
        "20261130",
        "--no-shrink",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "30",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "--report",
        "har",
        "--report-har-path",
        str(har),
    ]
    log(f"schemathesis: --max-examples {examples}")
    started = time.monotonic()
    run = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=1800)
    (work / "schemathesis.out").write_text(run.stdout + run.stderr)
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    tally = FuzzTally()
    for entry in entries:
        request, response = entry["request"], entry["response"]
        headers = {h["name"].lower(): h["value"] for h in request.get("headers", [])}
        body = (request.get("postData") or {}).get("text", "")
        tally.add(
            response["status"],
            headers,
            (response.get("content") or {}).get("text", ""),
            f"{request['method']} {request['url']} {headers} {body[:200]!r}",
        )
    log(f"schemathesis: {len(entries)} requests in {time.monotonic() - started:.0f} s, exit {run.returncode}")
    return Result(
        "fuzz: schemathesis",
        f"st run --checks not_a_server_error, phases examples+fuzzing+stateful, {examples} examples/op",
        len(entries),
        FuzzTally.EXPECTED,
        f"{tally.summary()}; st exit {run.returncode}",
        bool(entries) and tally.held() and healthy(server),
    )


@dataclass
class FuzzTally:
    """Statuses of fuzzed requests. A 5xx is a failure unless it is one of the two answers the docs
    promise under fuzzing: 504 deadline_exceeded for a request that set X-Request-Timeout itself, and
    503 {"ready": false} from a readiness route. Both are listed in the table apart from the failures."""

    EXPECTED = "no 5xx"
    UNSENT = "not sent (httpx refused it)"

    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int | str, headers: dict, answer: str, description: str) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == self.UNSENT or isinstance(status, int) and status < 500:
                return
            self.failures.append(f"{status} {answer[:160]!r} for {description}")

    def held(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        text = f"{status_classes(self.statuses)}; 5xx or no answer: {len(self.failures)}"
        if self.failures:
            text += "; FAILURES: " + " / ".join(self.failures[:5])
        return text


def status_classes(statuses: Counter) -> str:
    classes = Counter()
    for status, count in statuses.items():
        classes[f"{status // 100}xx" if isinstance(status, int) else str(status)] += count
    return ", ".join(f"{k}: {classes[k]}" for k in sorted(classes))


class OwnFuzzer:
    """Random requests to every route of /openapi.json, seeded (the same seed sends the same requests):
    mostly a valid request with a few mutations, so that most of them get past parsing into validation,
    plus random paths, methods, names, headers, query strings and raw bytes."""

    ODD_NAMES = ["nope", "..", ".", "%2E%2E", "a" * 300, "%C3%BC", "%00", f"{MODEL}%2Fx", "", "1", "~"]
    ODD_VERSIONS = ["1", "2", "0", "-1", "99999999999999999999", "x", "1.5", "%2E%2E", ""]
    CONTENT_TYPES = [
        "application/json",
        "application/x-npy",
        "application/octet-stream",
        "text/plain",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=x",
        "",
    ]
    ACCEPTS = ["*/*", "application/json", "application/x-npy", "image/png", "text/csv", "application/*", ""]
    QUERY_KEYS = ["masks", "per_dimension", "fpr", "n", "seed", "x", "masks[]", ""]
    QUERY_VALUES = ["1", "0", "true", "yes", "-1", "1e9", "", "%ff"]

    def __init__(self, server, seed: int):
        self.server = server
        self.seed = seed
        self.rng = random.Random(seed)
        schema = server.client.get("/openapi.json").json()
        self.routes = [
            (method.upper(), path)
            for path, operations in schema["paths"].items()
            for method in operations
            if method in ("get", "post", "put", "delete", "patch")
        ]

    def value(self, depth: int = 0):
        """A random JSON value: the edges that break parsers and validators."""
        rng = self.rng
        if depth > 2 or rng.random() < 0.6:
            return rng.choice(EDGE_VALUES)
        if rng.random() < 0.5:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(["inputs", "n", "masks", "x", "data"]): self.value(depth + 1)}

    def valid_body(self, path: str) -> dict:
        rng = self.rng
        if path.endswith("/sample"):
            body = {"n": rng.randint(1, 8), "seed": rng.randint(0, 100)}
            if rng.random() < 0.3:
                body["observed"] = {"indices": [0, 1], "values": [0, 1]}
            return body
        if path.endswith("/infer"):
            n = rng.randint(1, 4)
            body = v2_body(sum(rows(rng, n, 8), []), [n, 8], rng.choice(["FP32", "UINT8", "BOOL", "INT64"]))
            if rng.random() < 0.3:
                body["parameters"] = {"masks": rng.randint(1, 4)}
            return body
        if path.endswith("/reload"):
            return {}
        body = {"inputs": rows(rng, rng.randint(1, 4), 8)}
        if path.endswith("/anomaly") and rng.random() < 0.5:
            body["fpr"] = rng.choice([0.01, 0.5, 0, 1, -1])
        elif path.endswith("/log-prob") and rng.random() < 0.5:
            body["masks"] = rng.randint(0, 5)
        return body

    def mutate(self, document):
        """Replace, delete or add one entry somewhere in the document."""
        rng = self.rng
        places = []

        def walk(node):
            if isinstance(node, dict):
                places.extend((node, key) for key in node)
                places.append((node, None))
                for child in node.values():
                    walk(child)
            elif isinstance(node, list):
                places.extend((node, i) for i in range(len(node)))
                for child in node:
                    walk(child)

        walk(document)
        if not places:
            return self.value()
        container, key = rng.choice(places)
        action = rng.random()
        if key is None:
            container[rng.choice(["x", "inputs", "n", "id", "outputs"])] = self.value()
        elif action < 0.2 and isinstance(container, dict):
            del container[key]
        elif action < 0.3 and isinstance(container, list):
            container.pop(key)
        else:
            container[key] = self.value()
        return document

    def body(self, path: str) -> tuple[bytes, str]:
        """The body and the content type it is (honestly or not) sent with."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.6:
            document = self.valid_body(path)
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                document = self.mutate(document)
            return json.dumps(document).encode(), "application/json"
        if kind < 0.8:
            return self.npy_body(), "application/x-npy"
        if kind < 0.88:
            return self.binary_tensor_body(), "application/octet-stream"
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))), rng.choice(self.CONTENT_TYPES)

    def npy_body(self) -> bytes:
        rng = self.rng
        dtype = rng.choice([np.bool_, np.uint8, np.int64, np.float32, np.float64, np.complex64])
        shape = rng.choice([(rng.randint(0, 5), 8), (2, rng.randint(0, 12)), (8,), (1, 2, 8), ()])
        data = bytearray(
            npy_bytes(np.random.default_rng(rng.getrandbits(32)).integers(0, 2, shape).astype(dtype))
        )
        for _ in range(rng.choice([0, 0, 1, 3])):  # flipped bytes, in the header as often as not
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data) + 1)]
        return bytes(data)

    def binary_tensor_body(self) -> bytes:
        """The v2 binary tensor extension: JSON of Inference-Header-Content-Length bytes, then raw data."""
        rng = self.rng
        n = rng.randint(0, 3)
        size = rng.choice([n * 8 * 4, 0, 7, 10**12, -1])
        header = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [n, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
        if rng.random() < 0.5:
            header = self.mutate(header)
        raw = json.dumps(header).encode()
        self._header_length = rng.choice([len(raw), len(raw) + 5, 0, -3, 10**12])
        return raw + np.zeros((n, 8), np.float32).tobytes()[: rng.randint(0, 200)]

    def request(self) -> dict:
        rng = self.rng
        self._header_length = None
        method, path = rng.choice(self.routes)
        if rng.random() < 0.08:
            path = "/" + "/".join(
                rng.choice(["v1", "v2", "models", "..", "%2e", "x", MODEL, ""]) for _ in range(4)
            )
        if rng.random() < 0.08:
            method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        name = MODEL if rng.random() < 0.8 else rng.choice(self.ODD_NAMES)
        version = "1" if rng.random() < 0.7 else rng.choice(self.ODD_VERSIONS)
        url = path.replace("{name}", name).replace("{version}", version)
        headers = {}
        content = b""
        if method in ("POST", "PUT", "PATCH"):
            content, content_type = self.body(path)
            if rng.random() < 0.15:
                content_type = rng.choice(self.CONTENT_TYPES)
            if content_type:
                headers["content-type"] = content_type
        if self._header_length is not None:
            headers["inference-header-content-length"] = str(self._header_length)
        if rng.random() < 0.3:
            headers["accept"] = rng.choice(self.ACCEPTS)
        if rng.random() < 0.15:
            headers["x-request-timeout"] = rng.choice(["0", "-1", "1e-9", "nan", "inf", "5", "x", "1e308"])
        if rng.random() < 0.2:
            headers["authorization"] = rng.choice(
                [f"Bearer {TOKEN}", f"bearer {TOKEN}", "Bearer x", "Basic x"]
            )
        if rng.random() < 0.1:
            headers["x-" + "".join(rng.choice("abcxyz-") for _ in range(8))] = "".join(
                chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 100))
            )
        if rng.random() < 0.3:
            url += "?" + "&".join(
                f"{rng.choice(self.QUERY_KEYS)}={rng.choice(self.QUERY_VALUES)}"
                for _ in range(rng.randint(1, 3))
            )
        return {"method": method, "url": url, "headers": headers, "content": content}

    def run(self, total: int, threads: int = 2) -> Result:
        requests = [self.request() for _ in range(total)]  # drawn up front: the seed fixes them all
        tally = FuzzTally()

        def send(request: dict) -> None:
            try:
                with httpx.Client(timeout=30) as client:  # absolute URLs: a random path may start with //
                    answer = client.request(**(request | {"url": self.server.url + request["url"]}))
                status, text = answer.status_code, answer.text
            except (httpx.LocalProtocolError, httpx.InvalidURL):  # httpx refused to send it
                status, text = FuzzTally.UNSENT, ""
            except httpx.HTTPError as error:
                status, text = type(error).__name__, ""
            description = (
                f"{request['method']} {request['url']} {request['headers']} {request['content'][:120]!r}"
            )
            tally.add(status, request["headers"], text, description)

        log(f"own fuzzer: {total} requests over {len(self.routes)} routes")
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(send, requests))
        return Result(
            "fuzz: own (stdlib random)",
            f"mutated JSON/.npy/binary-tensor bodies, odd names, paths, methods, headers, queries; "
            f"{len(self.routes)} routes, seed {self.seed}",
            total - tally.statuses[FuzzTally.UNSENT],
            FuzzTally.EXPECTED,
            tally.summary(),
            tally.held() and healthy(self.server),
        )


# --- 2. hostile inputs --------------------------------------------------------------------------------


def hostile_inputs(server, disconnects: int) -> list[Result]:
    """Each hostile request alone, its status against the documented one, and the server healthy after."""
    port, client = server.port, server.client
    log_prob = f"/v1/models/{MODEL}/log-prob"
    infer = f"/v2/models/{MODEL}/infer"
    row = [0, 1] * 4

    def post_json_text(path: str, text: str) -> int:
        return client.post(
            path, content=text.encode(), headers={"content-type": "application/json"}
        ).status_code

    nesting = "[" * 100_000 + "]" * 100_000
    cases = [
        (
            ".npy header says 10^9 rows, 80 bytes follow",
            {400},
            lambda: (
                client.post(
                    log_prob,
                    content=npy_with_header((10**9, 8)),
                    headers={"content-type": "application/x-npy"},
                ).status_code
            ),
        ),
        (
            "v2 infer shape [-1, -10]",
            {422},
            lambda: client.post(infer, json=v2_body(row, [-1, -10])).status_code,
        ),
        (
            "v2 infer shape [10**12, 8], 8 values",
            {422},
            lambda: client.post(infer, json=v2_body(row, [10**12, 8])).status_code,
        ),
        (
            "v2 binary extension: binary_data_size 10^12, 32 bytes follow",
            {400, 422},
            lambda: binary_size_lie(client, infer),
        ),
        (
            "JSON nesting bomb: 100,000 '[' in inputs",
            {400, 422},
            lambda: post_json_text(log_prob, f'{{"inputs": {nesting}}}'),
        ),
        ("JSON nesting bomb as the whole body", {400}, lambda: post_json_text(log_prob, nesting)),
        (
            "a row holding 1e308",
            {422},
            lambda: post_json_text(log_prob, '{"inputs": [[1e308, 0, 0, 0, 0, 0, 0, 0]]}'),
        ),
        (
            "a row holding 1e400 (beyond float64: refused by the JSON parser or as Inf)",
            {400, 422},
            lambda: post_json_text(log_prob, '{"inputs": [[1e400, 0, 0, 0, 0, 0, 0, 0]]}'),
        ),
        (
            "pickled .npy (object array, allow_pickle)",
            {400},
            lambda: (
                client.post(
                    log_prob,
                    content=npy_bytes(np.array([[{"x": 1}] * 8], dtype=object), allow_pickle=True),
                    headers={"content-type": "application/x-npy"},
                ).status_code
            ),
        ),
        (
            ".npy header dict without its closing brace (found by the fuzzer)",
            {400},
            lambda: (
                client.post(
                    log_prob,
                    content=npy_with_raw_header(
                        b"{'descr': '<f8', 'fortran_order': False, 'shape': (1, 8), "
                    ),
                    headers={"content-type": "application/x-npy"},
                ).status_code
            ),
        ),
        (
            "POST /v1/models/<300 x 'a'>/reload, right token (found by the fuzzer)",
            {404},
            lambda: (
                client.post(
                    "/v1/models/" + "a" * 300 + "/reload", headers={"authorization": f"Bearer {TOKEN}"}
                ).status_code
            ),
        ),
        (
            "POST /v1/models/%2E%2E/reload (right token)",
            {404},
            lambda: raw_exchange(
                port,
                b"POST /v1/models/%2E%2E/reload HTTP/1.1\r\nHost: faults\r\n"
                + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n".encode(),
            ),
        ),
        (
            "GET /v1/models/..%2F..%2Fetc",
            {404},
            lambda: raw_exchange(port, b"GET /v1/models/..%2F..%2Fetc HTTP/1.1\r\nHost: faults\r\n\r\n"),
        ),
        (
            "Content-Encoding: gzip (a gzipped JSON body)",
            {415},
            lambda: (
                client.post(
                    log_prob,
                    content=gzip.compress(json.dumps({"inputs": [row]}).encode()),
                    headers={"content-type": "application/json", "content-encoding": "gzip"},
                ).status_code
            ),
        ),
        (
            "reload with lowercase 'bearer <token>'",
            {202},
            lambda: (
                client.post(
                    f"/v1/models/{MODEL}/reload", headers={"authorization": f"bearer {TOKEN}"}
                ).status_code
            ),
        ),
        (
            "reload with a wrong token",
            {401},
            lambda: (
                client.post(
                    f"/v1/models/{MODEL}/reload", headers={"authorization": "Bearer nope"}
                ).status_code
            ),
        ),
        (
            "a 70,000-byte header (limit 16 KiB)",
            {431},
            lambda: raw_exchange(
                port, b"GET /healthz HTTP/1.1\r\nHost: faults\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
            ),
        ),
    ]
    results = [hostile_case(server, tried, expected, attempt) for tried, expected, attempt in cases]
    results.append(slow_head(server))
    results.append(stalled_upload(server))
    results.append(abandoned_uploads(server, disconnects))
    return results


def binary_size_lie(client: httpx.Client, path: str) -> int:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 10**12},
                }
            ]
        }
    ).encode()
    return client.post(
        path,
        content=header + b"\0" * 32,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    ).status_code


def hostile_case(server, tried: str, expected: set[int], attempt) -> Result:
    try:
        observed = attempt()
    except (httpx.HTTPError, OSError) as error:
        observed = f"no answer ({type(error).__name__})"
    alive = healthy(server)
    held = observed in expected and alive
    log(f"hostile: {tried}: {observed}")
    return Result(
        "hostile input",
        tried,
        1,
        " or ".join(map(str, sorted(expected))),
        f"{observed}{'' if alive else '; server NOT healthy after'}",
        held,
    )


def slow_head(server) -> Result:
    """A head that never finishes: 408 once read_timeout_s has passed, and the connection closed."""
    sock = connect(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: faults\r\n")
    started = time.monotonic()
    status = status_of(read_all(sock))
    waited = time.monotonic() - started
    sock.close()
    held = status == 408 and waited < READ_TIMEOUT_S + 3 and healthy(server)
    return Result(
        "hostile input",
        f"slow head: half a head, then silence (read timeout {READ_TIMEOUT_S:g} s)",
        1,
        f"408 within {READ_TIMEOUT_S + 3:g} s",
        f"{status} after {waited:.1f} s",
        held,
    )


def stalled_upload(server) -> Result:
    """15 of 100 declared body bytes, then silence: 408 and the connection closed."""
    sock = connect(server.port)
    sock.sendall(post_head(f"/v1/models/{MODEL}/log-prob", 100) + b'{"inputs": [[0,')
    started = time.monotonic()
    status = status_of(read_all(sock))
    waited = time.monotonic() - started
    sock.close()
    held = status == 408 and waited < READ_TIMEOUT_S + 3 and healthy(server)
    return Result(
        "hostile input",
        "stalled upload: 15 of 100 body bytes, then silence",
        1,
        f"408 within {READ_TIMEOUT_S + 3:g} s",
        f"{status} after {waited:.1f} s",
        held,
    )


def abandoned_uploads(server, clients: int) -> Result:
    """Clients that hang up mid-body are the clients' doing: counted as client_disconnected, never as a
    server error."""
    errors_before = server.metric("made_errors_total")
    before = server.metric("made_rejections_total", reason="client_disconnected")
    sockets = []
    for _ in range(clients):
        sock = connect(server.port)
        sock.sendall(post_head(f"/v1/models/{MODEL}/log-prob", 100) + b'{"inputs": [[0,')
        sockets.append(sock)
    time.sleep(0.5)  # every route is now waiting for the rest of its body
    for sock in sockets:
        sock.close()
    counted = 0.0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        counted = server.metric("made_rejections_total", reason="client_disconnected") - before
        if counted >= clients:
            break
        time.sleep(0.2)
    errors = server.metric("made_errors_total") - errors_before
    held = counted == clients and errors == 0 and healthy(server)
    log(f"hostile: {clients} abandoned uploads: {counted:g} counted, errors +{errors:g}")
    return Result(
        "hostile input",
        f"{clients} clients open an upload, send 15 of 100 bytes, then all hang up",
        clients,
        f"client_disconnected +{clients}, made_errors_total +0",
        f"client_disconnected +{counted:g}, made_errors_total +{errors:g}",
        held,
    )


# --- 3. reloads that change D under load --------------------------------------------------------------


@dataclass
class WidthClients:
    """Client threads that score rows of the width they last saw: after a 422 they ask the model's D
    again, as a real client would."""

    url: str
    threads: int
    statuses: Counter = field(default_factory=Counter)
    other_422: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def width(self, client: httpx.Client) -> int:
        return client.get(f"/v1/models/{SHIFTING}").json()["n_dims"]

    def run_one(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            d = self.width(client)
            while not self.stop.is_set():
                body = {"inputs": rows(rng, rng.randint(1, 8), d)}
                try:
                    answer = client.post(f"/v1/models/{SHIFTING}/log-prob", json=body)
                    status = answer.status_code
                except httpx.HTTPError as error:
                    status, answer = type(error).__name__, None
                with self.lock:
                    self.statuses[status] += 1
                    if isinstance(status, str) or status >= 500:
                        self.server_errors.append(
                            f"{status} for {d} columns: {answer.text[:200] if answer else ''}"
                        )
                    elif status == 422 and "expects" not in answer.text:
                        self.other_422.append(answer.text[:200])
                if status == 422:
                    d = self.width(client)

    def start(self) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(self.threads)
        for seed in range(self.threads):
            pool.submit(self.run_one, seed)
        return pool


def reload_under_load(server, repository: Path, aside: dict[int, Path], threads: int, swaps: int) -> Result:
    clients = WidthClients(server.url, threads)
    pool = clients.start()
    served, widths = [], []
    try:
        time.sleep(1.0)
        for i in range(swaps):
            version, d = 2 + i, (12, 8)[i % 2]
            copy_version(repository, SHIFTING, aside[d], version)
            if wait_for_version(server, version, timeout=90):
                served.append(version)
                widths.append(d)
            log(f"reload: version {version} (D={d}) {'served' if version in served else 'NOT served'}")
            time.sleep(1.0)  # some traffic on the new width before the next swap
    finally:
        clients.stop.set()
        pool.shutdown(wait=True)
    total = sum(clients.statuses.values())
    held = (
        len(served) == swaps
        and not clients.server_errors
        and not clients.other_422
        and clients.statuses[200] > 0
        and healthy(server)
    )
    observed = f"{dict(sorted(clients.statuses.items(), key=str))}; versions served: {served}"
    if clients.server_errors:
        observed += "; " + " / ".join(clients.server_errors[:3])
    if clients.other_422:
        observed += "; unexpected 422: " + " / ".join(clients.other_422[:3])
    return Result(
        "reload changing D under load",
        f"{threads} threads score rows while {swaps} versions alternating D=12/8 are dropped in (poll 0.5 s)",
        total,
        "no 5xx; 422 only for a stale width; every version served",
        observed,
        held,
    )


def wait_for_version(server, version: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if server.client.get(f"/v1/models/{SHIFTING}").json()["version"] == version:
                return True
        time.sleep(0.1)
    return False


# --- 4. soak ------------------------------------------------------------------------------------------


def soak(server, seconds: float, threads: int) -> Result:
    """A mix of every inference route for a while; the client's counts must be the server's."""
    server_before = counts_by_status(server)
    rss_before = server_rss_kib(server.process.pid)
    statuses: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def drive(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while time.monotonic() < stop_at:
                try:
                    status = client.request(**soak_request(rng)).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with lock:
                    statuses[status] += 1

    log(f"soak: {threads} threads for {seconds:g} s")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(drive, range(100, 100 + threads)))
    time.sleep(1.0)  # the server records a request's latency just after its answer is sent
    rss_after = server_rss_kib(server.process.pid)
    server_after = counts_by_status(server)
    server_counts = Counter({s: server_after[s] - server_before[s] for s in server_after})
    server_counts = +server_counts  # drop zeros
    client_counts = Counter({s: c for s, c in statuses.items()})
    total = sum(client_counts.values())
    bad = sum(c for s, c in client_counts.items() if isinstance(s, str) or s >= 500)
    held = client_counts == server_counts and bad == 0 and healthy(server)
    return Result(
        "soak",
        f"{threads} threads, {seconds:g} s of log-prob (JSON, .npy), anomaly, sample, v2 infer",
        total,
        "server counts == client counts; no 5xx",
        f"client {dict(sorted(client_counts.items(), key=str))}, "
        f"server {dict(sorted(server_counts.items()))}; "
        f"{total / seconds:.0f} req/s; RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB",
        held,
    )


def soak_request(rng: random.Random) -> dict:
    """One request of the soak mix: mostly valid, some refused (wrong width, bad fpr) on purpose."""
    kind = rng.random()
    n = rng.randint(1, 64)
    data = rows(rng, n, 8 if rng.random() > 0.05 else 7)
    if kind < 0.35:
        return {"method": "POST", "url": f"/v1/models/{MODEL}/log-prob", "json": {"inputs": data}}
    if kind < 0.5:
        return {
            "method": "POST",
            "url": f"/v1/models/{MODEL}/log-prob?masks={rng.randint(1, 4)}",
            "content": npy_bytes(np.array(data, dtype=np.uint8)),
            "headers": {
                "content-type": "application/x-npy",
                "accept": rng.choice(["application/x-npy", "*/*"]),
            },
        }
    if kind < 0.7:
        fpr = rng.choice([0.01, 0.05, 0.5, 1.5])
        return {"method": "POST", "url": f"/v1/models/{MODEL}/anomaly", "json": {"inputs": data, "fpr": fpr}}
    if kind < 0.85:
        return {"method": "POST", "url": f"/v1/models/{MODEL}/sample", "json": {"n": rng.randint(1, 32)}}
    return {
        "method": "POST",
        "url": f"/v2/models/{MODEL}/infer",
        "json": v2_body(sum(data, []), [n, len(data[0])]),
    }


# --- 5. SIGTERM drain ---------------------------------------------------------------------------------


def sigterm_drain(work: Path, in_flight: int) -> Result:
    """SIGTERM while slow requests are in flight: each must still be answered, and the exit status 0."""
    repository = work / "slow-models"
    save_slow(repository / "slow" / "1")
    body = {"inputs": np.random.default_rng(0).integers(0, 2, size=(256, 128)).tolist(), "masks": 32}
    env = SLOW_MODEL_ENV | {"MADE_SHUTDOWN_GRACE_S": "120", "MADE_RELOAD_POLL_S": "0"}
    with running(repository, "--max-batch-delay-ms", "0", env=env) as server:
        started = time.monotonic()
        server.client.post("/v1/models/slow/log-prob", json=body)
        one = time.monotonic() - started

        def send(_: int):
            try:
                with httpx.Client(base_url=server.url, timeout=300) as client:
                    return client.post("/v1/models/slow/log-prob", json=body).status_code
            except httpx.HTTPError as error:
                return type(error).__name__

        with ThreadPoolExecutor(in_flight) as pool:
            answers = [pool.submit(send, i) for i in range(in_flight)]
            wait_in_flight(server, in_flight)
            log(f"drain: SIGTERM with {in_flight} requests in flight (one takes {one:.1f} s alone)")
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            try:
                newcomer = httpx.post(
                    server.url + "/v1/models/slow/log-prob", json=body, timeout=30
                ).status_code
            except httpx.HTTPError as error:
                newcomer = type(error).__name__
            statuses = Counter(f.result() for f in answers)
        code = server.process.wait(timeout=300)
    answered = statuses[200]
    held = answered == in_flight and code == 0 and newcomer == 503
    return Result(
        "SIGTERM drain",
        f"slow model (masks=32, 256 rows, {one:.1f} s each): SIGTERM with {in_flight} in flight, "
        "then a newcomer",
        in_flight + 1,
        f"{in_flight} answered 200, 0 lost, newcomer 503, exit 0",
        f"{answered} answered, {in_flight - answered} lost {dict(statuses)}, newcomer {newcomer}, "
        f"exit {code}",
        held,
    )


def wait_in_flight(server, count: int, timeout: float = 10.0) -> None:
    """Until the server holds `count` requests (plus the /metrics request that asks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.metric("made_http_requests_in_flight") >= count + 1:
            return
        time.sleep(0.05)


# --- the run ------------------------------------------------------------------------------------------


def main_server_checks(work: Path, plan: Plan, seed: int) -> list[Result]:
    log("building the model repository")
    repository, aside = build_repository(work)
    results = []
    with running(repository, env=SERVER_ENV) as server:
        checks = [
            ("fuzz: schemathesis", lambda: [schemathesis_fuzz(server, work, plan.st_examples)]),
            ("fuzz: own (stdlib random)", lambda: [OwnFuzzer(server, seed).run(plan.own_fuzz)]),
            ("hostile input", lambda: hostile_inputs(server, plan.disconnects)),
            (
                "reload changing D under load",
                lambda: [
                    reload_under_load(server, repository, aside, plan.reload_threads, plan.reload_swaps)
                ],
            ),
            ("soak", lambda: [soak(server, plan.soak_seconds, plan.soak_threads)]),
        ]
        for name, check in checks:
            results.extend(guarded(name, check))
        died_with = server.process.poll()  # None: still serving, as it should be
    code = server.process.returncode
    log_text = server.log_path.read_text()
    tracebacks = log_text.count("Traceback")
    observed = f"exit {code}, {tracebacks} tracebacks"
    if died_with is not None:  # a negative code is the signal that ended it
        observed = (
            f"ended mid-run with {died_with} (negative: killed by that signal); log ends: {log_text[-300:]!r}"
        )
    results.append(
        Result(
            "main server exit",
            "SIGTERM after all of the above (alive until then); its log searched for tracebacks",
            0,
            "alive until SIGTERM, exit 0, no traceback",
            observed,
            died_with is None and code == 0 and tracebacks == 0,
        )
    )
    return results


def guarded(name: str, check) -> list[Result]:
    """Run one check; if the check itself breaks (the server died under it, say), that is a row that did
    not hold, and the remaining checks still run."""
    try:
        return check()
    except Exception as error:  # reported in the table, not hidden
        log(f"{name}: broke with {type(error).__name__}: {error}")
        return [
            Result(
                name,
                "(the check did not complete)",
                0,
                "completes",
                f"{type(error).__name__}: {error}",
                False,
            )
        ]


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{len(os.sched_getaffinity(0))} CPUs (nproc), {model}"


def table(results: list[Result], command: str, elapsed: float) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| check | what was tried | requests | expected | observed | held |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [r.check, r.tried, r.requests, r.expected, r.observed, "yes" if r.held else "**no**"]
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    held = sum(r.held for r in results)
    total_requests = sum(r.requests for r in results)
    lines += [
        "",
        f"{held} of {len(results)} checks held; {total_requests} requests in {elapsed:.0f} s.",
        f"Machine: {machine()}. Date: {datetime.now(UTC).isoformat(timespec='seconds')}.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 2 minutes)")
    parser.add_argument("--soak-seconds", type=float, help="soak duration (default 60, 15 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the own fuzzer")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, HAR)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    plan = replace(QUICK if args.quick else FULL)
    if args.soak_seconds is not None:
        plan.soak_seconds = args.soak_seconds
    command = shlex.join([sys.executable, *sys.argv])
    work = Path(tempfile.mkdtemp(prefix="made-faults-"))
    started = time.monotonic()
    try:
        results = main_server_checks(work, plan, args.seed)
        results.extend(guarded("SIGTERM drain", lambda: [sigterm_drain(work, plan.drain_requests)]))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = table(results, command, time.monotonic() - started)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0 if all(r.held for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
