"""Anomaly calibration: where a model's scores fall on data it should call normal.

The score of a row is its negative log-likelihood. Calibration stores the quantiles of the scores of
held-out (validation) data, so that for a new score s
  * p_value(s) = P(score >= s) under the calibration data (small: unusually unlikely), floored at
    1/(n+1) because n samples cannot resolve a smaller tail probability;
  * threshold(fpr) = the (1 - fpr) quantile: flagging score > threshold flags a fraction fpr of normal data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

QUANTILE_LEVELS = 1001  # quantiles at 0, 0.001, ..., 1: a tenth of a percent of resolution in fpr
DEFAULT_FPR = 0.01


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    masks: Annotated[int, Field(ge=1)]
    n: Annotated[int, Field(ge=1)]
    default_fpr: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_FPR
    quantiles: list[float]  # score quantiles at levels linspace(0, 1, len(quantiles)), nondecreasing
    mean: float
    std: float
    data_file: str | None = None
    data_sha256: str | None = None
    date: str | None = None

    @model_validator(mode="after")
    def _quantiles(self):
        q = np.asarray(self.quantiles)
        if len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
            raise ValueError("calibration quantiles must be at least 2 finite, nondecreasing values")
        return self

    @property
    def levels(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, len(self.quantiles))

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """P(calibration score >= s) for each s, from the interpolated empirical distribution."""
        cdf = np.interp(scores, np.asarray(self.quantiles), self.levels, left=0.0, right=1.0)
        return np.clip(1.0 - cdf, 1.0 / (self.n + 1), 1.0)

    def threshold(self, fpr: float | None = None) -> float:
        fpr = self.default_fpr if fpr is None else fpr
        return float(np.interp(1.0 - fpr, self.levels, np.asarray(self.quantiles)))

    def cdf(self, scores: np.ndarray, left: bool = False) -> np.ndarray:
        """P(calibration score <= s) (or < s, `left`), linear between the stored quantiles. A run of equal
        quantiles is a jump (many calibration rows share that score), taken whole at its value."""
        q, levels = np.asarray(self.quantiles), self.levels
        i = np.searchsorted(q, scores, side="left" if left else "right")  # q[i-1] <= s < q[i] (right)
        inside = (i > 0) & (i < len(q))
        lo, hi = q[np.clip(i - 1, 0, len(q) - 1)], q[np.clip(i, 0, len(q) - 1)]
        step = np.where(hi > lo, (scores - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        below = levels[np.clip(i - 1, 0, len(q) - 1)] + step * (1.0 / (len(q) - 1))
        return np.where(inside, below, np.where(i == 0, 0.0, 1.0))

    def drift(self, scores: np.ndarray) -> tuple[float, float]:
        """(Kolmogorov-Smirnov statistic, p-value) for "these scores come from the calibration distribution".

        The statistic is the largest gap between the batch's empirical CDF and the calibration CDF, taken on
        both sides of every batch value. The calibration CDF is itself an estimate from `n` rows, so the
        p-value is the two-sample test's: Kolmogorov's limit at the effective size n_e = n_b n / (n_b + n),
        with Stephens' small-sample correction. With ties (discrete scores) it is conservative."""
        values, counts = np.unique(np.asarray(scores, dtype=np.float64), return_counts=True)
        size = counts.sum()
        at_or_below = np.cumsum(counts) / size  # batch CDF at each distinct value
        below = at_or_below - counts / size  # and just below it
        statistic = float(
            max(
                np.max(at_or_below - self.cdf(values)),
                np.max(self.cdf(values, left=True) - below),
                0.0,
            )
        )
        effective = size * self.n / (size + self.n)
        root = np.sqrt(effective)
        return statistic, kolmogorov_sf((root + 0.12 + 0.11 / root) * statistic)

    def summary(self) -> dict:
        return {
            "n": self.n,
            "masks": self.masks,
            "default_fpr": self.default_fpr,
            "threshold_at_default_fpr": self.threshold(),
            "median_score": self.threshold(0.5),
            "mean_score": self.mean,
            "std_score": self.std,
            "data_file": self.data_file,
            "date": self.date,
        }


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for Kolmogorov's distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 x^2) (1 for small x, where the
    alternating series converges too slowly to be worth summing)."""
    if x < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * x**2)), 0.0, 1.0))


def calibrate(
    scores: np.ndarray,
    masks: int,
    data_file: str | None = None,
    data_sha256: str | None = None,
    default_fpr: float = DEFAULT_FPR,
) -> Calibration:
    """A Calibration from the scores (negative log-likelihoods, nats) of normal held-out rows."""
    scores = np.asarray(scores, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, min(QUANTILE_LEVELS, max(2, len(scores))))
    return Calibration(
        masks=masks,
        n=len(scores),
        default_fpr=default_fpr,
        quantiles=np.quantile(scores, levels).tolist(),
        mean=float(scores.mean()),
        std=float(scores.std()),
        data_file=data_file,
        data_sha256=data_sha256,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def scores_of(model, x: torch.Tensor, masks: int, batch_rows: int = 4096) -> np.ndarray:
    """Negative log-likelihoods (nats) of the rows of x, a batch at a time."""
    return -torch.cat(list(model.log_prob_batches(x.split(batch_rows), masks))).numpy()
