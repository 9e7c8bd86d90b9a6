#!/usr/bin/env python3
"""Anomaly detection as the service does it, against PyOD baselines (issue 14's benchmark).

Every MADE score here is the product's own: the calibration is made by the same functions `made train`
and `made calibrate` call (the context model counted on the model's training rows, the NLL and code lengths
of held-out rows, `calibrate`), and rows are scored as the server scores them (`Calibration.score`,
thresholds and p-values from the calibration). Two parts:

1. One-class MNIST. For each digit k, a MADE is trained on the training rows of digit k only, with issue
   14's recipe (`made train --hidden 500 --order random --epochs 60`, defaults otherwise; missing models
   are trained first, two at a time, into --work). Digit k's validation rows are split at random in
   halves: one calibrates it (what `made calibrate` would store), the other holds the inliers evaluated,
   and every row of the other digits is an outlier. AUROC per digit and per (digit, outlier digit) pair
   from the first split; the observed false-positive rate of the calibrated thresholds on the held-out
   inliers (pooled over the digits) for the first split and over --splits random splits. The recipe gives
   no --input-shape, so the default score's context model is the 1-D one (the previous 10 pixels); a row
   shows the 2-D template that `--input-shape 28 28` gives.
2. The bundled `binarized-mnist` model against generated out-of-distribution inputs (blank, all ones,
   inverted, rotated, shifted, noise of three densities, flipped pixels), calibrated on a random half of
   the validation rows, AUROC against the other half, and the fraction flagged at the 1% threshold.

Side by side, fitted on the same binary pixels of the same training rows (pixels constant there left
out): PyOD's IForest, KNN, ECOD and PCA (reconstruction error from the components holding 90% of the
variance), defaults otherwise, seeded (in part 2 on a 10,000-row sample of the training digits; their 1%
thresholds from the calibration half).

Validation split only (test splits are not provided). Progress on stderr.

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

from anomaly_scores import auroc, out_of_distribution  # noqa: E402  (a sibling script)

from service import checkpoint  # noqa: E402
from service.calibration import Calibration, ContextCounts, calibrate, held_out_scores  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
RECIPE = ["--hidden", "500", "--order", "random", "--epochs", "60"]
SHAPE = [28, 28]
DEFAULT = "MADE nll_or_context (default)"
NLL = "MADE nll"
WITH_SHAPE = "MADE nll_or_context, 2-D context (--input-shape 28 28)"
SCORE_NAMES = {DEFAULT: "nll_or_context", NLL: "nll"}
FPRS = (0.01, 0.05)
BASELINE_ROWS = 10_000  # training rows the baselines of part 2 are fitted on (KNN's cost grows with them)


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
        # the components that hold 90% of the variance: with the default (all of them) PyOD divides by
        # components of zero variance on the 10,000 training digits of part 2, and every score is NaN
        "PCA": PCA(n_components=0.9, random_state=seed),
    }
    # pixels constant over the training rows tell the detectors nothing, and PCA's whitening divides by their
    # zero variance (every score NaN): they are left out
    varying = train.min(axis=0) != train.max(axis=0)
    train, valid = train[:, varying].astype(np.float64), valid[:, varying].astype(np.float64)
    scores = {}
    for name, detector in detectors.items():
        started = time.perf_counter()
        detector.fit(train)
        scores[name] = detector.decision_function(valid)
        if not np.all(np.isfinite(scores[name])):
            sys.exit(f"{name} gave non-finite scores")
        log(f"  {name}: {time.perf_counter() - started:.1f} s")
    return scores


def held_out_split(rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration rows, evaluation rows): a random half each of the row indices given."""
    shuffled = np.random.default_rng(seed).permutation(rows)
    return shuffled[: len(rows) // 2], shuffled[len(rows) // 2 :]


def served_parts(
    model, shape: list[int] | None, train: np.ndarray, rows: np.ndarray
) -> tuple[ContextCounts, np.ndarray, np.ndarray]:
    """(the context model of the training rows, as `made train` and `made calibrate` count it for a model
    of this input shape; the NLL and code length of every row, as the server computes them with the
    model's default ensemble)."""
    counts = ContextCounts.fit(torch.from_numpy(train).float(), shape)
    batches = torch.from_numpy(rows.astype(np.float32)).split(2000)
    nll, code_length = held_out_scores(
        model, batches, model.config.eval_masks, counts.model(model.n_dims, shape)
    )
    return counts, nll, code_length


def served_scores(calibration: Calibration, nll: np.ndarray, code_length: np.ndarray) -> dict:
    """Both of the service's anomaly scores, as the server computes them from the parts."""
    return {name: calibration.score(score, nll, code_length) for name, score in SCORE_NAMES.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/oneclass", help="per-digit data and models (made here if missing)")
    p.add_argument("--quick", action="store_true", help="digits 0, 1, 8; 2,000 training rows, 20 epochs")
    p.add_argument("--plot", default=None, help="write a PNG of AUROC per digit here")
    p.add_argument("--seed", type=int, default=0, help="the first split's seed (and the baselines')")
    p.add_argument("--splits", type=int, default=200, help="random calibration/evaluation splits to count")
    args = p.parse_args()
    digits = [0, 1, 8] if args.quick else list(range(10))
    work = Path(args.work) if not args.quick else Path(args.work) / "quick"
    max_rows = 2000 if args.quick else None
    prepare(work, digits, max_rows, epochs=20 if args.quick else 60)

    data = np.load(DATA)
    train_all = np.unpackbits(data["train_x"], axis=1)[:, :784]
    valid = np.unpackbits(data["valid_x"], axis=1)[:, :784]
    labels = data["valid_y"]

    methods = [NLL, DEFAULT, WITH_SHAPE, "IForest", "KNN", "ECOD", "PCA"]
    table = {m: {} for m in methods}
    pairs = {}  # (digit, outlier digit) -> AUROC of the default score
    # false positives on held-out inliers per split seed: {(score, fpr): [[flagged, inliers] per split]}
    false_positives = {
        (name, fpr): np.zeros((args.splits, 2), int) for name in (NLL, DEFAULT) for fpr in FPRS
    }
    for k in digits:
        log(f"digit {k}")
        train = train_all[data["train_y"] == k][:max_rows]
        model, config = checkpoint.load(work / f"m{k}")
        # the recipe gives no --input-shape: the context is the previous 10 pixels, as `made train` fits it
        counts, nll, code_length = served_parts(model, config.input_shape, train, valid)
        counts_2d, _, code_length_2d = served_parts(model, SHAPE, train, valid)
        for split in range(args.splits):
            calibrating, evaluated = held_out_split(np.flatnonzero(labels == k), args.seed + split)
            calibration = calibrate(
                nll[calibrating],
                model.config.eval_masks,
                code_length=code_length[calibrating],
                context=counts,
            )
            scores = served_scores(calibration, nll, code_length)
            for (name, fpr), counted in false_positives.items():
                threshold = calibration.distribution(SCORE_NAMES[name]).threshold(fpr)
                counted[split] += (int(np.sum(scores[name][evaluated] > threshold)), len(evaluated))
            if split == 0:  # the AUROC tables: inliers held out of the first split's calibration
                inliers, outlier = evaluated, labels != k
                for j in range(10):
                    if j != k:
                        pairs[(k, j)] = auroc(scores[DEFAULT][inliers], scores[DEFAULT][labels == j])
                with_shape = calibrate(
                    nll[calibrating],
                    model.config.eval_masks,
                    code_length=code_length_2d[calibrating],
                    context=counts_2d,
                )
                scores[WITH_SHAPE] = with_shape.score("nll_or_context", nll, code_length_2d)
                for name, s in (scores | baselines(train, valid, args.seed)).items():
                    table[name][k] = auroc(s[inliers], s[outlier])

    print(f"# One-class MNIST AUROC (validation split), {'quick' if args.quick else 'full'} run")
    print()
    print("| method | " + " | ".join(str(k) for k in digits) + " | mean |")
    print("|---|" + "---|" * (len(digits) + 1))
    for name in methods:
        values = [table[name][k] for k in digits]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}** |")
    print()
    print(f"AUROC of {DEFAULT} per (inlier digit, outlier digit): rows are the one-class models")
    print()
    print("| model | " + " | ".join(str(j) for j in range(10)) + " | worst |")
    print("|---|" + "---|" * 11)
    for k in digits:
        cells = [f"{pairs[(k, j)]:.3f}" if j != k else "" for j in range(10)]
        worst = min(pairs[(k, j)] for j in range(10) if j != k)
        print(f"| {k} | " + " | ".join(cells) + f" | {worst:.3f} |")
    (k, j), worst = min(pairs.items(), key=lambda item: item[1])
    print()
    print(f"Worst pair: outlier digit {j} against the model of {k}: {worst:.3f}")
    print()
    print(
        "Calibration: observed false-positive rate on held-out inliers, all digits pooled. Each digit's "
        "validation rows are split at random into halves: one calibrates (as `made calibrate` would), the "
        f"other is counted. First split (seed {args.seed}):"
    )
    print()
    print("| score | requested fpr | flagged / inliers | observed | binomial 95% interval of the request |")
    print("|---|---|---|---|---|")
    for (name, fpr), counted in false_positives.items():
        flagged, total = counted[0]
        low, high = binomial_interval(fpr, total)
        inside = "inside" if low <= flagged / total <= high else "**outside**"
        print(
            f"| {name} | {fpr} | {flagged} / {total} | {flagged / total:.4f} "
            f"| {low:.4f}-{high:.4f} ({inside}) |"
        )
    print()
    if args.splits > 1:
        print(f"Over {args.splits} random splits (seeds {args.seed}-{args.seed + args.splits - 1}):")
        print()
        print("| score | requested fpr | mean observed | lowest | highest | splits inside the interval |")
        print("|---|---|---|---|---|---|")
        for (name, fpr), counted in false_positives.items():
            rates = counted[:, 0] / counted[:, 1]
            low, high = binomial_interval(fpr, int(counted[0, 1]))
            inside = int(np.sum((rates >= low) & (rates <= high)))
            print(
                f"| {name} | {fpr} | {rates.mean():.4f} | {rates.min():.4f} | {rates.max():.4f} "
                f"| {inside} of {args.splits} |"
            )
        print()
    bundled_out_of_distribution(train_all, valid, args.seed)
    print(
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Command: {shlex.join(sys.argv)}"
    )
    if args.plot:
        plot(table, digits, methods, Path(args.plot))


def bundled_out_of_distribution(train: np.ndarray, valid: np.ndarray, seed: int) -> None:
    """Part 2: the bundled model, calibrated on a random half of the validation rows, against generated
    inputs; the other half are the inliers."""
    log("bundled model against out-of-distribution inputs")
    calibrating, evaluated = held_out_split(np.arange(len(valid)), seed)
    sets = out_of_distribution(valid[evaluated], np.random.default_rng(seed))
    rows = np.concatenate([valid, *sets.values()])
    model, config = checkpoint.load(ROOT / "models" / "binarized-mnist" / "1")
    counts, nll, code_length = served_parts(model, config.input_shape, train, rows)
    calibration = calibrate(
        nll[calibrating], model.config.eval_masks, code_length=code_length[calibrating], context=counts
    )
    sample = np.random.default_rng(seed).choice(len(train), BASELINE_ROWS, replace=False)
    scores = served_scores(calibration, nll, code_length) | baselines(train[sample], rows, seed)
    thresholds = {
        name: calibration.distribution(SCORE_NAMES[name]).threshold(0.01)
        if name in SCORE_NAMES
        else float(np.quantile(s[calibrating], 0.99))
        for name, s in scores.items()
    }
    print("# The bundled binarized-mnist model against out-of-distribution inputs")
    print()
    print(
        "Each cell: AUROC against the held-out validation digits, then the fraction flagged at the 1% "
        "threshold (ours from the calibration, the baselines' their 99th percentile on the same rows)."
    )
    print()
    print("| input | n | " + " | ".join(scores) + " |")
    print("|---|---|" + "---|" * len(scores))
    start = len(valid)
    for label, ood in sets.items():
        cells = []
        for name, s in scores.items():
            outliers = s[start : start + len(ood)]
            cells.append(f"{auroc(s[evaluated], outliers):.3f}, {np.mean(outliers > thresholds[name]):.2f}")
        print(f"| {label} | {len(ood)} | " + " | ".join(cells) + " |")
        start += len(ood)
    cells = [f"flagged {np.mean(s[evaluated] > thresholds[name]):.3f}" for name, s in scores.items()]
    print(f"| (the held-out digits) | {len(evaluated)} | " + " | ".join(cells) + " |")
    print()


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
