#!/usr/bin/env python3
"""Sampling cost: the reference sampler (D network passes) against the fast sampler (units by degree,
about one pass of arithmetic), next to one scoring pass of the same batch.

Prints a table: model | D | hidden | masks | batch | reference ms | fast ms | fast, no CUDA graph ms |
score ms | reference/fast | fast/score | identical. Times are the best of --repeat runs; "identical" says
whether both samplers drew the same samples from the same seed. On CUDA the fast sampler replays CUDA graphs;
the "no CUDA graph" column is the same walk launched step by step (on CPU there are no graphs: "-").
Progress on stderr.

    bench/sampling.py                     # the bundled model and synthetic architectures, batch 64
    bench/sampling.py --quick             # fewer configurations, one repeat
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from service import checkpoint  # noqa: E402
from service.devices import resolve_device  # noqa: E402
from service.made import build, draw_randomness, make_generator, sample_from_randomness  # noqa: E402
from service.made.fast_sampling import sample_fast_from_randomness  # noqa: E402


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def best_of(fn, repeat: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def models(quick: bool, device: torch.device, bundled_models: list[str], max_dims: int | None):
    for bundled in bundled_models:
        path = ROOT / "models" / bundled / "1"
        if path.is_dir():
            model, config = checkpoint.load(path, device=device)
            yield f"{bundled} (bundled)", model
    synthetic = [(784, (500,), {}), (784, (500, 500), dict(direct_connections=True)), (180, (500,), {})]
    if not quick:
        synthetic += [
            (784, (2000,), dict(direct_connections=True, mask_conditioning=True)),
            (112, (500, 500), dict(n_masks=4, order="random")),
        ]
    for D, hidden, options in synthetic:
        if max_dims is not None and D > max_dims:
            continue
        torch.manual_seed(0)
        yield f"synthetic D={D}", build(D, "bernoulli", hidden_sizes=hidden, **options).to(device).eval()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--bundled",
        nargs="*",
        default=["binarized-mnist", "binarized-mnist-any-order"],  # the default, then the order-agnostic one
        help="bundled models (models/<name>/1) to measure before the synthetic architectures",
    )
    parser.add_argument("--max-dims", type=int, help="skip synthetic architectures of more dimensions")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 1
    device = resolve_device(args.device)
    rows = []
    for name, model in models(args.quick, device, args.bundled, args.max_dims):
        config = model.config
        K = config.eval_masks
        for batch in args.batch:
            log(f"{name}: batch {batch}")
            randomness = draw_randomness(model, batch, K, make_generator(0, device))
            x = torch.zeros(batch, model.n_dims, device=device)
            with torch.inference_mode():
                model.log_prob(x, masks=K)  # warm-up
                score = best_of(partial(model.log_prob, x, masks=K), max(args.repeat, 5), device)
            sample_fast_from_randomness(model, randomness)  # warm-up (builds and caches the plans)
            fast = best_of(partial(sample_fast_from_randomness, model, randomness), args.repeat, device)
            eager = None
            if device.type == "cuda":
                eager = best_of(
                    partial(sample_fast_from_randomness, model, randomness, cuda_graphs=False),
                    args.repeat,
                    device,
                )
            reference = best_of(partial(sample_from_randomness, model, randomness), args.repeat, device)
            same = torch.equal(
                sample_fast_from_randomness(model, randomness), sample_from_randomness(model, randomness)
            )
            rows.append(
                (
                    name,
                    model.n_dims,
                    "x".join(map(str, config.hidden_sizes)) or "-",
                    K,
                    batch,
                    reference * 1e3,
                    fast * 1e3,
                    eager,
                    score * 1e3,
                    reference / fast,
                    fast / score,
                    same,
                )
            )
    print(
        "| model | D | hidden | masks | batch | reference ms | fast ms | fast, no CUDA graph ms | score ms "
        "| reference/fast | fast/score | identical |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        eager = "-" if r[7] is None else f"{r[7] * 1e3:.1f}"
        print(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | {eager} | {r[8]:.2f} "
            f"| {r[9]:.1f}x | {r[10]:.1f}x | {'yes' if r[11] else 'no'} |"
        )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.lower().startswith("model name")
        ),
        platform.machine(),
    )
    print(
        f"\n{datetime.now(UTC).isoformat(timespec='seconds')}; "
        f"`{shlex.join(['bench/sampling.py', *sys.argv[1:]])}`; "
        f"{cpu}, {torch.get_num_threads()} threads, device {device}; torch {torch.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
