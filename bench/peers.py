#!/usr/bin/env python3
"""Our server against serving peers: the same MADE checkpoint, the same loads, one load generator.

Starts each peer once on 127.0.0.1, every one serving log p(x) (nats) of 784-dim binary rows from the
same checkpoint (--model, default runs/oneclass/m8: issue 15's light 784-500 model, from bench/anomaly.py):

    ours           `made serve` (dynamic batching at its defaults), POST /v1/models/<name>/log-prob
    ours-2-workers `made serve --workers 2`: a process per core, each with its own models and batchers
    fastapi-plain  a minimal FastAPI app under uvicorn: no batching, torch.set_num_threads(1)
    torchserve     TorchServe with a generated handler, batching on (batch 64, 2 ms delay, 1 worker)
    pytriton       Triton Inference Server through PyTriton (dynamic batcher: 4096 rows, 2 ms), when it can
                   run here, else a line says why. nvidia-pytriton pins numpy<2, so it may live in a venv
                   of its own: PYTRITON_PYTHON=/path/to/that/venv/bin/python. Triton's HTTP API takes only
                   KServe v2 bodies, so it gets the same rows as one FP32 tensor at /v2/models/light/infer.

and, only when named in --servers, three diagnostics that are not product configurations (all read the
body with the service's own codecs.read_body):

    ours-lean-asgi our engine (the same batchers, validation and compute) behind the leanest ASGI route we
                   could write under the same uvicorn: numeric JSON rows in, log p out, and nothing else (no
                   request tracking or metrics, no headers or content negotiation; the body limit only).
                   What it does over `ours` is the most that trimming the app's own layers could give.
    minimal-batched the same model call behind a minimal ASGI route and a 30-line batcher (a batch goes
                   when every request in flight has joined it, or 2 ms after its first), compute in one
                   thread: what our engine, batcher and app layers cost, all together, on the event loop.
    minimal-batched-process  minimal-batched with the model in a child process (one torch thread) instead
                   of the compute thread: batches go to it through a pipe and answers are read on the event
                   loop when the pipe is readable, so neither side waits for the other's GIL. What the
                   architecture of a model process behind the HTTP process would give on this machine.

Before measuring, the same 16 rows go to every server and the answers must agree (rtol 1e-4), or it
aborts. Each load is then driven by the compiled load generator `hey` (`hey -z Ns -c C -m POST`):

    json-64x1     64 clients x 1 row per request, JSON {"inputs": [[...]]}
    json-16x16    16 clients x 16 rows, JSON
    json-1x1024   1 client x 1,024 rows, JSON
    npy-1x1024    1 client x 1,024 rows as an .npy body (ours only; the peers have no .npy contract)

Rows come from the validation split of ../shared/data/binarized_mnist.npz. Each (server, load) gets
--warmup seconds of load first (default 10; TorchServe's first measured round has been its slowest in
each run recorded on 2026-11-30, after a 3 s warm-up and after 10 s alike: at 20:40 UTC 1,188 rows/s
against 1,441 and 1,334 in the rounds after it), then --seconds of measurement, repeated --rounds times
with the servers interleaved within a round; the table shows medians over rounds (non-200 responses are
summed over rounds). Rows/s is hey's Requests/sec x rows per request; p50/p99 are hey's latency
percentiles (p99 is hey's slowest request when a run has under 100 requests, where hey prints no p99);
CPU s is the server process tree's user+system CPU time during the measured run; peak RSS is VmHWM
summed over the tree (reset before each run through /proc/<pid>/clear_refs where the kernel allows it,
else a lifetime peak).
hey runs on the same machine and competes with the servers for its cores.

After the table, ours on the 1 x 1,024 loads as a share of the in-process forward: compute.log_prob's
batch function on the same 1,024 rows in a compute thread, as the server calls it (median of 30 calls,
measured after every round, between the HTTP runs; the median over rounds).

Progress goes to stderr; the table and a line saying where and how it ran go to stdout.

    .venv/bin/python bench/peers.py
    .venv/bin/python bench/peers.py --seconds 8 --rounds 1 --servers ours,fastapi-plain --loads json-64x1
    PYTRITON_PYTHON=.pytriton-venv/bin/python .venv/bin/python bench/peers.py   # after `make bench-tools`
    .venv/bin/python bench/peers.py --device cuda      # every server on the GPU (TorchServe needs Java)

Needs `hey` on PATH, psutil, and for the torchserve peer: pip torchserve + torch-model-archiver and Java
(`make bench-tools` installs them).
Every server it started is killed on exit, also on Ctrl-C and errors.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
DEVICE = "cpu"  # where every server (and the in-process reference) computes: --device
HOST = "127.0.0.1"
DATA_FILE = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
# issue 15's light model: a 784-500 one-mask MADE, the one-class model of the 8s that bench/anomaly.py
# trains (`made train --hidden 500 --order random --epochs 60`); any checkpoint can be given with --model
LIGHT_MODEL = ROOT / "runs" / "oneclass" / "m8"
N_DIMS = 784
CHECK_ROWS = 16
WARMUP_SECONDS = 10
START_TIMEOUT_S = 240
JSON_TYPE = "application/json"
NPY_TYPE = "application/x-npy"
PEERS = ("ours", "ours-2-workers", "fastapi-plain", "torchserve", "pytriton")
# the default run is PEERS; the others are diagnostics
ALL_SERVERS = (*PEERS, "ours-lean-asgi", "minimal-batched", "minimal-batched-process")
LAUNCHED: list[subprocess.Popen] = []  # every server process started, so that exit can stop them all


@dataclass(frozen=True)
class Load:
    name: str
    clients: int
    rows: int
    content_type: str = JSON_TYPE


LOADS = {
    load.name: load
    for load in (
        Load("json-64x1", 64, 1),
        Load("json-16x16", 16, 16),
        Load("json-1x1024", 1, 1024),
        Load("npy-1x1024", 1, 1024, NPY_TYPE),
    )
}


# --- request and answer bodies, per protocol ---------------------------------------------------------


def json_body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": rows.astype(int).tolist()}, separators=(",", ":")).encode()


def json_log_prob(answer: dict) -> np.ndarray:
    return np.asarray(answer["log_prob"], dtype=np.float64)


def kserve_v2_body(rows: np.ndarray) -> bytes:
    """Triton's HTTP API speaks only the KServe v2 protocol: the same rows, as one named FP32 tensor."""
    tensor = {
        "name": "inputs",
        "shape": list(rows.shape),
        "datatype": "FP32",
        "data": rows.astype(int).tolist(),
    }
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def kserve_v2_log_prob(answer: dict) -> np.ndarray:
    output = next(output for output in answer["outputs"] if output["name"] == "log_prob")
    return np.asarray(output["data"], dtype=np.float64)


@dataclass
class Server:
    name: str
    url: str  # the log-prob endpoint that hey drives
    process: subprocess.Popen
    log_path: Path
    accepts_npy: bool = False
    encode_json: Callable[[np.ndarray], bytes] = json_body
    decode_json: Callable[[dict], np.ndarray] = json_log_prob


@dataclass
class RunResult:
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: float
    peak_rss_mb: float
    non_200: int


class Unavailable(Exception):
    """A peer that cannot run on this machine; the message says why."""


def progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --- the rows every server gets ----------------------------------------------------------------------


def validation_rows(n: int) -> np.ndarray:
    with np.load(DATA_FILE) as data:
        packed = data["valid_x"][:n]
    return np.unpackbits(packed, axis=1)[:, :N_DIMS]


def npy_body(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows.astype(np.uint8))
    return buffer.getvalue()


def write_bodies(servers: list[Server], loads: list[Load], workdir: Path) -> dict[tuple[str, str], Path]:
    """One body file per (server, load): the same rows, each in the encoding its server expects."""
    rows = validation_rows(max(load.rows for load in loads))
    paths = {}
    for server in servers:
        for load in loads:
            encode = npy_body if load.content_type == NPY_TYPE else server.encode_json
            path = workdir / f"body-{server.name}-{load.name}"
            path.write_bytes(encode(rows[: load.rows]))
            paths[server.name, load.name] = path
    return paths


# --- HTTP helpers (stdlib only: the bench itself should not depend on an HTTP client library) ---------


def http_status(url: str, body: bytes | None = None, timeout: float = 5) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": JSON_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def post_json(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": JSON_TYPE})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# --- starting and stopping servers ----------------------------------------------------------------


def launch(
    command: list[str], workdir: Path, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    log_path = workdir / f"{name}.log"
    progress(f"starting {name}: {shlex.join(command)} (log: {log_path})")
    with open(log_path, "wb") as log:
        # A session of its own, so that killing the group also ends grandchildren (Java's Python workers).
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    LAUNCHED.append(process)
    return process


def wait_until_ready(server: Server, is_ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            stop(server.process)  # its children may outlive it
            raise Unavailable(f"exited with code {server.process.returncode}; {log_tail(server.log_path)}")
        if is_ready():
            return
        time.sleep(0.5)
    stop(server.process)  # not to take CPU from the servers that do run
    raise Unavailable(f"not ready after {START_TIMEOUT_S} s; {log_tail(server.log_path)}")


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "no log"
    return "last log lines: " + " | ".join(line.strip() for line in tail)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever of it outlives a grace period."""
    tree = process_tree(process.pid)  # taken first: once the root dies, its children are re-parented
    try:
        os.killpg(process.pid, signal.SIGTERM)  # its group id is its pid (start_new_session)
    except ProcessLookupError:
        return  # nothing of it is left
    _, alive = psutil.wait_procs(tree, timeout=10)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # members that left the tree but not the group
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        progress(f"process {process.pid} did not exit after SIGKILL")


def model_repository(model_dir: Path, workdir: Path) -> tuple[Path, str]:
    """`made serve` wants <repository>/<name>/<version>/: use the checkpoint's own when it sits in one."""
    if model_dir.name.isdigit():
        return model_dir.parent.parent, model_dir.parent.name
    repository = workdir / "repository"
    if not (repository / "model" / "1").exists():  # made once, served by each of ours
        (repository / "model").mkdir(parents=True)
        (repository / "model" / "1").symlink_to(model_dir)
    return repository, "model"


def start_ours(model_dir: Path, workdir: Path, check_body: bytes, workers: int = 1) -> Server:
    repository, name = model_repository(model_dir, workdir)
    port = free_port()
    command = [str(VENV_BIN / "made"), "serve", "--model-repository", str(repository), "--port", str(port)]
    label = "ours" if workers == 1 else f"ours-{workers}-workers"
    if workers > 1:
        command += ["--workers", str(workers)]
    server = Server(
        label,
        f"http://{HOST}:{port}/v1/models/{name}/log-prob",
        launch(command, workdir, label, {"MADE_DEVICE": DEVICE}),
        workdir / f"{label}.log",
        accepts_npy=True,
    )
    wait_until_ready(server, lambda: http_status(f"http://{HOST}:{port}/readyz") == 200)
    return server


def start_ours_2_workers(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    """`made serve --workers 2`: a process per core, each with its own models and batchers."""
    return start_ours(model_dir, workdir, check_body, workers=2)


PLAIN_APP = '''\
"""The plainest FastAPI log-prob server: one request, one model call, one torch thread."""

import os
import sys

sys.path.insert(0, {root!r})

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from service import checkpoint

torch.set_num_threads(1)
DEVICE = os.environ.get("PEERS_DEVICE", "cpu")
model, _ = checkpoint.load(os.environ["PEERS_MODEL"], device=DEVICE)
app = FastAPI()


class Rows(BaseModel):
    inputs: list[list[float]]


@app.get("/readyz")
def readyz():
    return {{"ready": True}}


@app.post("/v1/models/{{name}}/log-prob")
def log_prob(name: str, body: Rows):
    with torch.inference_mode():
        x = torch.tensor(body.inputs, dtype=torch.float32, device=DEVICE)
        return {{"log_prob": model.log_prob(x).cpu().tolist()}}
'''


def start_uvicorn_app(name: str, source: str, workdir: Path, path: str, env: dict[str, str]) -> Server:
    """A generated app module, `app` in `source`, under uvicorn on a free port, answering log-prob at
    `path`; the event loop and HTTP parser are uvicorn's defaults, uvloop and httptools where installed, as
    under `made serve`. Ready when its /readyz answers 200."""
    module = name.replace("-", "_")
    app_dir = workdir / module
    app_dir.mkdir()
    (app_dir / f"{module}.py").write_text(source)
    port = free_port()
    command = [str(VENV_BIN / "python"), "-m", "uvicorn", f"{module}:app", "--app-dir", str(app_dir)]
    command += ["--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = Server(
        name, f"http://{HOST}:{port}{path}", launch(command, workdir, name, env), workdir / f"{name}.log"
    )
    wait_until_ready(server, lambda: http_status(f"http://{HOST}:{port}/readyz") == 200)
    return server


def start_checkpoint_app(name: str, template: str, model_dir: Path, workdir: Path) -> Server:
    """An app that loads the checkpoint itself (PEERS_MODEL) and answers at /v1/models/light/log-prob."""
    env = {"PEERS_MODEL": str(model_dir), "PEERS_DEVICE": DEVICE}
    source = template.format(root=str(ROOT))
    return start_uvicorn_app(name, source, workdir, "/v1/models/light/log-prob", env)


def start_fastapi_plain(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    return start_checkpoint_app("fastapi-plain", PLAIN_APP, model_dir, workdir)


LEAN_APP = '''\
"""Our engine behind the leanest ASGI log-prob route: a diagnostic of what the app's own layers cost."""

import os
import sys

sys.path.insert(0, {root!r})

import orjson
from starlette.requests import Request

from service.api import codecs
from service.api.app import create_app

service = create_app()  # its lifespan starts the engine; every other path (/readyz) is its own
NAME = os.environ["PEERS_NAME"]
PATH = f"/v1/models/{{NAME}}/log-prob"
JSON_HEAD = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] != "http" or scope["path"] != PATH:
        return await service(scope, receive, send)
    engine = service.state.engine
    body = await codecs.read_body(Request(scope, receive), engine.settings.max_body_bytes)
    rows, _ = codecs.numeric_rows_from_json(body)
    result = await engine.log_prob(NAME, rows, None, False, engine.deadline(None))
    answer = orjson.dumps({{"log_prob": result.log_prob}}, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = [*JSON_HEAD, (b"content-length", b"%d" % len(answer))]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": answer}})
'''


def start_ours_lean_asgi(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    repository, name = model_repository(model_dir, workdir)
    env = {"PEERS_NAME": name, "MADE_MODEL_REPOSITORY": str(repository), "MADE_DEVICE": DEVICE}
    source = LEAN_APP.format(root=str(ROOT))
    return start_uvicorn_app("ours-lean-asgi", source, workdir, f"/v1/models/{name}/log-prob", env)


MINIMAL_SERVING = """
MAX_DELAY_S = 0.002
MAX_BODY_BYTES = 64 * 1024 * 1024
queue = []  # (rows, future) waiting for the next batch
in_flight = 0  # requests between their body and their answer
wakeup = None


def wake():
    if wakeup is not None and not wakeup.done():
        wakeup.set_result(None)


async def batcher(compute):
    # a batch goes when every request in flight has joined it, or MAX_DELAY_S after its first one
    global queue, wakeup
    loop = asyncio.get_running_loop()
    while True:
        while not queue:
            wakeup = loop.create_future()
            await wakeup
        until = loop.time() + MAX_DELAY_S
        while len(queue) < in_flight and loop.time() < until:
            wakeup = loop.create_future()
            timer = loop.call_at(until, wake)
            await wakeup
            timer.cancel()
        batch, queue = queue, []
        result = await compute([rows for rows, _ in batch])
        start = 0
        for rows, future in batch:
            future.set_result(result[start : start + len(rows)])
            start += len(rows)


async def app(scope, receive, send):
    global in_flight
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            app.batcher = asyncio.create_task(batcher(start_model()))
            await send({{"type": "lifespan.startup.complete"}})
        stop_model()
        await send({{"type": "lifespan.shutdown.complete"}})
        return
    if scope["path"] == "/readyz":
        answer = b'{{"ready":true}}'
    else:
        body = await codecs.read_body(Request(scope, receive), MAX_BODY_BYTES)
        rows, _ = codecs.numeric_rows_from_json(body)
        future = asyncio.get_running_loop().create_future()
        in_flight += 1
        queue.append((rows, future))
        if len(queue) == 1 or len(queue) >= in_flight:
            wake()
        try:
            answer = orjson.dumps({{"log_prob": await future}}, option=orjson.OPT_SERIALIZE_NUMPY)
        finally:
            in_flight -= 1
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": answer}})
"""

MINIMAL_APP = (
    '''\
"""The same model call behind a minimal ASGI route and a minimal batcher: a diagnostic of what our
engine, batcher and app layers cost on the event loop. No checks, deadlines or metrics; the body limit
only."""

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, {root!r})

import numpy as np
import orjson
import torch
from starlette.requests import Request

from service import checkpoint
from service.api import codecs

DEVICE = os.environ.get("PEERS_DEVICE", "cpu")
model, _ = checkpoint.load(os.environ["PEERS_MODEL"], device=DEVICE)
compute_thread = ThreadPoolExecutor(1)  # one compute thread, torch's default threads, as `made serve`


def log_prob(parts):
    x = torch.from_numpy(np.concatenate(parts).astype(np.float32)).to(DEVICE)
    with torch.inference_mode():
        return model.log_prob(x).double().cpu().numpy()


async def compute(parts):
    return await asyncio.get_running_loop().run_in_executor(compute_thread, log_prob, parts)


def start_model():
    return compute


def stop_model():
    compute_thread.shutdown(wait=False)
'''
    + MINIMAL_SERVING
)


def start_minimal_batched(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    return start_checkpoint_app("minimal-batched", MINIMAL_APP, model_dir, workdir)


MINIMAL_PROCESS_APP = (
    '''\
"""minimal-batched with the model in a child process instead of a thread: a diagnostic of the serving
architecture issue 15 proposes (HTTP on the event loop, the model in a process of its own). The event loop
writes each batch's rows to the child through a pipe and reads the answer when the pipe is readable, so
the model's work never waits for the loop's GIL, nor the loop for the model's."""

import asyncio
import multiprocessing
import os
import struct
import sys

sys.path.insert(0, {root!r})

import numpy as np
import orjson
from starlette.requests import Request

from service.api import codecs


def encode(array):
    # a message (multiprocessing.Connection's framing around it): [dtype, 8 bytes][ndim][shape][values]
    head = array.dtype.str.encode().ljust(8) + struct.pack(f"!Q{{array.ndim}}Q", array.ndim, *array.shape)
    return head + np.ascontiguousarray(array).tobytes()


def decode(message):
    dtype, (ndim,) = np.dtype(bytes(message[:8]).decode().strip()), struct.unpack_from("!Q", message, 8)
    shape = struct.unpack_from(f"!{{ndim}}Q", message, 16)
    return np.frombuffer(message, dtype, offset=16 + 8 * ndim).reshape(shape)


def child(requests, answers, model_dir, device):
    # the model process: one torch thread, as the child shares the cores with the event loop's process
    import torch

    from service import checkpoint

    torch.set_num_threads(1)
    model, _ = checkpoint.load(model_dir, device=device)
    with torch.inference_mode():
        while True:
            try:
                rows = decode(requests.recv_bytes())
            except EOFError:
                return
            x = torch.from_numpy(rows.astype(np.float32)).to(device)
            answers.send_bytes(encode(model.log_prob(x).double().cpu().numpy()))


class ModelProcess:
    """The child and the pipes to it; `compute(parts)` is awaited on the loop, one batch at a time. Batches
    are written with blocking writes (the child is idle, reading, while no batch is out); answers are read
    when the pipe is readable, without blocking the loop."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        requests_read, self.requests = context.Pipe(duplex=False)
        self.answers, answers_write = context.Pipe(duplex=False)
        model_dir, device = os.environ["PEERS_MODEL"], os.environ.get("PEERS_DEVICE", "cpu")
        self.process = context.Process(
            target=child, args=(requests_read, answers_write, model_dir, device), daemon=True
        )
        self.process.start()
        requests_read.close()
        answers_write.close()
        self.fd = self.answers.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = bytearray()
        self.waiting = None

    async def compute(self, parts):
        loop = asyncio.get_running_loop()
        self.waiting = loop.create_future()
        self.requests.send_bytes(encode(np.concatenate(parts)))
        loop.add_reader(self.fd, self.readable)
        try:
            return await self.waiting
        finally:
            loop.remove_reader(self.fd)

    def readable(self):
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            self.waiting.set_exception(RuntimeError("the model process exited"))
            return
        self.buffer += chunk
        if len(self.buffer) < 4:
            return
        # Connection's framing: a 4-byte signed length, or -1 and an 8-byte length for large messages
        (length,), size = struct.unpack_from("!i", self.buffer), 4
        if length == -1 and len(self.buffer) >= 12:
            (length,), size = struct.unpack_from("!Q", self.buffer, 4), 12
        if length >= 0 and len(self.buffer) >= size + length:
            message = bytes(self.buffer[size : size + length])
            del self.buffer[: size + length]
            self.waiting.set_result(decode(message))


def start_model():
    app.model_process = ModelProcess()
    return app.model_process.compute


def stop_model():
    app.model_process.process.terminate()
'''
    + MINIMAL_SERVING
)


def start_minimal_batched_process(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    return start_checkpoint_app("minimal-batched-process", MINIMAL_PROCESS_APP, model_dir, workdir)


TORCHSERVE_HANDLER = '''\
"""TorchServe handler: log p(x) of the rows of every request in a batch, one model call per batch."""

import json
import sys

sys.path.insert(0, {root!r})

import numpy as np
import torch

from service import checkpoint

MODEL_DIR = {model_dir!r}
DEVICE = {device!r}
model = None


def request_rows(request):
    body = request.get("body") if request.get("body") is not None else request.get("data")
    if isinstance(body, (bytes, bytearray)):
        body = json.loads(body)
    return np.asarray(body["inputs"], dtype=np.float32).reshape(-1, {n_dims})


def handle(data, context):
    global model
    if model is None:
        model, _ = checkpoint.load(MODEL_DIR, device=DEVICE)
    if data is None:  # TorchServe's initialisation call
        return None
    rows = [request_rows(request) for request in data]
    with torch.inference_mode():
        log_prob = model.log_prob(torch.from_numpy(np.concatenate(rows)).to(DEVICE)).cpu().tolist()
    answers, start = [], 0
    for request_rows_ in rows:
        answers.append({{"log_prob": log_prob[start : start + len(request_rows_)]}})
        start += len(request_rows_)
    return answers
'''


def torchserve_config(workdir: Path, store: Path, ports: dict[str, int]) -> Path:
    models = {
        "light": {
            "1.0": {
                "defaultVersion": True,
                "marName": "light.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 64,
                "maxBatchDelay": 2,
                "responseTimeout": 120,
            }
        }
    }
    lines = [
        f"inference_address=http://{HOST}:{ports['inference']}",
        f"management_address=http://{HOST}:{ports['management']}",
        f"metrics_address=http://{HOST}:{ports['metrics']}",
        f"grpc_inference_address={HOST}",
        f"grpc_management_address={HOST}",
        f"grpc_inference_port={ports['grpc_inference']}",
        f"grpc_management_port={ports['grpc_management']}",
        f"model_store={store}",
        "load_models=light.mar",
        f"models={json.dumps(models)}",
        "disable_token_authorization=true",  # 0.12 turns token auth on by default
        "enable_model_api=true",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
        "default_workers_per_model=1",
        "max_request_size=67108864",
        "max_response_size=67108864",
    ]
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_torchserve(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    for tool in ("torchserve", "torch-model-archiver"):
        if not (VENV_BIN / tool).exists():
            raise Unavailable(f"{tool} is not installed in {VENV_BIN} (pip install --no-deps {tool})")
    if shutil.which("java") is None:
        raise Unavailable("no java on PATH (TorchServe's frontend is Java)")
    ts_dir = workdir / "torchserve"
    store = ts_dir / "store"
    store.mkdir(parents=True)
    handler = ts_dir / "light_handler.py"
    handler.write_text(
        TORCHSERVE_HANDLER.format(root=str(ROOT), model_dir=str(model_dir), n_dims=N_DIMS, device=DEVICE)
    )
    archive = [str(VENV_BIN / "torch-model-archiver"), "--model-name", "light", "--version", "1.0"]
    archive += ["--handler", str(handler), "--export-path", str(store), "--force"]
    archived = subprocess.run(archive, cwd=ts_dir, capture_output=True, text=True)
    if archived.returncode != 0:
        raise Unavailable(f"torch-model-archiver failed: {archived.stderr.strip()[-500:]}")
    ports = {key: free_port() for key in ("inference", "management", "metrics", "grpc_inference")}
    ports["grpc_management"] = free_port()
    config = torchserve_config(ts_dir, store, ports)
    # --foreground keeps the Java frontend a child of this process tree, so CPU and RSS include it.
    command = [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth"]
    command += ["--model-store", str(store), "--ts-config", str(config)]
    logs = {"LOG_LOCATION": str(ts_dir / "logs"), "METRICS_LOCATION": str(ts_dir / "logs")}
    server = Server(
        "torchserve",
        f"http://{HOST}:{ports['inference']}/predictions/light",
        launch(command, ts_dir, "torchserve", logs),
        ts_dir / "torchserve.log",
    )
    wait_until_ready(server, lambda: http_status(server.url, check_body, timeout=30) == 200)
    return server


PYTRITON_SERVER = '''\
"""Triton Inference Server through PyTriton: log p(x) with Triton's dynamic batcher, on the CPU."""

import os
import sys
import sysconfig

sys.path.insert(0, {root!r})
sys.path.append({project_site_packages!r})  # torch from the project's venv; PyTriton's own numpy first

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from service import checkpoint

# The bundled Python-backend stub links libpython3.X.so; without this it can load the system's copy, whose
# C runtime does not match this interpreter's standard library.
os.environ["LD_LIBRARY_PATH"] = ":".join(
    filter(None, [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")])
)
DEVICE = {device!r}
model, _ = checkpoint.load({model_dir!r}, device=DEVICE)


@batch
def infer(inputs):
    with torch.inference_mode():
        log_prob = model.log_prob(torch.from_numpy(inputs).to(DEVICE)).cpu()
        return {{"log_prob": log_prob.numpy().astype(np.float64)}}


ports = dict(http_port={http_port}, grpc_port={grpc_port}, metrics_port={metrics_port})
config = TritonConfig(http_address="{host}", grpc_address="{host}", **ports)
with Triton(config=config, workspace={workspace!r}) as triton:
    triton.bind(
        model_name="light",
        infer_func=infer,
        inputs=[Tensor(name="inputs", dtype=np.float32, shape=({n_dims},))],
        outputs=[Tensor(name="log_prob", dtype=np.float64, shape=(-1,))],
        config=ModelConfig(
            max_batch_size={max_batch_rows},
            batcher=DynamicBatcher(max_queue_delay_microseconds={max_delay_us}),
        ),
    )
    triton.serve()
'''


def pytriton_python() -> Path:
    """PyTriton pins numpy<2, which the project's venv cannot take: it may live in a venv of its own. A
    relative PYTRITON_PYTHON is taken from the working directory (the server starts in another); made
    absolute without resolving links, since a venv's python is a link out of the venv."""
    return Path(os.path.abspath(os.environ.get("PYTRITON_PYTHON", VENV_BIN / "python")))


def start_pytriton(model_dir: Path, workdir: Path, check_body: bytes) -> Server:
    python = pytriton_python()
    found = subprocess.run([str(python), "-c", "import pytriton"], capture_output=True, text=True)
    if found.returncode != 0:
        raise Unavailable(
            f"{python} cannot import pytriton (nvidia-pytriton needs numpy<2, the project has numpy "
            f"{np.__version__}: install it in a venv of its own and set PYTRITON_PYTHON to its python)"
        )
    triton_dir = workdir / "pytriton"
    triton_dir.mkdir()
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    script = triton_dir / "pytriton_server.py"
    script.write_text(
        PYTRITON_SERVER.format(
            root=str(ROOT),
            project_site_packages=sysconfig.get_paths()["purelib"],
            model_dir=str(model_dir),
            device=DEVICE,
            host=HOST,
            workspace=str(triton_dir / "workspace"),
            n_dims=N_DIMS,
            # Like ours' defaults: up to 4096 rows per model call, at most 2 ms waiting for more.
            max_batch_rows=4096,
            max_delay_us=2000,
            **ports,
        )
    )
    base_url = f"http://{HOST}:{ports['http_port']}/v2/models/light"
    server = Server(
        "pytriton",
        f"{base_url}/infer",
        launch([str(python), str(script)], triton_dir, "pytriton"),
        triton_dir / "pytriton.log",
        encode_json=kserve_v2_body,
        decode_json=kserve_v2_log_prob,
    )
    wait_until_ready(server, lambda: http_status(f"{base_url}/ready") == 200)
    return server


STARTERS: dict[str, Callable[[Path, Path, bytes], Server]] = {
    "ours": start_ours,
    "ours-2-workers": start_ours_2_workers,
    "fastapi-plain": start_fastapi_plain,
    "torchserve": start_torchserve,
    "pytriton": start_pytriton,
    "ours-lean-asgi": start_ours_lean_asgi,
    "minimal-batched": start_minimal_batched,
    "minimal-batched-process": start_minimal_batched_process,
}


# --- agreement check -------------------------------------------------------------------------------


def check_same_numbers(servers: list[Server]) -> None:
    """Every server must answer the same log-probabilities, or comparing their speed is meaningless."""
    rows = validation_rows(CHECK_ROWS)
    answers = {
        server.name: server.decode_json(post_json(server.url, server.encode_json(rows))) for server in servers
    }
    reference_name, reference = next(iter(answers.items()))
    for name, answer in answers.items():
        if answer.shape != reference.shape or not np.allclose(answer, reference, rtol=1e-4):
            sys.exit(
                f"ABORT: {name} and {reference_name} disagree on the same {CHECK_ROWS} rows:\n"
                f"  {name}: {answer[:4]}...\n  {reference_name}: {reference[:4]}..."
            )
    progress(f"all {len(servers)} servers agree on {CHECK_ROWS} rows (log p[0] = {reference[0]:.4f} nats)")


# --- resource use of a server's process tree --------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS, so the peak is this run's, not start-up's.
    for process in process_tree(pid):
        try:
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")
        except OSError:
            pass


def tree_peak_rss_mb(pid: int) -> float:
    total_kb = 0
    for process in process_tree(pid):
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total_kb += int(match.group(1)) if match else 0
    return total_kb / 1024


# --- driving a load with hey ------------------------------------------------------------------------


def hey_command(server: Server, load: Load, body_path: Path, seconds: int) -> list[str]:
    command = ["hey", "-z", f"{seconds}s", "-c", str(load.clients), "-m", "POST"]
    return command + ["-T", load.content_type, "-D", str(body_path), server.url]


def run_hey(server: Server, load: Load, body_path: Path, seconds: int) -> str:
    command = hey_command(server, load, body_path, seconds)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if finished.returncode != 0:
        raise RuntimeError(f"hey failed ({finished.returncode}): {finished.stderr.strip()[-500:]}")
    return finished.stdout


def parse_hey(output: str) -> tuple[float, float, float, int]:
    """Requests/sec, p50 and p99 in ms, and responses that were not 200 (error lines included)."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"50%+ in ([\d.]+) secs", output)
    # hey leaves out a percentile it has fewer than 100 samples for; then the nearest-rank p99 is the
    # slowest request, which hey always prints.
    p99 = re.search(r"99%+ in ([\d.]+) secs", output) or re.search(r"Slowest:\s+([\d.]+) secs", output)
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", output)
    non_200 = sum(int(count) for status, count in statuses if status != "200")
    # hey lists connection failures and timeouts under "Error distribution" as "[count]\tmessage".
    errors_section = output.split("Error distribution:", 1)[1] if "Error distribution:" in output else ""
    non_200 += sum(int(count) for count in re.findall(r"^\s*\[(\d+)\]\s+\D", errors_section, re.MULTILINE))
    nan = float("nan")
    return (
        float(rate.group(1)) if rate else 0.0,
        float(p50.group(1)) * 1000 if p50 else nan,
        float(p99.group(1)) * 1000 if p99 else nan,
        non_200,
    )


def measure(server: Server, load: Load, body_path: Path, seconds: int) -> RunResult:
    pid = server.process.pid
    reset_peak_rss(pid)
    cpu_before = tree_cpu_seconds(pid)
    output = run_hey(server, load, body_path, seconds)
    cpu_used = tree_cpu_seconds(pid) - cpu_before
    requests_per_s, p50_ms, p99_ms, non_200 = parse_hey(output)
    return RunResult(requests_per_s * load.rows, p50_ms, p99_ms, cpu_used, tree_peak_rss_mb(pid), non_200)


def serves(server: Server, load: Load) -> bool:
    return load.content_type != NPY_TYPE or server.accepts_npy


# --- report ------------------------------------------------------------------------------------------


def median_result(results: list[RunResult]) -> RunResult:
    def median(field: str) -> float:
        return statistics.median(getattr(result, field) for result in results)

    return RunResult(
        median("rows_per_s"),
        median("p50_ms"),
        median("p99_ms"),
        median("cpu_s"),
        median("peak_rss_mb"),
        sum(result.non_200 for result in results),
    )


def table(server_names: list[str], loads: list[Load], results: dict[tuple[str, str], list[RunResult]]) -> str:
    header = "| server | load | rows/s | p50 ms | p99 ms | CPU s | peak RSS MB | non-200 | rows/s vs ours |"
    lines = [header, "|" + "---|" * 9]
    for load in loads:
        ours = results.get(("ours", load.name))
        ours_rate = median_result(ours).rows_per_s if ours else None
        for name in server_names:
            runs = results.get((name, load.name))
            if not runs:
                lines.append(f"| {name} | {load.name} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
                continue
            row = median_result(runs)
            ratio = f"{row.rows_per_s / ours_rate:.2f}x" if ours_rate else "n/a"
            lines.append(
                f"| {name} | {load.name} | {row.rows_per_s:,.0f} | {row.p50_ms:.1f} | {row.p99_ms:.1f} "
                f"| {row.cpu_s:.1f} | {row.peak_rss_mb:,.0f} | {row.non_200} | {ratio} |"
            )
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------


def names(text: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (known: {', '.join(allowed)})"
        )
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers",
        type=lambda text: names(text, ALL_SERVERS, "server"),
        default=list(PEERS),
        help=f"comma-separated subset of {','.join(ALL_SERVERS)} (default: {','.join(PEERS)}, those that "
        "run here)",
    )
    parser.add_argument(
        "--loads",
        type=lambda text: names(text, list(LOADS), "load"),
        default=list(LOADS),
        help=f"comma-separated subset of {','.join(LOADS)} (default: all)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per (server, load) run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians over them")
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP_SECONDS,
        help="seconds of unmeasured load per (server, load) before the first round (default: %(default)s)",
    )
    parser.add_argument(
        "--model", type=Path, default=LIGHT_MODEL, help="checkpoint directory (default: %(default)s)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where every server computes: cpu, cuda or cuda:N (ours gets MADE_DEVICE; the peers' handlers "
        "move the model and each batch there). Default: %(default)s",
    )
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--seconds, --rounds and --warmup must be at least 1")
    return args


def start_servers(
    wanted: list[str], model_dir: Path, workdir: Path, check_body: bytes
) -> tuple[list[Server], dict[str, str]]:
    servers, not_run = [], {}
    for name in wanted:
        try:
            servers.append(STARTERS[name](model_dir, workdir, check_body))
            progress(f"{name} is ready")
        except Unavailable as reason:
            not_run[name] = str(reason)
            progress(f"{name} does not run here: {reason}")
    return servers, not_run


def run_rounds(
    servers: list[Server],
    loads: list[Load],
    bodies: dict[tuple[str, str], Path],
    seconds: int,
    rounds: int,
    warmup: int,
    after_round: Callable[[], None] = lambda: None,
) -> dict[tuple[str, str], list[RunResult]]:
    pairs = [(load, server) for load in loads for server in servers if serves(server, load)]
    for load, server in pairs:
        progress(f"warm-up {server.name} / {load.name} ({warmup} s)")
        run_hey(server, load, bodies[server.name, load.name], warmup)
    results: dict[tuple[str, str], list[RunResult]] = {}
    for round_number in range(1, rounds + 1):
        for load, server in pairs:  # servers interleaved within each load, every round
            result = measure(server, load, bodies[server.name, load.name], seconds)
            results.setdefault((server.name, load.name), []).append(result)
            progress(
                f"round {round_number}/{rounds} {server.name} / {load.name}: "
                f"{result.rows_per_s:,.0f} rows/s, p50 {result.p50_ms:.1f} ms, "
                f"p99 {result.p99_ms:.1f} ms, non-200 {result.non_200}"
            )
        after_round()
    return results


class InProcess:
    """The reference for the 1 x 1,024 loads: the forward as our server calls it, compute.log_prob's batch
    function for the model's default ensemble, in a compute thread of its own (torch's default threads, as
    the server's), on the same rows. `measure()` runs after every round, between the HTTP runs, so the
    reference sees the same machine they do (its speed drifts by tens of percent here); each time, rows/s
    at the median of `repeats` calls after 3 warm-up calls."""

    def __init__(self, model_dir: Path, rows: np.ndarray, repeats: int = 30):
        sys.path.insert(0, str(ROOT))
        from service import checkpoint
        from service.api import compute
        from service.api.registry import ServedModel

        model, config = checkpoint.load(model_dir, device=DEVICE)
        served = ServedModel(model_dir.name, 1, model_dir, model, config, model.device, time.time(), 0.0)
        self.forward = compute.log_prob(served, model.resolve_masks(None), False, False)
        # the rows as the server gets them from a JSON body (int64); it checks their values in the batch
        self.payloads = [(rows.astype(np.int64),)]
        self.rows, self.repeats = len(rows), repeats
        self.rows_per_s: list[float] = []

    def measure(self) -> None:
        seconds = []
        with ThreadPoolExecutor(1, thread_name_prefix="compute") as thread:
            for _ in range(3):
                thread.submit(self.forward, self.payloads).result()
            for _ in range(self.repeats):
                started = time.perf_counter()
                thread.submit(self.forward, self.payloads).result()
                seconds.append(time.perf_counter() - started)
        self.rows_per_s.append(self.rows / statistics.median(seconds))
        progress(f"in-process forward: {self.rows_per_s[-1]:,.0f} rows/s")


def big_loads(loads: list[Load], servers: list[str]) -> list[Load]:
    """The loads that are compared with the in-process forward: one client, and ours among the servers."""
    return [load for load in loads if load.clients == 1] if "ours" in servers else []


def against_in_process(
    reference: InProcess, loads: list[Load], results: dict[tuple[str, str], list[RunResult]]
) -> list[str]:
    """Lines for the table's notes: ours on each 1 x 1,024 load as a share of the in-process forward."""
    forward = statistics.median(reference.rows_per_s)
    rounds = ", ".join(f"{value:,.0f}" for value in reference.rows_per_s)
    lines = [
        f"- in-process forward (compute thread, {reference.rows} rows): {forward:,.0f} rows/s "
        f"(median of the rounds: {rounds})"
    ]
    for load in loads:
        runs = results["ours", load.name]
        ours = median_result(runs).rows_per_s
        # each round against the reference measured right after it: the machine's drift cancels out
        shares = [run.rows_per_s / value for run, value in zip(runs, reference.rows_per_s, strict=True)]
        lines.append(
            f"- ours {load.name} over HTTP: {ours:,.0f} rows/s = {ours / forward:.0%} of in-process; "
            f"round by round {', '.join(f'{share:.0%}' for share in shares)}, "
            f"median {statistics.median(shares):.0%}"
        )
    return lines


def command_line() -> str:
    environment = (
        [f"PYTRITON_PYTHON={os.environ['PYTRITON_PYTHON']}"] if "PYTRITON_PYTHON" in os.environ else []
    )
    return shlex.join([*environment, sys.executable, *sys.argv])


def raise_on_signal(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def prepare(model: Path) -> Path:
    """The checkpoint directory, once hey and the checkpoint are found (else exit saying which is not);
    SIGTERM and SIGINT then raise, so that a `finally` stops the servers started."""
    if shutil.which("hey") is None:
        sys.exit("hey is not on PATH")
    model_dir = model.resolve()
    if not (model_dir / "config.json").is_file():
        sys.exit(f"{model_dir} is no checkpoint: run bench/anomaly.py (it trains it) or give --model")
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, raise_on_signal)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    args = parse_args(argv)
    DEVICE = args.device
    model_dir = prepare(args.model)
    load_before = os.getloadavg()
    loads = [LOADS[name] for name in args.loads]
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        workdir = Path(tmp)
        try:
            check_body = json_body(validation_rows(CHECK_ROWS))
            servers, not_run = start_servers(args.servers, model_dir, workdir, check_body)
            if not servers:
                sys.exit("no server could be started")
            check_same_numbers(servers)
            bodies = write_bodies(servers, loads, workdir)
            big = big_loads(loads, [server.name for server in servers])
            reference = InProcess(model_dir, validation_rows(max(load.rows for load in big))) if big else None
            after_round = reference.measure if reference else lambda: None
            results = run_rounds(servers, loads, bodies, args.seconds, args.rounds, args.warmup, after_round)
        finally:
            progress(f"stopping {len(LAUNCHED)} server process(es)")
            for process in LAUNCHED:
                stop(process)
    print(table([server.name for server in servers], loads, results))
    print()
    for line in against_in_process(reference, big, results) if reference else []:
        print(line)
    for name, reason in not_run.items():
        print(f"- {name}: not run: {reason}")
    if any(server.encode_json is kserve_v2_body for server in servers):
        print("- pytriton gets the same rows as KServe v2 JSON (one FP32 tensor): Triton's only HTTP body.")
    print(
        f"Medians of {args.rounds} round(s) of {args.seconds} s per (server, load) after a "
        f"{args.warmup} s warm-up; non-200 summed over rounds."
    )
    load_average = ", ".join(f"{value:.2f}" for value in load_before)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine {platform.node()} ({os.cpu_count()} CPUs), "
        f"device {DEVICE}; "
        f"load average before start {load_average}; command: {command_line()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
