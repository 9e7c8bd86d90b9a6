#!/usr/bin/env python3
"""Mixtures of separately trained one-mask models: each member alone, their uniform mixture, and the
mixture as `made merge --weights-dtype int8` stores it, on one validation file.

For each group of checkpoints (one --group each, comma-separated), prints a row: members | each alone |
mixture (float32) | mixture stored as int8 | int8 size | std of the per-example log-likelihood differences
between the first two members (how much they disagree: a mixture gains where they do). Progress on stderr.

    bench/mixtures.py --data ../shared/data/binarized_mnist.npz \\
        --group runs/s4/r5,runs/s5/w1 --group runs/s5/m1,runs/s5/m2
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from service import checkpoint, data  # noqa: E402
from service.made.mixture import merge  # noqa: E402


def log(message: str) -> None:
    print(f"[mixtures {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def log_probs(model, x: torch.Tensor) -> torch.Tensor:
    """(K, N) float64 log p_k(x) of every stored mask (for a mixture: every member)."""
    return torch.cat(
        [
            model.log_prob_per_mask(x[i : i + 2000], masks=model.n_masks).double()
            for i in range(0, len(x), 2000)
        ],
        dim=1,
    )


def mixture_nll(per_member: torch.Tensor) -> float:
    return -(torch.logsumexp(per_member, 0) - math.log(per_member.shape[0])).mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="validation rows: .npy, .npz[:key] or .csv")
    parser.add_argument(
        "--group", action="append", required=True, help="comma-separated checkpoint directories"
    )
    args = parser.parse_args()
    print(
        "| members | alone | mixture, float32 | mixture, stored int8 | int8 size MB "
        "| std of log p_1 - log p_2 |"
    )
    print("|---|---|---|---|---|---|")
    for group in args.group:
        paths = group.split(",")
        models = [checkpoint.load(p)[0] for p in paths]
        x = data.load(args.data, models[0].likelihood, models[0].n_dims, role="valid")
        log(f"{group}: {len(x)} rows")
        each = torch.cat([log_probs(m, x) for m in models])  # (K, N)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save(merge(models), tmp, weights_dtype="int8")
            stored, _ = checkpoint.load(tmp)
            size = (Path(tmp) / checkpoint.WEIGHTS_FILE).stat().st_size / 1e6
            stored_nll = mixture_nll(log_probs(stored, x))
        alone = ", ".join(f"{-row.mean().item():.2f}" for row in each)
        spread = (each[0] - each[1]).std().item()
        names = " + ".join(
            f"{p} ({'x'.join(map(str, m.config.hidden_sizes))})" for p, m in zip(paths, models, strict=True)
        )
        print(
            f"| {names} | {alone} | {mixture_nll(each):.4f} | {stored_nll:.4f} | {size:.1f} | {spread:.2f} |"
        )
    print(
        f"\n{datetime.now(UTC).isoformat(timespec='seconds')}; "
        f"`{shlex.join(['bench/mixtures.py', *sys.argv[1:]])}`; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch "
        f"{torch.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
