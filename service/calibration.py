"""Anomaly calibration: the anomaly scores, and where they fall on held-out data the model should call normal.

Two scores (docs/anomaly.md has their maths and measured behaviour):

  nll             -log p(x), nats. Likelihood models call simple inputs (few "on" pixels, a blank row) likely,
                  so on its own it misses them.
  nll_or_context  -log min(p_nll(x), p_ratio(x)): the union of two one-sided tests. p_nll is the p-value of
                  the NLL, p_ratio that of NLL - L(x), where L(x) is x's code length under a context model of
                  local structure (context_model.py) fitted to the training rows; both p-values are against a
                  reference half of the held-out rows. The ratio cancels what local statistics explain (the
                  cause of the NLL's failure); the NLL test keeps what the ratio is blind to (noise, which
                  local statistics find costly too). The default wherever the calibration has a context model.

Each score's distribution on held-out inliers (ScoreDistribution, for nll_or_context on the other half of the
held-out rows, so that its p-values and thresholds are out-of-sample) gives, for a new score s,

  p_value(s)     = 1 - F(s): F is the empirical CDF interpolated between the order statistics, placed at
                   k/(n+1) (the unbiased positions: E F_true(s_(k)) = k/(n+1)), so that an inlier's p-value is
                   uniform and P(p <= a) = a; above the largest calibration score, an exponential tail
                   fitted to the top tenth keeps ranking ever more extreme rows.
  threshold(fpr) = F^-1(1 - fpr): a row is flagged when score > threshold, exactly when p_value < fpr.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .context_model import N_CONTEXTS, ContextModel, Template, template_for

QUANTILE_LEVELS = 1001  # quantiles at 0, 0.001, ..., 1: the empirical distribution, compact for any n
DEFAULT_FPR = 0.01
TAIL_LEVEL = 0.9  # the exponential tail's scale is the mean excess over this quantile
ScoreName = Literal["nll_or_context", "nll"]
SCORES = get_args(ScoreName)  # ("nll_or_context", "nll")
SPLIT_SEED = 0  # which held-out rows are the reference half for nll_or_context: recorded, reproducible


class ScoreDistribution(BaseModel):
    """One anomaly score's distribution on n held-out inliers: quantiles at levels linspace(0, 1, m) (the
    order statistics themselves when n <= m), for p-values, thresholds and the drift test."""

    model_config = ConfigDict(extra="forbid")
    n: Annotated[int, Field(ge=1)]
    quantiles: list[float]  # nondecreasing; at np.quantile's default levels (s_(k) at (k - 1) / (n - 1))
    mean: float
    std: float

    @model_validator(mode="after")
    def _quantiles(self):
        q = np.asarray(self.quantiles)  # (validation runs before the cached arrays exist)
        if len(q) < 2 or not np.all(np.isfinite(q)) or np.any(np.diff(q) < 0):
            raise ValueError("calibration quantiles must be at least 2 finite, nondecreasing values")
        return self

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreDistribution:
        scores = np.asarray(scores, dtype=np.float64)
        levels = np.linspace(0.0, 1.0, min(QUANTILE_LEVELS, max(2, len(scores))))
        return cls(
            n=len(scores),
            quantiles=np.quantile(scores, levels).tolist(),
            mean=float(scores.mean()),
            std=float(scores.std()),
        )

    # computed once per loaded calibration (every request reads them; the fields are never reassigned)
    @cached_property
    def _q(self) -> np.ndarray:
        return np.asarray(self.quantiles, dtype=np.float64)

    @cached_property
    def levels(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, len(self.quantiles))

    @cached_property
    def _descending(self) -> tuple[np.ndarray, np.ndarray]:
        return -self._q[::-1], self.levels[::-1]

    @cached_property
    def tail_scale(self) -> float:
        """Mean excess of the scores over their 90% quantile (from the stored quantiles): the scale of the
        exponential tail beyond the largest score. Never 0, so the tail always ranks."""
        q = self._q
        start = float(np.interp(TAIL_LEVEL, self.levels, q))
        excess = float(np.mean(q[self.levels >= TAIL_LEVEL] - start))
        return max(excess, 1e-9 * max(1.0, abs(q[-1])))

    def cdf(self, scores: np.ndarray, left: bool = False) -> np.ndarray:
        """P(calibration score <= s) (or < s, `left`), linear between the stored quantiles. A run of equal
        quantiles is a jump (many calibration rows share that score), taken whole at its value."""
        q, levels = self._q, self.levels
        scores = np.asarray(scores, dtype=np.float64)
        i = np.searchsorted(q, scores, side="left" if left else "right")  # q[i-1] <= s < q[i] (right)
        inside = (i > 0) & (i < len(q))
        lo, hi = q[np.clip(i - 1, 0, len(q) - 1)], q[np.clip(i, 0, len(q) - 1)]
        step = np.where(hi > lo, (scores - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
        below = levels[np.clip(i - 1, 0, len(q) - 1)] + step * (1.0 / (len(q) - 1))
        return np.where(inside, below, np.where(i == 0, 0.0, 1.0))

    def log_p_value(self, scores: np.ndarray) -> np.ndarray:
        """log(1 - F(s)), F at the plotting positions k/(n+1) (see the module docstring); at a run of equal
        calibration scores, the whole run counts as at least as high (conservative)."""
        scores = np.asarray(scores, dtype=np.float64)
        n, largest = self.n, self._q[-1]
        # P(score < s), as cdf(left=True) gives it, in one np.interp: on the negated, reversed quantiles a
        # run of equal scores is met from its high end, so a tie reads the run's lowest level
        below = np.interp(-scores, *self._descending)
        rank = np.where(scores < self._q[0], 0.0, 1.0 + (n - 1) * below)
        inside = np.log1p(-np.minimum(rank, n) / (n + 1))
        beyond = -np.log(n + 1) - (scores - largest) / self.tail_scale
        return np.where(scores > largest, beyond, inside)

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """P(an inlier scores at least s), in (0, 1]."""
        return np.exp(self.log_p_value(scores))

    def threshold(self, fpr: float) -> float:
        """The score above which a fraction `fpr` of inliers lie: F^-1(1 - fpr), past the largest calibration
        score (fpr < 1/(n+1)) along the tail."""
        n, q = self.n, self._q
        rank = (n + 1) * (1.0 - fpr)  # of the order statistic at level 1 - fpr, counting from 1
        if rank > n:
            return float(q[-1] + self.tail_scale * (-np.log(n + 1) - np.log(fpr)))  # finite for any fpr > 0
        level = (rank - 1.0) / (n - 1) if n > 1 else 0.0
        return float(np.interp(max(level, 0.0), self.levels, q))

    def drift(self, scores: np.ndarray) -> tuple[float, float]:
        """(Kolmogorov-Smirnov statistic, p-value) for "these scores come from this distribution".

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

    def summary(self, default_fpr: float) -> dict:
        return {
            "n": self.n,
            "threshold_at_default_fpr": self.threshold(default_fpr),
            "median": float(np.interp(0.5, self.levels, self._q)),
            "mean": self.mean,
            "std": self.std,
        }


class ContextCounts(BaseModel):
    """The context model of local structure, as fitted: per context, how often the bit it predicts was 1 and
    how often the context was seen, over the training rows (the probabilities follow from these)."""

    model_config = ConfigDict(extra="forbid")
    template: Template
    rows: Annotated[int, Field(ge=1)]
    ones: list[Annotated[int, Field(ge=0)]]
    seen: list[Annotated[int, Field(ge=0)]]
    data_file: str | None = None
    data_sha256: str | None = None

    @model_validator(mode="after")
    def _counts(self):
        if len(self.ones) != N_CONTEXTS or len(self.seen) != N_CONTEXTS:
            raise ValueError(f"context counts must have {N_CONTEXTS} entries each")
        if any(one > seen for one, seen in zip(self.ones, self.seen, strict=True)):
            raise ValueError("a context cannot have more ones than times it was seen")
        return self

    @classmethod
    def fit(
        cls,
        rows: torch.Tensor,
        input_shape: list[int] | None,
        data_file: str | None = None,
        data_sha256: str | None = None,
    ) -> ContextCounts:
        """Count the (N, D) 0/1 training rows."""
        ones, seen = context_model(rows.shape[1], input_shape, device=rows.device).count(rows)
        return cls(
            template=template_for(input_shape),
            rows=len(rows),
            ones=ones.tolist(),
            seen=seen.tolist(),
            data_file=data_file,
            data_sha256=data_sha256,
        )

    def model(self, n_dims: int, input_shape: list[int] | None, device=None) -> ContextModel:
        return context_model(n_dims, input_shape, device).set_counts(
            torch.tensor(self.ones), torch.tensor(self.seen)
        )


def context_model(n_dims: int, input_shape: list[int] | None, device=None) -> ContextModel:
    """An unfitted context model for rows of this input shape (the 2-D template for images only)."""
    shape = input_shape if template_for(input_shape) == "jbig10" else None
    return ContextModel(n_dims, shape).to(device)


class ReferenceScores(BaseModel):
    """nll_or_context's two tests: the NLL's and NLL - L(x)'s distributions on the reference half."""

    model_config = ConfigDict(extra="forbid")
    nll: ScoreDistribution
    nll_minus_context: ScoreDistribution


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    masks: Annotated[int, Field(ge=1)]  # the ensemble size the NLLs are computed with
    default_fpr: Annotated[float, Field(gt=0, lt=1)] = DEFAULT_FPR
    default_score: ScoreName = "nll"
    nll: ScoreDistribution  # the NLL on every held-out row
    context: ContextCounts | None = None
    reference: ReferenceScores | None = None  # on one half of the held-out rows
    nll_or_context: ScoreDistribution | None = None  # on the other half
    data_file: str | None = None
    data_sha256: str | None = None
    date: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nll_only_layout(cls, data):
        """Calibrations written before nll_or_context held the NLL's distribution at the top level."""
        if isinstance(data, dict) and "quantiles" in data and "nll" not in data:
            data = dict(data)
            data["nll"] = {key: data.pop(key) for key in ("n", "quantiles", "mean", "std") if key in data}
        return data

    @model_validator(mode="after")
    def _complete(self):
        parts = (self.context, self.reference, self.nll_or_context)
        if any(p is not None for p in parts) and any(p is None for p in parts):
            raise ValueError("nll_or_context needs all of 'context', 'reference' and 'nll_or_context'")
        if self.default_score == "nll_or_context" and self.nll_or_context is None:
            raise ValueError("default_score 'nll_or_context' is not calibrated")
        return self

    @property
    def scores(self) -> tuple[str, ...]:
        """The anomaly scores this calibration can compute, default first."""
        available = SCORES if self.nll_or_context is not None else ("nll",)
        return (self.default_score, *(s for s in available if s != self.default_score))

    @property
    def n(self) -> int:
        return self.nll.n

    def distribution(self, score: str) -> ScoreDistribution:
        return self.nll if score == "nll" else self.nll_or_context

    def score(self, score: str, nll: np.ndarray, code_length: np.ndarray | None) -> np.ndarray:
        """(N,) anomaly scores from the rows' NLLs and (for nll_or_context) context code lengths."""
        if score == "nll":
            return nll
        return -np.minimum(*self._log_p_values(nll, code_length))

    def ratio_test_decides(self, nll: np.ndarray, code_length: np.ndarray) -> np.ndarray:
        """(N,) bool: where nll_or_context's smaller p-value is the ratio test's (NLL - L(x))."""
        log_p_nll, log_p_ratio = self._log_p_values(nll, code_length)
        return log_p_ratio < log_p_nll

    def feature_scores(
        self,
        score: str,
        nll: np.ndarray,
        code_length: np.ndarray,
        nll_parts: np.ndarray,
        code_parts: np.ndarray,
    ) -> np.ndarray:
        """(N, D) each dimension's part of the test that decides each row's nll_or_context score: its
        -log p(x_d | x_<d) where the NLL test decides, -log p(x_d | x_<d) + log q(x_d | c_d(x)) where the
        ratio test does (those sum to the row's NLL - L(x))."""
        if score == "nll":
            return nll_parts
        ratio = self.ratio_test_decides(nll, code_length)
        return np.where(ratio[:, None], nll_parts - code_parts, nll_parts)

    def _log_p_values(self, nll: np.ndarray, code_length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reference = self.reference
        return reference.nll.log_p_value(nll), reference.nll_minus_context.log_p_value(nll - code_length)

    def summary(self) -> dict:
        return {
            "n": self.nll.n,
            "masks": self.masks,
            "default_fpr": self.default_fpr,
            "default_score": self.default_score,
            "threshold_at_default_fpr": self.distribution(self.default_score).threshold(self.default_fpr),
            "scores": {name: self.distribution(name).summary(self.default_fpr) for name in self.scores},
            "context": None
            if self.context is None
            else {
                "template": self.context.template,
                "rows": self.context.rows,
                "data_file": self.context.data_file,
            },
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
    nll: np.ndarray,
    masks: int,
    code_length: np.ndarray | None = None,
    context: ContextCounts | None = None,
    data_file: str | None = None,
    data_sha256: str | None = None,
    default_fpr: float = DEFAULT_FPR,
    default_score: str | None = None,
) -> Calibration:
    """A Calibration from normal held-out rows' NLLs (nats) and, with a context model, their code lengths
    under it: then nll_or_context, the default, is calibrated too. A fixed random half of the rows (by
    SPLIT_SEED) is the reference for its two tests, and its threshold comes from the other half.
    `default_score`: the score requests get by default (default: nll_or_context when it is calibrated)."""
    nll = np.asarray(nll, dtype=np.float64)
    fields = {}
    if context is not None and len(nll) >= 2:
        if code_length is None or len(code_length) != len(nll):
            raise ValueError("nll_or_context needs one code length per held-out row")
        ratio = nll - np.asarray(code_length, dtype=np.float64)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(nll))
        reference, held = order[: (len(nll) + 1) // 2], order[(len(nll) + 1) // 2 :]
        references = ReferenceScores(
            nll=ScoreDistribution.of(nll[reference]), nll_minus_context=ScoreDistribution.of(ratio[reference])
        )
        log_p = np.minimum(
            references.nll.log_p_value(nll[held]), references.nll_minus_context.log_p_value(ratio[held])
        )
        fields = dict(
            default_score=default_score or "nll_or_context",
            context=context,
            reference=references,
            nll_or_context=ScoreDistribution.of(-log_p),
        )
    elif default_score not in (None, "nll"):
        raise ValueError(f"default_score {default_score!r} needs a context model and two held-out rows")
    return Calibration(
        masks=masks,
        default_fpr=default_fpr,
        nll=ScoreDistribution.of(nll),
        data_file=data_file,
        data_sha256=data_sha256,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    )


def held_out_scores(
    model, batches: Iterable[torch.Tensor], masks: int, context: ContextModel | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(NLL (N,), context code length (N,) or None) of held-out rows, one batch at a time."""
    nll, code = [], []
    for x in batches:
        nll.append(-next(model.log_prob_batches([x], masks)).numpy())
        if context is not None:
            code.append(context.code_length(x.to(context.p_one.device)).cpu().numpy())
    return np.concatenate(nll), (np.concatenate(code) if context is not None else None)
