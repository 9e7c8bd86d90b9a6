#!/usr/bin/env python3
"""Throughput and latency of the dynamic batcher, over real HTTP on loopback.

Starts the real server (`made serve`) as a subprocess twice on a free 127.0.0.1 port: once with dynamic
batching on (the default settings, --max-batch-rows 4096 --max-batch-delay-ms 2) and once with it off
(--max-batch-rows 1 --max-batch-delay-ms 0: every row is its own model call). Against each, C concurrent
clients (asyncio tasks sharing one httpx client with C keep-alive connections) each send R JSON log-prob
requests of B valid rows. Every request must answer 200 with B log-probabilities, or it counts as an error.
The table also gives the CPU cores this script's client and the server used over the measured requests:
a Python client at 64 connections can use most of a core itself, and then it, not the server, sets the
rate; above half a core the output says CLIENT-BOUND (bench/peers.py measures the server with `hey`).

Progress goes to stderr; the result is a markdown table on stdout (and, with --out FILE, in FILE together
with the machine it ran on and the exact command line). The server is stopped with SIGTERM and must exit 0.

    .venv/bin/python bench/throughput.py --quick
    .venv/bin/python bench/throughput.py --clients 32 --requests-per-client 50 --rows 8 --out /tmp/bench.md

Only 127.0.0.1 is contacted. Counts are bounded (--clients x --requests-per-client) and so is time
(--max-seconds per mode; clients stop sending when it runs out).
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
except ImportError:  # run as `bench/throughput.py` by a Python without the project's packages
    if VENV_PYTHON.exists() and not os.environ.get("THROUGHPUT_BENCH_REEXEC"):  # once, never in a loop
        os.environ["THROUGHPUT_BENCH_REEXEC"] = "1"
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit("bench/throughput.py needs httpx and numpy: run it with the project's .venv/bin/python")

import argparse
import asyncio
import importlib.metadata
import json
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

HOST = "127.0.0.1"
MODES = {
    "batching on": ["--max-batch-rows", "4096", "--max-batch-delay-ms", "2"],
    # merges what queued up while the model was busy, but never waits for more
    "merge, no wait": ["--max-batch-rows", "4096", "--max-batch-delay-ms", "0"],
    "batching off": ["--max-batch-rows", "1", "--max-batch-delay-ms", "0"],
}
# No repository polling while measuring: nothing but the measured requests runs in the server.
SERVER_ENV = {"MADE_RELOAD_POLL_S": "0"}
COLUMNS = [
    "mode",
    "model",
    "clients",
    "rows/request",
    "requests",
    "rows/s",
    "requests/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "client CPU cores",
    "server CPU cores",
]
# Above this share of a core, this script's own Python client is likely what limits the rate, not the
# server: the table then says so (bench/peers.py drives the same server with the compiled `hey`).
CLIENT_BOUND_CORES = 0.5


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model-repository", default="models", help="model repository the server serves")
    p.add_argument("--model", default="binarized-mnist", help="model to send log-prob requests to")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 16; --quick: 8)")
    p.add_argument(
        "--requests-per-client",
        type=int,
        default=None,
        help="requests each client sends (default 20; --quick: 10)",
    )
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        metavar="MODE",
        help=f"batching modes to measure, in this order (from: {', '.join(repr(m) for m in MODES)})",
    )
    p.add_argument("--quick", action="store_true", help="small counts, to check that everything works")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="time bound per mode; clients stop sending after it (default 120; --quick: 15)",
    )
    p.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help="unmeasured requests per mode before measuring (default 2 per client; --quick: 1)",
    )
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument(
        "--made", default=None, help="the made executable (default: beside this Python, else PATH)"
    )
    p.add_argument("--out", help="also write the table and the machine info to this file")
    args = p.parse_args(argv)
    quick = args.quick
    args.clients = args.clients if args.clients is not None else (8 if quick else 16)
    args.requests_per_client = (
        args.requests_per_client if args.requests_per_client is not None else (10 if quick else 20)
    )
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (15.0 if quick else 120.0)
    if args.warmup_requests is None:
        args.warmup_requests = args.clients * (1 if quick else 2)
    for name in ("clients", "requests_per_client", "rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_seconds <= 0:
        p.error("--max-seconds must be positive")
    return args


def made_executable(given: str | None) -> str:
    if given:
        return given
    beside = Path(sys.executable).parent / "made"
    if beside.exists():
        return str(beside)
    found = shutil.which("made")
    if found:
        return found
    sys.exit("cannot find the made executable; pass --made PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- the server -----------------------------------------------------------------------------------------
class Server:
    def __init__(
        self,
        made: str,
        repository: Path,
        port: int,
        flags: list[str],
        log_path: Path,
        env: dict | None = None,
    ):
        self.env = {**os.environ, **SERVER_ENV} if env is None else env  # the server's whole environment
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.command = [
            made,
            "serve",
            "--model-repository",
            str(repository),
            "--host",
            HOST,
            "--port",
            str(port),
            *flags,
        ]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float) -> None:
        log(f"starting: {shlex.join(self.command)} (log: {self.log_path})")
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )
        started = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with status {self.process.returncode} before it was "
                        f"ready:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(
                        f"the server was not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
                    )
                time.sleep(0.25)
        log(f"ready after {time.monotonic() - started:.1f} s")

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM, then wait; returns the exit status (None if it had to be killed)."""
        if self.process is None:
            return None
        status = self.process.poll()
        if status is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log(f"the server did not exit {timeout_s:.0f} s after SIGTERM; killing it")
                self.process.kill()
                self.process.wait()
                status = None
        self._log_file.close()
        return status

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


# ---- the clients -----------------------------------------------------------------------------------------
def request_bodies(info: dict, rows: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` JSON bodies of `rows` rows each, valid for the model's likelihood and dimensions."""
    likelihood = info["likelihood"]
    n_dims = info["n_dims"]
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        if likelihood["name"] == "bernoulli":
            x = rng.integers(0, 2, size=(rows, n_dims)).tolist()
        elif likelihood["name"] == "categorical":
            x = rng.integers(0, likelihood["categories"], size=(rows, n_dims)).tolist()
        else:  # gaussian, mog: every finite real is in the support
            x = np.round(rng.standard_normal((rows, n_dims)), 4).tolist()
        bodies.append(json.dumps({"inputs": x}, separators=(",", ":")).encode())
    return bodies


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    sent: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    batches: tuple[float, float] = (0.0, 0.0)  # (model calls, rows) of the measured requests, from /metrics
    client_cpu_s: float = 0.0  # this process's user + system CPU time over the measured requests
    server_cpu_s: float = 0.0  # the server process's, over the same window


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds so far of this process, or of process `pid` (from /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def drive(
    base: str,
    model: str,
    bodies: list[bytes],
    rows: int,
    clients: int,
    per_client: int,
    max_seconds: float,
    warmup: int,
    server_pid: int,
) -> Outcome:
    url = f"{base}/v1/models/{model}/log-prob"
    headers = {"content-type": "application/json"}
    outcome = Outcome()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:

        async def one(body: bytes, record: bool) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code == 200 and len(response.json()["log_prob"]) == rows
                problem = None if ok else f"{response.status_code} {response.text[:200]}"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
            if not record:
                if problem:
                    log(f"warm-up request failed: {problem}")
                return
            outcome.sent += 1
            if ok:
                outcome.latencies.append(time.perf_counter() - started)
            else:
                outcome.errors += 1
                if len(outcome.error_samples) < 5:
                    outcome.error_samples.append(problem)

        # Warm-up: open the connections and exercise the server before the clock starts.
        await asyncio.gather(*(one(bodies[i % len(bodies)], False) for i in range(warmup)))

        metrics_url = f"{base}/metrics"
        calls_before, rows_before = batch_stats((await client.get(metrics_url)).text, model)
        stop_at = time.perf_counter() + max_seconds
        progress_every = max(1, clients * per_client // 5)

        async def client_loop(index: int) -> None:
            for r in range(per_client):
                if time.perf_counter() > stop_at:
                    return
                await one(bodies[(index + r) % len(bodies)], True)
                if outcome.sent % progress_every == 0:
                    log(f"  {outcome.sent}/{clients * per_client} requests, {outcome.errors} errors")

        started = time.perf_counter()
        client_cpu, server_cpu = cpu_seconds(), cpu_seconds(server_pid)
        await asyncio.gather(*(client_loop(i) for i in range(clients)))
        outcome.elapsed = time.perf_counter() - started
        outcome.client_cpu_s = cpu_seconds() - client_cpu
        outcome.server_cpu_s = cpu_seconds(server_pid) - server_cpu
        calls_after, rows_after = batch_stats((await client.get(metrics_url)).text, model)
        outcome.batches = (calls_after - calls_before, rows_after - rows_before)
        if outcome.elapsed > max_seconds:
            log(
                f"  time bound of {max_seconds:g} s reached: {outcome.sent} of {clients * per_client} "
                "requests sent"
            )
    return outcome


def batch_stats(text: str, model: str) -> tuple[float, float]:
    """(model calls, rows) so far for the model's log_prob batches, from the server's /metrics text."""
    values = {}
    for kind in ("count", "sum"):
        pattern = rf"^made_batch_rows_{kind}\{{([^}}]*)\}} ([0-9.e+-]+)$"
        for match in re.finditer(pattern, text, re.MULTILINE):
            labels = match.group(1)
            if f'model="{model}"' in labels and 'operation="log_prob"' in labels:
                values[kind] = values.get(kind, 0.0) + float(match.group(2))
    return values.get("count", 0.0), values.get("sum", 0.0)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(np.percentile(np.asarray(sorted_values), q))


def row_of(mode: str, args, outcome: Outcome) -> dict:
    ok = len(outcome.latencies)
    elapsed = outcome.elapsed or float("nan")
    latencies = sorted(outcome.latencies)
    return {
        "mode": mode,
        "model": args.model,
        "clients": args.clients,
        "rows/request": args.rows,
        "requests": outcome.sent,
        "rows/s": f"{ok * args.rows / elapsed:.1f}",
        "requests/s": f"{ok / elapsed:.1f}",
        "p50 ms": f"{percentile(latencies, 50) * 1000:.1f}",
        "p95 ms": f"{percentile(latencies, 95) * 1000:.1f}",
        "p99 ms": f"{percentile(latencies, 99) * 1000:.1f}",
        "errors": outcome.errors,
        "client CPU cores": f"{outcome.client_cpu_s / elapsed:.2f}",
        "server CPU cores": f"{outcome.server_cpu_s / elapsed:.2f}",
    }


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def machine_info(args, made: str) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "unknown"
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    modes = "; ".join(f"{m}: `{shlex.join(MODES[m])}`" for m in args.modes)
    env = " ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
    return [
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- command: `{shlex.join([sys.executable, *sys.argv])}`",
        f"- CPU: {cpu}; cores: {cores} ({usable} usable by this process); load average at the end: {load}",
        (
            f"- torch {torch_version}; Python {platform.python_version()}; httpx {httpx.__version__}; "
            f"{platform.system()} {platform.release()}"
        ),
        (
            f"- server: `{made} serve --model-repository {args.model_repository} --host {HOST} --port <free "
            "port>` "
            f"plus the mode's flags ({modes}); environment {env}"
        ),
        (
            f"- load: {args.clients} clients x {args.requests_per_client} requests of {args.rows} rows "
            "(JSON log-prob), "
            f"{args.warmup_requests} warm-up requests per mode, at most {args.max_seconds:g} s per mode"
        ),
        "- rows/s, requests/s and latency percentiles count successful requests; requests counts all that "
        "were sent",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    made = made_executable(args.made)
    repository = Path(args.model_repository).resolve()
    if not repository.is_dir():
        sys.exit(f"no model repository at {repository}")
    results, notes, failures = [], [], []
    with tempfile.TemporaryDirectory(prefix="made-bench-") as tmp:
        for mode in args.modes:
            flags = MODES[mode]
            port = args.port or free_port()
            server = Server(made, repository, port, flags, Path(tmp) / f"server-{port}.log")
            log(f"mode: {mode}")
            try:
                server.start(args.startup_timeout)
                info_response = httpx.get(f"{server.base}/v1/models/{args.model}", timeout=10)
                if info_response.status_code != 200:
                    raise RuntimeError(
                        f"GET /v1/models/{args.model}: {info_response.status_code} {info_response.text[:300]}"
                    )
                bodies = request_bodies(info_response.json(), args.rows, count=min(8, args.clients))
                log(
                    f"measuring: {args.clients} clients x {args.requests_per_client} requests x {args.rows} "
                    "rows"
                )
                outcome = asyncio.run(
                    drive(
                        server.base,
                        args.model,
                        bodies,
                        args.rows,
                        args.clients,
                        args.requests_per_client,
                        args.max_seconds,
                        args.warmup_requests,
                        server.process.pid,
                    )
                )
                calls, batched_rows = outcome.batches
                results.append(row_of(mode, args, outcome))
                if calls:
                    notes.append(
                        f"- {mode}: {int(calls)} model calls for {int(batched_rows)} rows "
                        f"({batched_rows / calls:.2f} rows per model call; server's made_batch_rows, "
                        "measured requests only)"
                    )
                client_cores = outcome.client_cpu_s / (outcome.elapsed or float("nan"))
                if client_cores > CLIENT_BOUND_CORES:
                    notes.append(
                        f"- {mode}: CLIENT-BOUND: this script's Python client used {client_cores:.2f} of "
                        f"{os.cpu_count()} cores, so these rates say more about the client than the server; "
                        "bench/peers.py drives the server with the compiled `hey`"
                    )
                for problem in outcome.error_samples:
                    log(f"  error: {problem}")
                log(f"done: {outcome.sent} requests in {outcome.elapsed:.2f} s, {outcome.errors} errors")
            except Exception as exc:  # noqa: BLE001  (report, stop the server, go on to the next mode)
                failures.append(f"{mode}: {exc}")
                log(f"FAILED: {exc}")
            finally:
                status = server.stop()
                if status == 0:
                    log("server stopped by SIGTERM: exit status 0")
                else:
                    failures.append(f"{mode}: the server's exit status after SIGTERM was {status}, not 0")
                    log(f"server exit status after SIGTERM: {status}\n{server.log_tail()}")

    table = markdown_table(results)
    print(table)
    if notes:
        print()
        print("\n".join(notes))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    if args.out:
        text = ["# made-service batching benchmark", "", table, ""]
        if notes:
            text += [*notes, ""]
        text += ["## Machine and command", "", *machine_info(args, made), ""]
        if failures:
            text += ["## Failures", "", *(f"- {f}" for f in failures), ""]
        Path(args.out).write_text("\n".join(text))
        log(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
