#!/usr/bin/env python3
"""In-process scoring and sampling speed of a checkout's default model, for before/after comparisons.

Run it with the checkout's own interpreter, so that its torch and its `service` package are the ones timed:

    /path/to/checkout/.venv/bin/python bench/scoring.py --repo /path/to/checkout [--json out.json]

It loads `<repo>/models/binarized-mnist/1` with `service.checkpoint.load` (the repo root is put first on
sys.path), then, under `torch.inference_mode()`, times `model.log_prob(x, masks=None)` (the model's default
ensemble) on the first 1, 64 and 1024 validation rows of binarized MNIST, and
`service.made.fast_sampling.sample_fast(model, 64)` (seeded generator): warm-up calls first, then the
median of N timed repetitions. It prints a markdown table (median ms, min ms, rows/s at the median).
Timings on a shared machine are noisy: compare two checkouts interleaved on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repo", type=Path, required=True, help="checkout whose service package and models/ are timed"
    )
    parser.add_argument("--model", default="models/binarized-mnist/1", help="checkpoint, relative to --repo")
    parser.add_argument(
        "--data", type=Path, help="binarized_mnist.npz (default: <repo>/../shared/data/binarized_mnist.npz)"
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 64, 1024], help="rows per log_prob call"
    )
    parser.add_argument("--sample-n", type=int, default=64, help="samples per sample_fast call (0: skip)")
    parser.add_argument(
        "--repeats", "-N", type=int, default=10, help="timed repetitions per case (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each case")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    import numpy as np
    import torch

    from service import checkpoint
    from service.made import fast_sampling

    loaded_from = Path(checkpoint.__file__).resolve()
    if repo not in loaded_from.parents:
        parser.error(
            f"service was imported from {loaded_from}, not from {repo}; run with {repo}/.venv/bin/python"
        )
    torch.set_num_threads(args.threads)

    data = (args.data or repo / ".." / "shared" / "data" / "binarized_mnist.npz").resolve()
    with np.load(data) as npz:
        n_dims = int(npz["n_dims"])
        x_all = np.unpackbits(npz["valid_x"][: max(args.batches)], axis=1)[:, :n_dims]
    x_all = torch.from_numpy(x_all.astype(np.float32))

    start = time.perf_counter()
    model, config = checkpoint.load(repo / args.model, device="cpu")
    load_s = time.perf_counter() - start

    def timed(fn) -> list[float]:
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times

    results = []
    with torch.inference_mode():
        for rows in args.batches:
            x = x_all[:rows].contiguous()
            times = timed(partial(model.log_prob, x, masks=None))
            results.append(
                {
                    "case": f"log_prob masks=default ({model.resolve_masks(None)})",
                    "rows": rows,
                    "times_s": times,
                }
            )
        if args.sample_n:
            generator = torch.Generator().manual_seed(0)
            times = timed(lambda: fast_sampling.sample_fast(model, args.sample_n, generator=generator))
            results.append({"case": "sample_fast masks=default", "rows": args.sample_n, "times_s": times})

    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{repo} @ {commit[:12]}: {args.model} (hidden {config.hidden_sizes}, {config.n_masks} masks, "
        f"weights {config.weights_dtype}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats after {args.warmup} warm-up; load {load_s:.2f} s\n"
    )
    print("| case | batch | median ms | min ms | rows/s |")
    print("|---|---|---|---|---|")
    for r in results:
        median = statistics.median(r["times_s"])
        r["median_ms"], r["min_ms"] = median * 1e3, min(r["times_s"]) * 1e3
        r["rows_per_s"] = r["rows"] / median
        print(
            f"| {r['case']} | {r['rows']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} "
            f"| {r['rows_per_s']:,.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "repo": str(repo),
                    "commit": commit,
                    "model": args.model,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "machine": platform.node(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "load_s": load_s,
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
