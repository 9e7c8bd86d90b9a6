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
