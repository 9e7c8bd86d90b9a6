#!/usr/bin/env python3
"""What an anomaly score costs against a log-prob of the same rows, as the server computes both (in-process).

For each model, the work the server's compute thread and engine do per request, timed on the same rows of
binarized MNIST's validation split, under the calibration's ensemble size:

- log-prob: `compute.log_prob` (the batcher's call for /log-prob);
- anomaly, score nll: the same call, then the p-values and flags from the calibration;
- anomaly, score nll_or_context (the default): `compute.context_scores` (the MADE's log-prob and the
  context model's code length in one call), then `Calibration.score`, the p-values and the flags.

Warm-up first, then rounds that interleave the three, median per batch size. Issue 14 asks the default score
to cost at most 2x a log-prob. HTTP parsing and JSON, the same for all three, are not included: these are
in-process figures.

    .venv/bin/python bench/anomaly_cost.py                              # the bundled default model
    .venv/bin/python bench/anomaly_cost.py --model runs/oneclass/m8     # a 784-500 one-mask model
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import checkpoint  # noqa: E402
from service.api import compute  # noqa: E402
from service.api.registry import ServedModel  # noqa: E402
from service.calibration import ContextCounts, calibrate, held_out_scores  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"


def served(path: Path) -> ServedModel:
    """The model as the registry serves it. A checkpoint calibrated before nll_or_context existed is
    calibrated here as `made calibrate --context-data` would: the context model counted on the training
    digits, the held-out scores of the first 2,000 validation rows."""
    model, config = checkpoint.load(path)
    calibration = config.calibration
    if calibration is None or calibration.nll_or_context is None:
        data = np.load(DATA)
        train, valid = (
            torch.from_numpy(np.unpackbits(data[key], axis=1)[:, :784].astype(np.float32))
            for key in ("train_x", "valid_x")
        )
        shape = config.input_shape or [28, 28]
        counts = ContextCounts.fit(train, shape)
        masks = model.config.eval_masks
        nll, code_length = held_out_scores(model, [valid[:2000]], masks, counts.model(model.n_dims, shape))
        config.calibration = calibrate(nll, masks, code_length=code_length, context=counts)
    context_model = config.calibration.context.model(model.n_dims, config.input_shape or [28, 28])
    return ServedModel(path.name, 1, path, model, config, model.device, time.time(), 0.0, context_model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "binarized-mnist" / "1"))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    model = served(Path(args.model))
    calibration = model.calibration
    K = calibration.masks
    rows = np.unpackbits(np.load(DATA)["valid_x"], axis=1)[:, :784].astype(np.float32)

    by_nll = compute.log_prob(model, K, False, False)
    by_context = compute.context_scores(model, K, False)

    # log-prob takes the rows as sent (it checks their values in the batch), the context score a tensor
    def log_prob(x):
        return by_nll([(x.numpy(),)])

    def anomaly_nll(x):
        ((log_p,),) = by_nll([(x.numpy(),)])
        score = -log_p.numpy()
        return calibration.nll.p_value(score), score > calibration.nll.threshold(calibration.default_fpr)

    def anomaly_default(x):
        ((log_p, code_length),) = by_context([(x,)])
        score = calibration.score("nll_or_context", -log_p.numpy(), code_length.numpy())
        distribution = calibration.nll_or_context
        return distribution.p_value(score), score > distribution.threshold(calibration.default_fpr)

    operations = {
        "log-prob": log_prob,
        "anomaly (nll)": anomaly_nll,
        "anomaly (nll_or_context)": anomaly_default,
    }
    print(f"# Anomaly scoring cost, in-process: {args.model} ({K} masks)")
    print()
    print(
        "| rows | log-prob ms | anomaly (nll) ms | anomaly (nll_or_context) ms | nll_or_context / log-prob |"
    )
    print("|---|---|---|---|---|")
    for size in args.batches:
        x = torch.from_numpy(rows[:size])
        times = {name: [] for name in operations}
        for _ in range(3):
            for operation in operations.values():
                operation(x)
        for _ in range(args.rounds):
            for name, operation in operations.items():
                started = time.perf_counter()
                operation(x)
                times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(t) * 1000 for name, t in times.items()}
        print(
            f"| {size} | {median['log-prob']:.3f} | {median['anomaly (nll)']:.3f} "
            f"| {median['anomaly (nll_or_context)']:.3f} "
            f"| {median['anomaly (nll_or_context)'] / median['log-prob']:.2f}x |"
        )
        print(f"[anomaly_cost] {size} rows done", file=sys.stderr, flush=True)
    print()
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), median of {args.rounds} interleaved "
        f"rounds. Command: {' '.join(sys.argv)}"
    )


if __name__ == "__main__":
    main()
