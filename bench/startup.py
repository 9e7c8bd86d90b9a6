#!/usr/bin/env python3
"""How soon a (re)started server serves: process start to /healthz, to each model's first answer, and to
/readyz, for the bundled model repository (what a Kubernetes restart costs).

Each round starts `made serve` on loopback, polls every 20 ms, records when /healthz first answers, when
each model's /v2/models/{name}/ready first answers 200 and when /readyz does, then stops the server with
SIGKILL (as a crashed pod) and starts the next round at once. Prints a table of the medians, minimum and
maximum over the rounds, and the per-model load times the server reports. Progress on stderr.

    bench/startup.py                  # 5 rounds, bundled repository
    bench/startup.py --rounds 3 --model-repository models
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import HOST, SERVER_ENV, free_port, log, made_executable  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.02


def one_round(made: str, repository: Path, timeout_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """({milestone: seconds since the process started}, {model: load_seconds the server reports})."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    command = [made, "serve", "--model-repository", str(repository), "--host", HOST, "--port", str(port)]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        env={**os.environ, **SERVER_ENV},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[str, float] = {}
    try:
        with httpx.Client(timeout=1.0) as client:
            names: list[str] = []
            while "ready" not in seen:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with {process.returncode}: {shlex.join(command)}")
                if time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"not ready after {timeout_s} s")
                try:
                    if "healthz" not in seen and client.get(f"{base}/healthz").status_code == 200:
                        seen["healthz"] = time.monotonic() - started
                        names = sorted(client.get(f"{base}/readyz").json()["models"])
                    for name in names:
                        if (
                            name not in seen
                            and client.get(f"{base}/v2/models/{name}/ready").status_code == 200
                        ):
                            seen[name] = time.monotonic() - started
                    if client.get(f"{base}/readyz").status_code == 200:
                        seen["ready"] = time.monotonic() - started
                        for name in names:  # ready between the two polls: by now at the latest
                            seen.setdefault(name, seen["ready"])
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
            loads = {m["name"]: m["load_seconds"] for m in client.get(f"{base}/v1/models").json()["models"]}
    finally:
        process.kill()  # as a crashed pod: no drain
        process.wait()
    return seen, loads


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model-repository", default="models")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--timeout-s", type=float, default=120.0, help="give up on a round after this long")
    p.add_argument("--made", default=None, help="the made executable (default: beside this Python)")
    args = p.parse_args(argv)
    made = made_executable(args.made)
    repository = Path(args.model_repository).resolve()

    rounds, loads = [], []
    for i in range(args.rounds):
        seen, load = one_round(made, repository, args.timeout_s)
        log(f"round {i + 1}/{args.rounds}: ready after {seen['ready']:.2f} s")
        rounds.append(seen)
        loads.append(load)

    milestones = ["healthz", *sorted(k for k in rounds[0] if k not in ("healthz", "ready")), "ready"]
    print(f"# start-up of {args.model_repository} ({len(loads[0])} models), {args.rounds} rounds")
    print()
    print("| answered | median s | min s | max s | server's load_seconds (median) |")
    print("|---|---|---|---|---|")
    for key in milestones:
        values = [r[key] for r in rounds if key in r]
        load = statistics.median(ld[key] for ld in loads) if key in loads[0] else None
        label = {"healthz": "/healthz", "ready": "/readyz (every model)"}.get(key, f"model {key}")
        load_text = f"{load:.2f}" if load is not None else ""
        print(
            f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
            f"{load_text} |"
        )
    print()
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; seconds from process start (SIGKILL between rounds). "
        f"`load_seconds` includes the wait for a loader thread. Command: {shlex.join(sys.argv)}"
    )


if __name__ == "__main__":
    main()
