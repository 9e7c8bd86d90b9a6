#!/usr/bin/env python3
"""How much a busy event loop slows the compute thread: both share one interpreter lock (the GIL).

The server's event loop and its compute thread are threads of one process. A model call releases the GIL
inside each torch operation and takes it back after, so between operations the compute thread waits for
the event loop to let go of it: at the latest after sys.getswitchinterval() (5 ms by default), sooner when
the loop sleeps in epoll. This measures one batch of the compute path as the server calls it
(compute.log_prob's batch function on 32 one-row requests, values checked in the batch) and the bare
forward (model.log_prob on the joined rows), in a thread, while the main thread is idle and while it runs
Python without pause (the worst case: an event loop that is never idle), for several switch intervals.

    .venv/bin/python bench/gil_contention.py                      # issue 15's light model
    .venv/bin/python bench/gil_contention.py --model models/binarized-mnist/1 --repeats 20

Prints a table: wall and CPU milliseconds per batch of the compute thread (medians over --repeats), and
the wall time as a multiple of the idle case. In-process; no HTTP.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from service import checkpoint  # noqa: E402
from service.api import compute  # noqa: E402
from service.api.registry import ServedModel  # noqa: E402

LIGHT_MODEL = ROOT / "runs" / "oneclass" / "m8"
SWITCH_INTERVALS_S = (0.005, 0.001, 0.0002)


def timed_in_thread(call, repeats: int, busy: bool) -> tuple[float, float]:
    """(wall ms, CPU ms) per call, medians, of `call` in a thread of its own; with `busy`, the main thread
    runs Python meanwhile."""
    walls, cpus = [], []

    def worker() -> None:
        for _ in range(3):
            call()
        for _ in range(repeats):
            started, cpu = time.perf_counter(), time.thread_time()
            call()
            walls.append(time.perf_counter() - started)
            cpus.append(time.thread_time() - cpu)

    thread = threading.Thread(target=worker)
    thread.start()
    while busy and thread.is_alive():
        sum(i * i for i in range(64))  # pure Python: holds the GIL, as a busy event loop does
    thread.join()
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=LIGHT_MODEL)
    parser.add_argument("--requests", type=int, default=32, help="one-row requests per batch")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    model, config = checkpoint.load(args.model)
    served = ServedModel(args.model.name, 1, args.model, model, config, model.device, time.time(), 0.0)
    K = model.resolve_masks(None)
    server_path = compute.log_prob(served, K, False, False)
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 2, (1, model.n_dims)) for _ in range(args.requests)]
    payloads = [(row,) for row in rows]
    joined = torch.from_numpy(np.concatenate(rows).astype(np.float32))

    def bare_forward() -> None:
        with torch.inference_mode():
            model.log_prob(joined, masks=K)

    calls = {"server's batch call": lambda: server_path(payloads), "bare forward": bare_forward}
    print(f"# Compute thread under a busy main thread: {args.model}, {args.requests} one-row requests")
    print()
    print("| call | switch interval ms | main thread | wall ms | CPU ms | wall vs idle |")
    print("|---|---|---|---|---|---|")
    default_interval = sys.getswitchinterval()
    try:
        for name, call in calls.items():
            idle_wall = None
            for interval in SWITCH_INTERVALS_S:
                sys.setswitchinterval(interval)
                for busy in (False, True):
                    if not busy and idle_wall is not None:
                        continue  # an idle main thread never holds the GIL: the interval does not matter
                    wall, cpu = timed_in_thread(call, args.repeats, busy)
                    idle_wall = wall if not busy else idle_wall
                    print(
                        f"| {name} | {interval * 1e3:g} | {'busy' if busy else 'idle'} | {wall:.2f} | "
                        f"{cpu:.2f} | {wall / idle_wall:.1f}x |",
                        flush=True,
                    )
                    print(f"[gil_contention] {name}, {interval * 1e3:g} ms, busy={busy}", file=sys.stderr)
    finally:
        sys.setswitchinterval(default_interval)
    print()
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}; "
        f"command: {' '.join(sys.argv)}"
    )


if __name__ == "__main__":
    main()
