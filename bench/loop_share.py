"""How busy the event loop is under 64 clients x 1 row, per server: where the requests/s of a one-process
Python server is bound (issue 15).

Each server is started as bench/peers.py starts it (same model, same bodies, answers checked against each
other), then driven with `hey` at 64 clients x 1-row JSON log-prob requests, interleaved for --rounds
rounds. Around each measured run the kernel's counters are read (through psutil):

    loop busy     CPU time of the server's main thread (the event loop) / the run's wall time
    loop us/req   that CPU time per request: the loop's own work for one request
    process       CPU time of the whole server process (compute and other threads too), in cores
    hey           CPU time of hey itself, in cores (it shares the cores with the server)
    machine idle  the machine's idle share during the run (all cores)

A loop that is busy well under 100% while the machine has idle cores is waiting: for the compute thread's
batch, or for clients that are themselves waiting to be scheduled. The servers (default: ours and the two
diagnostics of bench/peers.py, `ours-lean-asgi` and `minimal-batched`) must each be one process whose main
thread runs the event loop. Medians over rounds; every figure is over HTTP on loopback.

    .venv/bin/python bench/loop_share.py
    .venv/bin/python bench/loop_share.py --servers ours,minimal-batched --rounds 5 --seconds 6

Needs `hey` on PATH and psutil (`make bench-tools` installs both), on Linux.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import peers
import psutil

ONE_PROCESS = ("ours", "ours-lean-asgi", "minimal-batched")  # servers whose main thread is the loop
LOAD = peers.LOADS["json-64x1"]


@dataclass(frozen=True)
class Share:
    rows_per_s: float
    loop_busy: float  # share of the run's wall time the main thread was on a CPU
    loop_us_per_request: float
    process_cores: float
    hey_cores: float
    machine_idle: float  # share of all cores' time idle


def loop_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of the process's main thread (its thread id is the process id): the event loop."""
    main = next(thread for thread in process.threads() if thread.id == process.pid)
    return main.user_time + main.system_time


def process_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def machine_idle_s() -> tuple[float, float]:
    """(idle, total) CPU seconds of every core since boot (guest time is in user time already)."""
    times = psutil.cpu_times()
    fields = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return times.idle + times.iowait, sum(getattr(times, field) for field in fields)


def measure(server: peers.Server, body: Path, seconds: int) -> Share:
    process = psutil.Process(server.process.pid)
    loop_before, process_before = loop_cpu_s(process), process_cpu_s(process)
    idle_before, total_before = machine_idle_s()
    hey_before = os.times()
    started = time.perf_counter()
    output = peers.run_hey(server, LOAD, body, seconds)
    wall = time.perf_counter() - started
    hey_after = os.times()
    idle_after, total_after = machine_idle_s()
    loop_s = loop_cpu_s(process) - loop_before
    requests_per_s, _, _, non_200 = peers.parse_hey(output)
    if non_200:
        raise RuntimeError(f"{server.name}: {non_200} answers were not 200")
    hey_s = (hey_after.children_user - hey_before.children_user) + (
        hey_after.children_system - hey_before.children_system
    )
    return Share(
        requests_per_s * LOAD.rows,
        loop_s / wall,
        loop_s / (requests_per_s * wall) * 1e6,
        (process_cpu_s(process) - process_before) / wall,
        hey_s / wall,
        (idle_after - idle_before) / (total_after - total_before),
    )


def table(results: dict[str, list[Share]]) -> str:
    lines = [
        "| server | rows/s | loop busy | loop us/req | process cores | hey cores | machine idle |",
        "|" + "---|" * 7,
    ]
    for name, shares in results.items():
        m = {field: statistics.median(getattr(s, field) for s in shares) for field in Share.__annotations__}
        lines.append(
            f"| {name} | {m['rows_per_s']:,.0f} | {m['loop_busy']:.0%} | {m['loop_us_per_request']:.0f} "
            f"| {m['process_cores']:.2f} | {m['hey_cores']:.2f} | {m['machine_idle']:.0%} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers",
        type=lambda text: peers.names(text, ONE_PROCESS, "server"),
        default=list(ONE_PROCESS),
        help=f"comma-separated subset of {','.join(ONE_PROCESS)} (default: all)",
    )
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per (server, round)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians over them")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of load per server before round 1")
    parser.add_argument("--model", type=Path, default=peers.LIGHT_MODEL, help="checkpoint directory")
    args = parser.parse_args(argv)
    if min(args.seconds, args.rounds, args.warmup) < 1:
        parser.error("--seconds, --rounds and --warmup must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = peers.prepare(args.model)
    load_before = os.getloadavg()
    results: dict[str, list[Share]] = {}
    with tempfile.TemporaryDirectory(prefix="loop-share-") as tmp:
        workdir = Path(tmp)
        try:
            check_body = peers.json_body(peers.validation_rows(peers.CHECK_ROWS))
            servers, not_run = peers.start_servers(args.servers, model_dir, workdir, check_body)
            if not_run or not servers:
                sys.exit(f"not every server started: {not_run}")
            peers.check_same_numbers(servers)
            bodies = peers.write_bodies(servers, [LOAD], workdir)
            for server in servers:
                peers.progress(f"warm-up {server.name} ({args.warmup} s)")
                peers.run_hey(server, LOAD, bodies[server.name, LOAD.name], args.warmup)
            for round_number in range(1, args.rounds + 1):
                for server in servers:  # interleaved within each round
                    share = measure(server, bodies[server.name, LOAD.name], args.seconds)
                    results.setdefault(server.name, []).append(share)
                    peers.progress(
                        f"round {round_number}/{args.rounds} {server.name}: {share.rows_per_s:,.0f} rows/s, "
                        f"loop busy {share.loop_busy:.0%}, {share.loop_us_per_request:.0f} us/request, "
                        f"machine idle {share.machine_idle:.0%}"
                    )
        except subprocess.TimeoutExpired as exc:
            sys.exit(f"hey did not finish: {exc}")
        finally:
            for process in peers.LAUNCHED:
                peers.stop(process)
    print(table(results))
    print()
    load_average = ", ".join(f"{value:.2f}" for value in load_before)
    print(
        f"Medians of {args.rounds} round(s) of {args.seconds} s of hey, 64 clients x 1 row, after a "
        f"{args.warmup} s warm-up. {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; load "
        f"average before start {load_average}; command: {shlex.join([sys.executable, *sys.argv])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
