#!/usr/bin/env python3
"""Which anomaly score? A study of candidate scores on one-class MNIST (issue 14), before one is built in.

For each digit k, a MADE trained on the training rows of digit k only (`<models>/m<k>`, trained first
if missing, as bench/anomaly.py does: `made train --hidden 500 --order random --epochs 60`) scores every
validation row; the rows of digit k are the inliers, those of each other digit the outliers. For each
candidate score the table gives the mean AUROC over the 10 models, the worst model's, and the worst
(model, outlier digit) pair (below 0.5: that outlier digit looks *more* normal than the class).
Candidates:

- nll: -log p_k(x), today's score;
- two-sided: -log of the two-sided p-value of nll against the model's own validation scores (too likely is
  as suspicious as too unlikely: the typicality test);
- nll - zlib: nll minus the zlib code length of the packed pixels, in nats (Serra et al. 2020's input
  complexity, with a generic compressor);
- nll - png: the same with the 1-bit PNG code length;
- nll - independent: nll minus the code length under independent pixels fitted to all training digits
  (a learned simple model);
- nll - context: nll minus the code length under a context model of local 2-D structure (each pixel given
  its 10 causal neighbours, JBIG's template; one table fitted by counting) on the class's training rows,
  or on all training digits;
- nll - general: nll minus the code length under the bundled all-digit model (`models/binarized-mnist`): a
  likelihood ratio against a general model of the domain;
- nll - background: nll minus the code length under a background model trained with the same recipe on
  the same rows with 15% of their pixels flipped (Ren et al. 2019's likelihood ratio; `b<k>`, and `b_all`
  for the all-digit model, trained first if missing: bench/anomaly.py's prepare_backgrounds).

Validation split only (test splits are not provided); progress on stderr.

    .venv/bin/python bench/anomaly_scores.py --models runs/oneclass
"""

from __future__ import annotations

import argparse
import io
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import checkpoint  # noqa: E402
from service.context_model import ContextModel  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "binarized_mnist.npz"
LN2 = float(np.log(2.0))


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(outlier score > inlier score) + half the ties (Mann-Whitney), higher score = more anomalous."""
    scores = np.concatenate([inliers, outliers])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # average ranks over ties
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    n_in, n_out = len(inliers), len(outliers)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def nll_of(model, x: torch.Tensor, batch: int = 2000) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [(-model.log_prob(x[i : i + batch])).double().numpy() for i in range(0, len(x), batch)]
        )


def zlib_nats(bits: np.ndarray) -> np.ndarray:
    packed = np.packbits(bits.astype(np.uint8), axis=1)
    return np.array([8 * LN2 * len(zlib.compress(row.tobytes(), 9)) for row in packed])


def png_nats(bits: np.ndarray) -> np.ndarray:
    out = []
    for row in bits:
        buffer = io.BytesIO()
        Image.fromarray((row.reshape(28, 28) * 255).astype(np.uint8)).convert("1").save(
            buffer, "PNG", optimize=True
        )
        out.append(8 * LN2 * len(buffer.getvalue()))
    return np.array(out)


class Context:
    """The service's context model (service/context_model.py) fitted on 0/1 numpy rows: code lengths in
    nats. With `shape` the template is 2-D; without, the previous 10 dimensions."""

    def __init__(self, train: np.ndarray, shape: tuple[int, int] | None = (28, 28)):
        self.model = ContextModel.fit(torch.from_numpy(train).float(), shape)

    def nats(self, rows: np.ndarray) -> np.ndarray:
        return self.model.code_length(torch.from_numpy(rows).float()).numpy()


def uci_table(repository: Path) -> None:
    """The bundled UCI models (no 2-D shape: the 1-D context model) against rows they should flag: AUROC
    against the odd validation rows (the even ones are the reference), and the fraction flagged at 1%."""
    rng = np.random.default_rng(0)
    print(
        "| model | input | n | nll | nll - chain context | either nll or nll - chain context "
        "| any of nll, nll - chain context, too likely |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("uci-dna", "uci-mushrooms", "uci-nips"):
        model, _ = checkpoint.load(repository / name / "1")
        archive = np.load(ROOT.parent / "shared" / "data" / "uci" / f"{name.removeprefix('uci-')}.npz")
        train, valid = archive["train_x"], archive["valid_x"]
        even = np.arange(len(valid)) % 2 == 0
        chain = Context(train, shape=None)
        density = train.mean()
        sets = {
            "blank": np.zeros((1, valid.shape[1]), np.uint8),
            "all ones": np.ones((1, valid.shape[1]), np.uint8),
            f"noise at the data's density ({density:.2f})": (rng.random(valid.shape) < density).astype(
                np.uint8
            ),
            "columns shuffled (marginals kept)": np.stack([rng.permutation(col) for col in valid.T], axis=1),
            "5% of bits flipped": np.where(rng.random(valid.shape) < 0.05, 1 - valid, valid).astype(np.uint8),
        }

        def scores(rows, model=model, chain=chain):
            nll = nll_of(model, torch.from_numpy(rows.astype(np.float32)))
            return nll, nll - chain.nats(rows)

        nll_v, corrected_v = scores(valid)
        union_v = either(nll_v, corrected_v, even)
        three_v = any_of(nll_v, corrected_v, nll_v[even], corrected_v[even])
        for label, rows in sets.items():
            nll, corrected = scores(rows)
            two = union(nll, nll_v[even], corrected, corrected_v[even])
            three = any_of(nll, corrected, nll_v[even], corrected_v[even])
            cells = []
            for test, reference in (
                (nll, nll_v),
                (corrected, corrected_v),
                (two, union_v),
                (three, three_v),
            ):
                threshold = np.quantile(reference[even], 0.99)
                cells.append(f"{auroc(reference[~even], test):.3f}, {np.mean(test > threshold):.2f}")
            print(f"| {name} | {label} | {len(rows)} | " + " | ".join(cells) + " |")
    print()


def two_sided(nll: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """-log of the two-sided empirical p-value of each nll against the reference scores."""
    reference = np.sort(reference)
    below = np.searchsorted(reference, nll, side="right") / len(reference)
    above = 1.0 - np.searchsorted(reference, nll, side="left") / len(reference)
    p = np.clip(2 * np.minimum(below, above), 1.0 / (len(reference) + 1), 1.0)
    return -np.log(p)


def out_of_distribution(valid: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs no digit model should call normal, made from the validation digits or from nothing."""
    images = valid.reshape(-1, 28, 28)
    n = 1000
    sets = {
        "blank": np.zeros((1, 784), np.uint8),
        "all ones": np.ones((1, 784), np.uint8),
        "inverted": 1 - valid[:n],
        "rotated 90": np.rot90(images[:n], axes=(1, 2)).reshape(n, 784),
        "shifted 4 right": np.pad(images[:n], ((0, 0), (0, 0), (4, 0)))[:, :, :28].reshape(n, 784),
        "shifted 4 down": np.pad(images[:n], ((0, 0), (4, 0), (0, 0)))[:, :28, :].reshape(n, 784),
    }
    for density in (0.02, 0.1, 0.5):
        sets[f"noise p={density}"] = (rng.random((n, 784)) < density).astype(np.uint8)
    for rate in (0.02, 0.1):
        flips = rng.random((n, 784)) < rate
        sets[f"{rate:.0%} pixels flipped"] = np.where(flips, 1 - valid[:n], valid[:n]).astype(np.uint8)
    return sets


def ood_table(
    model, background, context, valid, nll_valid, zl_valid, png_valid, independent_valid, marginal
) -> None:
    """The bundled all-digit model against inputs it should flag: AUROC against the validation digits, and
    the fraction flagged at the 1% threshold. The validation rows' even half is the reference (what
    calibration would hold: p-values and thresholds), the odd half the inliers the AUROC is taken over."""
    rng = np.random.default_rng(0)
    even = np.arange(len(valid)) % 2 == 0
    nll_ref = nll_valid[even]
    complexity_valid = {
        "nll - zlib": nll_valid - zl_valid,
        "nll - png": nll_valid - png_valid,
        "nll - independent": nll_valid - independent_valid,
        "nll - background": nll_valid - nll_of(background, torch.from_numpy(valid.astype(np.float32))),
        "nll - context": nll_valid - context.nats(valid),
    }

    def all_scores(nll: np.ndarray, corrected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = {"nll": nll, "two-sided": two_sided(nll, nll_ref), **corrected}
        for other in ("nll - zlib", "nll - png", "nll - background", "nll - context"):
            scores[f"either nll or {other}"] = union(
                nll, nll_ref, corrected[other], complexity_valid[other][even]
            )
        scores["any of nll, nll - context, too likely"] = any_of(
            nll, corrected["nll - context"], nll_ref, complexity_valid["nll - context"][even]
        )
        return scores

    valid_scores = all_scores(nll_valid, complexity_valid)
    print("| input | n | " + " | ".join(f"{name}: AUROC, flagged" for name in valid_scores) + " |")
    print("|---|---|" + "---|" * len(valid_scores))
    for label, rows in out_of_distribution(valid, rng).items():
        x = torch.from_numpy(rows.astype(np.float32))
        nll = nll_of(model, x)
        ind = -(rows * np.log(marginal) + (1 - rows) * np.log(1 - marginal)).sum(1)
        corrected = {
            "nll - zlib": nll - zlib_nats(rows),
            "nll - png": nll - png_nats(rows),
            "nll - independent": nll - ind,
            "nll - background": nll - nll_of(background, x),
            "nll - context": nll - context.nats(rows),
        }
        cells = []
        for name, s in all_scores(nll, corrected).items():
            threshold = np.quantile(valid_scores[name][even], 0.99)
            cells.append(f"{auroc(valid_scores[name][~even], s):.3f}, {np.mean(s > threshold):.2f}")
        print(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    print()


def upper_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """P(reference >= s): the one-sided empirical p-value, floored at 1/(n+1)."""
    reference = np.sort(reference)
    above = 1.0 - np.searchsorted(reference, scores, side="left") / len(reference)
    return np.clip(above, 1.0 / (len(reference) + 1), 1.0)


def lower_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """P(reference <= s): the lower-tail empirical p-value (too likely), floored at 1/(n+1)."""
    below = np.searchsorted(np.sort(reference), scores, side="right") / len(reference)
    return np.clip(below, 1.0 / (len(reference) + 1), 1.0)


def any_of(
    nll: np.ndarray, corrected: np.ndarray, nll_ref: np.ndarray, corrected_ref: np.ndarray
) -> np.ndarray:
    """-log min(p_nll, p_corrected, p_too_likely): the union of three one-sided tests (unlikely, unlikely
    beyond its local complexity, or more likely than normal rows ever are)."""
    return -np.log(
        np.minimum.reduce([upper_p(nll, nll_ref), upper_p(corrected, corrected_ref), lower_p(nll, nll_ref)])
    )


def union(first: np.ndarray, first_ref: np.ndarray, second: np.ndarray, second_ref: np.ndarray) -> np.ndarray:
    """-log min(p1, p2), each one-sided p-value against its reference scores: anomalous if either score is
    unusually high for an inlier (a union of two tests; calibrated, like any score, by its own distribution
    on held-out inliers)."""
    return -np.log(np.minimum(upper_p(first, first_ref), upper_p(second, second_ref)))


def either(first: np.ndarray, second: np.ndarray, inlier: np.ndarray) -> np.ndarray:
    """union() with both references taken from the rows marked `inlier`."""
    return union(first, first[inlier], second, second[inlier])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="runs/oneclass")
    p.add_argument("--general", default="models/binarized-mnist/1")
    p.add_argument("--backgrounds", default="runs/oneclass", help="b<k> and b_all background models")
    p.add_argument("--uci-only", action="store_true", help="only the bundled UCI models' table")
    args = p.parse_args()
    if args.uci_only:
        uci_table(ROOT / "models")
        return
    from anomaly import prepare, prepare_backgrounds  # a sibling script (which imports this one)

    prepare(Path(args.models), list(range(10)))
    prepare_backgrounds(Path(args.backgrounds), list(range(10)))
    data = np.load(DATA)
    train = np.unpackbits(data["train_x"], axis=1)[:, :784]
    valid = np.unpackbits(data["valid_x"], axis=1)[:, :784]
    labels = data["valid_y"]
    x = torch.from_numpy(valid.astype(np.float32))

    print("input complexity (zlib, png) ...", file=sys.stderr)
    zl, pn = zlib_nats(valid), png_nats(valid)
    marginal = np.clip(train.mean(0), 1e-3, 1 - 1e-3)
    independent = -(valid * np.log(marginal) + (1 - valid) * np.log(1 - marginal)).sum(1)
    context_all = Context(train).nats(valid)
    print("general model ...", file=sys.stderr)
    general_model, _ = checkpoint.load(Path(args.general))
    general = nll_of(general_model, x)

    names = [
        "nll",
        "two-sided",
        "nll - zlib",
        "nll - png",
        "nll - independent",
        "nll - general",
        "nll - background",
        "either nll or nll - zlib",
        "either nll or nll - png",
        "either nll or nll - background",
        "nll - context (class)",
        "nll - context (all digits)",
        "either nll or nll - context (class)",
        "any of nll, nll - context (class), too likely",
    ]
    per_model = {name: [] for name in names}
    worst_pair = {name: (1.0, None) for name in names}
    for k in range(10):
        model, config = checkpoint.load(Path(args.models) / f"m{k}")
        print(f"digit {k} ...", file=sys.stderr)
        nll = nll_of(model, x)
        # The inliers' even rows are the reference (the calibration a deployed model would hold); the odd
        # ones are the inliers evaluated, so a score that uses the reference is not judged on it.
        index = np.arange(len(labels))
        reference = (labels == k) & (index % 2 == 0)
        inlier = (labels == k) & (index % 2 == 1)
        # the model's own validation scores: its calibration data (the inliers here)
        scores = {
            "nll": nll,
            "two-sided": two_sided(nll, nll[reference]),
            "nll - zlib": nll - zl,
            "nll - png": nll - pn,
            "nll - independent": nll - independent,
            "nll - general": nll - general,
            "nll - background": nll - nll_of(checkpoint.load(Path(args.backgrounds) / f"b{k}")[0], x),
        }
        class_context = Context(train[data["train_y"] == k])
        scores["nll - context (class)"] = nll - class_context.nats(valid)
        scores["nll - context (all digits)"] = nll - context_all
        scores["either nll or nll - context (class)"] = either(
            nll, scores["nll - context (class)"], reference
        )
        corrected = scores["nll - context (class)"]
        scores["any of nll, nll - context (class), too likely"] = any_of(
            nll, corrected, nll[reference], corrected[reference]
        )
        scores["either nll or nll - zlib"] = either(nll, scores["nll - zlib"], reference)
        scores["either nll or nll - png"] = either(nll, scores["nll - png"], reference)
        scores["either nll or nll - background"] = either(nll, scores["nll - background"], reference)
        for name, s in scores.items():
            pairs = {j: auroc(s[inlier], s[labels == j]) for j in range(10) if j != k}
            per_model[name].append(auroc(s[inlier], s[labels != k]))
            j, a = min(pairs.items(), key=lambda item: item[1])
            if a < worst_pair[name][0]:
                worst_pair[name] = (a, f"{j} vs model {k}")

    background_all, _ = checkpoint.load(Path(args.backgrounds) / "b_all")
    ood_table(general_model, background_all, Context(train), valid, general, zl, pn, independent, marginal)

    print("| score | mean AUROC | worst digit's AUROC | worst pair AUROC (outlier vs model) |")
    print("|---|---|---|---|")
    for name in names:
        values = per_model[name]
        worst = int(np.argmin(values))
        a, pair = worst_pair[name]
        print(f"| {name} | {np.mean(values):.3f} | {values[worst]:.3f} (digit {worst}) | {a:.3f} ({pair}) |")
    print()
    print("| score | " + " | ".join(str(k) for k in range(10)) + " |")
    print("|---|" + "---|" * 10)
    for name in names:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in per_model[name]) + " |")


if __name__ == "__main__":
    main()
