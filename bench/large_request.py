#!/usr/bin/env python3
"""One large request over HTTP: N rows as an .npy body (and as JSON), timed end to end.

Starts the real server on loopback, sends the rows of ../shared/data/binarized_mnist.npz (repeated to N),
and prints a table: format | rows | body MB | seconds (best of --repeat) | rows/s | server peak RSS MB (the
server process's resident-set high-water mark while it answered that format's requests; its idle size
after loading is printed below the table). Progress on stderr.

    bench/large_request.py                      # 100,000 rows as .npy, 20,000 as JSON
    bench/large_request.py --npy-rows 10000 --json-rows 2000 --repeat 1     # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Server, free_port, log, made_executable  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"


def mnist_rows(n: int) -> np.ndarray:
    packed = np.load(DATA)["train_x"]
    bits = np.unpackbits(packed, axis=1)[:, :784]
    return np.resize(bits, (n, 784)).astype(np.uint8)


def rss_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Start a new high-water mark: writing 5 to clear_refs resets VmHWM to the current size (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def timed(client: httpx.Client, url: str, body: bytes, headers: dict, repeat: int) -> float:
    best = float("inf")
    for i in range(repeat):
        started = time.perf_counter()
        answer = client.post(url, content=body, headers=headers)
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        log(f"  try {i + 1}: {elapsed:.2f} s")
        best = min(best, elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", default="models")
    parser.add_argument("--model", default="binarized-mnist")
    parser.add_argument("--npy-rows", type=int, default=100_000)
    parser.add_argument("--json-rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    server = Server(
        made_executable(None),
        ROOT / args.model_repository,
        free_port(),
        [],
        Path("/tmp") / "made-bench-large.log",
    )
    server.start(timeout_s=120)
    url = f"{server.base}/v1/models/{args.model}/log-prob"
    table = []
    pid = server.process.pid  # `made serve` with one worker serves in this process
    idle = rss_mb(pid, "VmRSS")
    try:
        with httpx.Client(timeout=600) as client:
            rows = mnist_rows(max(args.npy_rows, args.json_rows))
            buffer = io.BytesIO()
            np.save(buffer, rows[: args.npy_rows])
            body = buffer.getvalue()
            log(f".npy: {args.npy_rows} rows, {len(body) / 1e6:.1f} MB")
            reset_peak(pid)
            seconds = timed(
                client,
                url,
                body,
                {"content-type": "application/x-npy", "accept": "application/x-npy"},
                args.repeat,
            )
            table.append(("npy in, npy out", args.npy_rows, len(body), seconds, rss_mb(pid, "VmHWM")))
            body = json.dumps({"inputs": rows[: args.json_rows].tolist()}).encode()
            log(f"JSON: {args.json_rows} rows, {len(body) / 1e6:.1f} MB")
            reset_peak(pid)
            seconds = timed(client, url, body, {"content-type": "application/json"}, args.repeat)
            table.append(("JSON in, JSON out", args.json_rows, len(body), seconds, rss_mb(pid, "VmHWM")))
    finally:
        status = server.stop()
        log(f"server exited with status {status}")
    print("| format | rows | body MB | seconds | rows/s | server peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for fmt, n, size, seconds, peak in table:
        print(f"| {fmt} | {n} | {size / 1e6:.1f} | {seconds:.2f} | {n / seconds:,.0f} | {peak:,.0f} |")
    print(
        f"\nServer resident set after loading every model of {args.model_repository}, before any request: "
        f"{idle:,.0f} MB."
    )
    print(
        f"\n{datetime.now(UTC).isoformat(timespec='seconds')}; `{shlex.join([sys.argv[0], *sys.argv[1:]])}`; "
        f"{platform.processor() or platform.machine()}; Python {platform.python_version()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
