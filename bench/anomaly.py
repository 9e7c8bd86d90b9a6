#!/usr/bin/env python3
"""One-class MNIST: our scores against PyOD baselines, digit by digit (issue 14's benchmark, first part).

For each digit k, a MADE is trained on the training rows of digit k only, with issue 14's recipe
(`made train --hidden 500 --order random --epochs 60`, defaults otherwise; missing models are trained
first, two at a time, into --work). Every validation row is scored; the odd-indexed rows of digit k are the
inliers evaluated (the even-indexed ones are the reference our union score's p-values use), the other
digits' rows the outliers. Side by side, fitted on the same binary pixels of the same training rows:
PyOD's IForest, KNN, ECOD and PCA (reconstruction error), each with its defaults and a fixed seed.

Prints AUROC per digit and the mean, and with --plot draws them (ours against the baselines). Validation
split only (test splits are not provided). Progress on stderr.

    .venv/bin/python bench/anomaly.py                       # trains what is missing (~15 min), then scores
    .venv/bin/python bench/anomaly.py --quick               # digits 0, 1 and 8, 2,000 training rows each
    .venv/bin/python bench/anomaly.py --plot docs/images/anomaly_auroc.png
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from anomaly_scores import auroc, either, nll_of  # noqa: E402  (a sibling script)

from service import checkpoint  # noqa: E402
from service.calibration import calibrate  # noqa: E402
from service.context_model import ContextModel  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
RECIPE = ["--hidden", "500", "--order", "random", "--epochs", "60"]


def log(message: str) -> None:
    print(f"[anomaly {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def made_executable() -> str:
    beside = Path(sys.executable).parent / "made"
    return str(beside) if beside.exists() else "made"


def train_side_by_side(jobs: list[list[str]]) -> None:
    """`made train` argument lists, two at a time with one torch thread each (the machine has two cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for start in range(0, len(jobs), 2):
        batch = [[made_executable(), "train", *job, "--no-progress"] for job in jobs[start : start + 2]]
        log(f"training {len(batch)} models: {shlex.join(batch[0])} ...")
        processes = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for cmd in batch
        ]
        for process, cmd in zip(processes, batch, strict=True):
            _, error = process.communicate()
            if process.returncode != 0:
                sys.exit(f"training failed: {shlex.join(cmd)}\n{error.decode(errors='replace')[-2000:]}")


def prepare(work: Path, digits: list[int], max_train_rows: int | None = None, epochs: int = 60) -> None:
    """Per-digit data files and, for each digit without one, its one-class model `m<k>` (the recipe)."""
    work.mkdir(parents=True, exist_ok=True)
    data = np.load(DATA)
    jobs = []
    for k in digits:
        if (work / f"m{k}" / "config.json").exists():
            continue
        train = data["train_x"][data["train_y"] == k][:max_train_rows]
        valid = data["valid_x"][data["valid_y"] == k]
        np.savez(work / f"digit{k}.npz", train_x=train, valid_x=valid, n_dims=data["n_dims"])
        recipe = [*RECIPE[:-1], str(epochs)]
        jobs.append(["--data", str(work / f"digit{k}.npz"), "--out", str(work / f"m{k}"), *recipe])
    train_side_by_side(jobs)


def prepare_backgrounds(work: Path, digits: list[int], rate: float = 0.15, seed: int = 0) -> None:
    """Ren et al. (2019) background models for bench/anomaly_scores.py: the same recipe on the same rows with
    a fraction `rate` of their pixels flipped (two flipped copies of each training row), `b<k>` per digit,
    and `b_all` on all digits (one copy, 20 epochs)."""
    rng = np.random.default_rng(seed)
    data = np.load(DATA)

    def flipped(packed: np.ndarray, copies: int) -> np.ndarray:
        bits = np.unpackbits(packed, axis=1)[:, :784]
        noisy = [np.where(rng.random(bits.shape) < rate, 1 - bits, bits) for _ in range(copies)]
        return np.packbits(np.concatenate(noisy).astype(np.uint8), axis=1)

    jobs = []
    for k in digits:
        if not (work / f"b{k}" / "config.json").exists():
            train, valid = data["train_x"][data["train_y"] == k], data["valid_x"][data["valid_y"] == k]
            path = work / f"background{k}.npz"
            np.savez(path, train_x=flipped(train, 2), valid_x=flipped(valid, 1), n_dims=data["n_dims"])
            jobs.append(["--data", str(path), "--out", str(work / f"b{k}"), *RECIPE])
    if not (work / "b_all" / "config.json").exists():
        path = work / "background_all.npz"
        np.savez(
            path,
            train_x=flipped(data["train_x"], 1),
            valid_x=flipped(data["valid_x"], 1),
            n_dims=data["n_dims"],
        )
        jobs.append(["--data", str(path), "--out", str(work / "b_all"), *RECIPE[:-1], "20"])
    train_side_by_side(jobs)


def baselines(train: np.ndarray, valid: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """PyOD detectors fitted on the training rows; decision_function: higher = more anomalous."""
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.pca import PCA

    detectors = {
        "IForest": IForest(random_state=seed),
        "KNN": KNN(),
        "ECOD": ECOD(),
        "PCA": PCA(random_state=seed),
    }
    scores = {}
    for name, detector in detectors.items():
        started = time.perf_counter()
        detector.fit(train.astype(np.float64))
        scores[name] = detector.decision_function(valid.astype(np.float64))
        log(f"  {name}: {time.perf_counter() - started:.1f} s")
    return scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/oneclass", help="per-digit data and models (made here if missing)")
    p.add_argument("--quick", action="store_true", help="digits 0, 1, 8; 2,000 training rows, 20 epochs")
    p.add_argument("--plot", default=None, help="write a PNG of AUROC per digit here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    digits = [0, 1, 8] if args.quick else list(range(10))
    work = Path(args.work) if not args.quick else Path(args.work) / "quick"
    max_rows = 2000 if args.quick else None
    prepare(work, digits, max_rows, epochs=20 if args.quick else 60)

    data = np.load(DATA)
    train_all = np.unpackbits(data["train_x"], axis=1)[:, :784]
    valid = np.unpackbits(data["valid_x"], axis=1)[:, :784]
    labels = data["valid_y"]
    x = torch.from_numpy(valid.astype(np.float32))
    index = np.arange(len(labels))

    methods = ["MADE nll", "MADE nll or nll - context", "IForest", "KNN", "ECOD", "PCA"]
    table = {m: {} for m in methods}
    # calibration check: thresholds from one third of each digit's validation rows, false positives counted
    # on another third (the union's own p-values come from the remaining third)
    false_positives = {(name, fpr): [0, 0] for name in methods[:2] for fpr in (0.01, 0.05)}
    for k in digits:
        log(f"digit {k}")
        train = train_all[data["train_y"] == k][:max_rows]
        reference = (labels == k) & (index % 2 == 0)
        inlier = (labels == k) & (index % 2 == 1)
        outlier = labels != k
        model, _ = checkpoint.load(work / f"m{k}")
        nll = nll_of(model, x)
        corrected = nll - ContextModel.fit(torch.from_numpy(train).float(), (28, 28)).code_length(x).numpy()
        union_score = either(nll, corrected, reference)
        third = index % 3
        part_a, part_b, part_c = [(labels == k) & (third == t) for t in range(3)]
        union_a = either(nll, corrected, part_a)
        for name, score in (("MADE nll", nll), ("MADE nll or nll - context", union_a)):
            for fpr in (0.01, 0.05):
                threshold = calibrate(score[part_b], masks=1).threshold(fpr)
                counts = false_positives[(name, fpr)]
                counts[0] += int(np.sum(score[part_c] > threshold))
                counts[1] += int(np.sum(part_c))
        scores = {"MADE nll": nll, "MADE nll or nll - context": union_score} | baselines(
            train, valid, args.seed
        )
        for name, s in scores.items():
            table[name][k] = auroc(s[inlier], s[outlier])

    print(f"# One-class MNIST AUROC (validation split), {'quick' if args.quick else 'full'} run")
    print()
    print("| method | " + " | ".join(str(k) for k in digits) + " | mean |")
    print("|---|" + "---|" * (len(digits) + 1))
    for name in methods:
        values = [table[name][k] for k in digits]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}** |")
    print()
    print("Calibration: observed false-positive rate on held-out inliers (all digits pooled)")
    print()
    print("| score | requested fpr | flagged / inliers | observed | binomial 95% interval of the request |")
    print("|---|---|---|---|---|")
    for (name, fpr), (flagged, total) in false_positives.items():
        low, high = binomial_interval(fpr, total)
        inside = "inside" if low <= flagged / total <= high else "**outside**"
        print(
            f"| {name} | {fpr} | {flagged} / {total} | {flagged / total:.4f} "
            f"| {low:.4f}-{high:.4f} ({inside}) |"
        )
    print()
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Command: {shlex.join(sys.argv)}"
    )
    if args.plot:
        plot(table, digits, methods, Path(args.plot))


def binomial_interval(rate: float, n: int) -> tuple[float, float]:
    """Where the observed fraction of n inliers falls 95% of the time if the true rate is `rate`: the
    central 95% of Binomial(n, rate) / n, from its exact distribution."""
    k = np.arange(n + 1)
    log_pmf = (
        np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
        + k * math.log(rate)
        + (n - k) * math.log1p(-rate)
    )
    cdf = np.cumsum(np.exp(log_pmf))
    return float(np.searchsorted(cdf, 0.025) / n), float(np.searchsorted(cdf, 0.975) / n)


def plot(table: dict, digits: list[int], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / len(methods)
    for i, name in enumerate(methods):
        axes.bar(
            np.arange(len(digits)) + (i - len(methods) / 2 + 0.5) * width,
            [table[name][k] for k in digits],
            width,
            label=name,
        )
    axes.set_xticks(np.arange(len(digits)), [str(k) for k in digits])
    axes.set_xlabel("inlier digit (one-class model)")
    axes.set_ylabel("AUROC, other digits as outliers")
    axes.set_ylim(0.3, 1.0)
    axes.legend(fontsize=8, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    axes.set_title("One-class MNIST (validation split): MADE scores against PyOD baselines")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    log(f"plot written to {path}")


if __name__ == "__main__":
    main()
