"""Calibration: thresholds flag the asked-for fraction of normal data, p-values are calibrated."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from service import checkpoint
from service.calibration import Calibration, ContextCounts, ScoreDistribution, calibrate, kolmogorov_sf
from service.context_model import N_CONTEXTS
from tests.api.helpers import MADE, save_tiny


def test_threshold_flags_the_requested_fraction_of_normal_data():
    rng = np.random.default_rng(0)
    table = ScoreDistribution.of(rng.gamma(3.0, 2.0, size=20_000))
    fresh = rng.gamma(3.0, 2.0, size=20_000)  # new normal data from the same distribution
    for fpr in (0.01, 0.05, 0.2):
        assert abs(np.mean(fresh > table.threshold(fpr)) - fpr) < 0.25 * fpr + 0.003
    p = table.p_value(fresh)
    for level in (0.01, 0.1, 0.5):  # valid p-values: P(p <= a) ~ a under normal data
        assert abs(np.mean(p <= level) - level) < 0.2 * level + 0.005
    assert table.p_value(np.array([-1e9]))[0] == 1.0


def test_the_threshold_is_unbiased_for_small_calibration_sets():
    """The order statistic at rank (n+1)(1 - fpr) flags fpr of new inliers on average, whatever n: over 4,000
    calibrations of 333 uniform scores the mean true false-positive rate (1 - threshold) is 0.0100 at fpr
    0.01. np.quantile's default (s_(k) at level (k-1)/(n-1)) would give 0.0129."""
    rng = np.random.default_rng(1)
    rates = [1.0 - ScoreDistribution.of(rng.uniform(size=333)).threshold(0.01) for _ in range(4000)]
    assert abs(np.mean(rates) - 0.01) < 0.0004, np.mean(rates)


def test_a_row_is_flagged_exactly_when_its_p_value_is_below_the_rate():
    rng = np.random.default_rng(2)
    table = ScoreDistribution.of(rng.normal(size=500))
    scores = np.concatenate([rng.normal(scale=2.0, size=5000), np.linspace(3.0, 8.0, 200)])  # and beyond
    for fpr in (0.3, 0.05, 0.01, 0.001, 1e-5):  # the last two need the tail: below 1/(n+1)
        flagged = scores > table.threshold(fpr)
        assert np.array_equal(flagged, table.p_value(scores) < fpr), fpr
        assert flagged.any()


def test_beyond_the_largest_calibration_score_the_tail_keeps_ranking():
    rng = np.random.default_rng(3)
    table = ScoreDistribution.of(rng.exponential(size=2000))
    largest = table.quantiles[-1]
    p = table.p_value(np.array([largest, largest + 1.0, largest + 5.0, largest + 50.0]))
    assert p[0] == pytest.approx(1 / 2001) and np.all(np.diff(p) < 0) and p[-1] > 0
    # an exponential's mean excess is its scale (1): the tail continues the distribution
    assert table.tail_scale == pytest.approx(1.0, rel=0.15)
    assert table.threshold(1e-4) == pytest.approx(largest + table.tail_scale * np.log(1 / (2001 * 1e-4)))
    assert np.isfinite(table.threshold(5e-324))  # the smallest double: still a number (schemathesis's find)


def test_a_run_of_equal_calibration_scores_counts_whole_as_at_least_as_high():
    """Discrete scores (small binary models) tie: a score equal to a run's value has the whole run above."""
    table = ScoreDistribution.of(np.array([1.0] * 50 + [2.0] * 50))
    p = table.p_value(np.array([0.5, 1.0, 1.5, 2.0]))
    assert p[0] == 1.0 and p[1] == pytest.approx(100 / 101) and p[3] == pytest.approx(50 / 101)
    assert p[1] > p[2] > p[3]  # between the runs, linear


def test_invalid_tables_are_refused():
    with pytest.raises(ValueError, match="nondecreasing"):
        ScoreDistribution(n=3, quantiles=[3.0, 1.0, 2.0], mean=2.0, std=1.0)


def test_a_calibration_written_before_nll_or_context_still_reads():
    old = {"masks": 2, "n": 3, "default_fpr": 0.05, "quantiles": [1.0, 2.0, 3.0], "mean": 2.0, "std": 0.8}
    table = Calibration.model_validate(old)
    assert table.default_score == "nll" and table.scores == ("nll",) and table.nll.n == 3
    assert table.nll.quantiles == [1.0, 2.0, 3.0] and table.default_fpr == 0.05


# ---- nll_or_context: two one-sided tests, calibrated out of sample ----------------------------------------
def counts() -> ContextCounts:
    return ContextCounts(template="previous10", rows=1, ones=[0] * N_CONTEXTS, seen=[0] * N_CONTEXTS)


def inliers(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(nll, code length) of inlier rows: the code length explains most of the NLL, as for real digits."""
    code = rng.normal(100.0, 15.0, size=n)
    return code + rng.normal(20.0, 3.0, size=n), code


def test_nll_or_context_flags_the_requested_fraction_of_new_inliers():
    """Its threshold comes from the half of the held-out rows that its two tests' references did not: on
    fresh inliers it flags the requested rate, and its p-values are uniform."""
    rng = np.random.default_rng(4)
    table = calibrate(*inliers(rng, 1)[:1], masks=1)  # nll only: no context
    assert table.scores == ("nll",)
    nll, code = inliers(rng, 20_000)
    table = calibrate(nll, masks=1, code_length=code, context=counts())
    assert table.default_score == "nll_or_context" and table.scores == ("nll_or_context", "nll")
    assert table.nll.n == 20_000 and table.reference.nll.n == table.nll_or_context.n == 10_000
    fresh_nll, fresh_code = inliers(rng, 40_000)
    score = table.score("nll_or_context", fresh_nll, fresh_code)
    distribution = table.distribution("nll_or_context")
    for fpr in (0.01, 0.05):
        assert abs(np.mean(score > distribution.threshold(fpr)) - fpr) < 0.15 * fpr, fpr
    p = distribution.p_value(score)
    for level in (0.01, 0.1, 0.5):
        assert abs(np.mean(p <= level) - level) < 0.15 * level, level


def test_nll_or_context_flags_rows_too_simple_for_the_nll_and_keeps_what_the_nll_flags():
    rng = np.random.default_rng(5)
    nll, code = inliers(rng, 4000)
    table = calibrate(nll, masks=1, code_length=code, context=counts())
    threshold = table.distribution("nll_or_context").threshold(0.01)
    nll_threshold = table.distribution("nll").threshold(0.01)
    # a blank page: tiny NLL (the NLL test calls it normal), but far more than its tiny code length
    blank_nll, blank_code = np.array([45.0]), np.array([1.0])
    assert (
        blank_nll[0] < nll_threshold and table.score("nll_or_context", blank_nll, blank_code)[0] > threshold
    )
    assert table.ratio_test_decides(blank_nll, blank_code)[0]
    # noise: both code lengths huge, the ratio unremarkable, the NLL far out: still flagged, by the NLL test
    noise_nll, noise_code = np.array([500.0]), np.array([480.0])
    assert table.score("nll_or_context", noise_nll, noise_code)[0] > threshold
    assert not table.ratio_test_decides(noise_nll, noise_code)[0]
    # each row's parts are those of the test that decided it
    nll_parts, code_parts = np.full((2, 3), 2.0), np.full((2, 3), 0.5)
    parts = table.feature_scores(
        "nll_or_context", np.r_[blank_nll, noise_nll], np.r_[blank_code, noise_code], nll_parts, code_parts
    )
    assert parts[0].tolist() == [1.5, 1.5, 1.5] and parts[1].tolist() == [2.0, 2.0, 2.0]


def test_incomplete_nll_or_context_calibrations_are_refused():
    nll = ScoreDistribution.of(np.arange(10.0))
    with pytest.raises(ValueError, match="needs all of"):
        Calibration(masks=1, nll=nll, context=counts(), default_score="nll")
    with pytest.raises(ValueError, match="not calibrated"):
        Calibration(masks=1, nll=nll, default_score="nll_or_context")
    with pytest.raises(ValueError, match="needs a context model"):
        calibrate(np.arange(10.0), masks=1, default_score="nll_or_context")
    with pytest.raises(ValueError, match="ones"):
        ContextCounts(template="jbig10", rows=1, ones=[1] * N_CONTEXTS, seen=[0] * N_CONTEXTS)


def test_made_calibrate_rewrites_the_checkpoint(tmp_path):
    save_tiny(tmp_path / "m", steps=20)
    rows = np.random.default_rng(1).integers(0, 2, size=(400, 8))
    np.save(tmp_path / "normal.npy", rows)
    np.save(tmp_path / "train.npy", np.random.default_rng(2).integers(0, 2, size=(600, 8)))
    command = [MADE, "calibrate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "normal.npy")]
    # the training file the tiny model records is not there: the NLL score only, and a warning that says so
    result = subprocess.run([*command, "--fpr", "0.05"], capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout)
    config = checkpoint.read_config(tmp_path / "m")
    assert summary["n"] == 400 and config.calibration.n == 400 and config.calibration.default_fpr == 0.05
    assert config.calibration.scores == ("nll",) and "nll score only" in result.stderr
    assert config.calibration.data_file.endswith("normal.npy") and len(config.calibration.data_sha256) == 64
    # with training rows: the context model is counted on them, and nll_or_context becomes the default
    result = subprocess.run(
        [*command, "--context-data", str(tmp_path / "train.npy")], capture_output=True, text=True, check=True
    )
    config = checkpoint.read_config(tmp_path / "m")
    calibration = config.calibration
    assert calibration.default_score == "nll_or_context" and calibration.context.rows == 600
    assert calibration.context.template == "jbig10"  # the tiny model's input shape is 2 x 4
    assert sum(calibration.context.seen) == 600 * 8 and calibration.context.data_file.endswith("train.npy")
    assert calibration.reference.nll.n == 200 and calibration.nll_or_context.n == 200
    assert json.loads(result.stdout)["default_score"] == "nll_or_context"
    model, _ = checkpoint.load(tmp_path / "m")  # still loads, weights untouched
    assert model.n_dims == 8
    # the NLL can stay the default, and nll_or_context cannot be had without training rows
    subprocess.run(
        [*command, "--context-data", str(tmp_path / "train.npy"), "--default-score", "nll"],
        capture_output=True,
        check=True,
    )
    assert checkpoint.read_config(tmp_path / "m").calibration.scores == ("nll", "nll_or_context")
    refused = subprocess.run([*command, "--default-score", "nll_or_context"], capture_output=True, text=True)
    assert refused.returncode == 2 and "needs 0/1 rows and training rows" in refused.stderr


# ---- drift: a two-sample Kolmogorov-Smirnov test against the calibration scores ------------------------
def test_kolmogorov_tail_matches_the_tables():
    # the classical critical values of the Kolmogorov distribution
    for x, tail in ((1.2238, 0.10), (1.3581, 0.05), (1.6276, 0.01), (1.9495, 0.001)):
        assert abs(kolmogorov_sf(x) - tail) < 2e-4
    assert kolmogorov_sf(0.1) == 1.0 and kolmogorov_sf(10.0) < 1e-80


def test_drift_keeps_its_level_on_batches_from_the_calibration_distribution():
    """2,000 batches of 100 normal scores against a calibration of 5,000: false alarms at the level, within
    the binomial 99.9% bound, at 5% and 1%."""
    rng = np.random.default_rng(0)
    table = ScoreDistribution.of(rng.normal(size=5000))
    p_values = np.array([table.drift(rng.normal(size=100))[1] for _ in range(2000)])
    for alpha in (0.05, 0.01):
        bound = alpha + 3.3 * np.sqrt(alpha * (1 - alpha) / len(p_values))
        assert np.mean(p_values < alpha) <= bound, alpha


def test_drift_detects_a_shifted_batch_and_a_wider_one():
    rng = np.random.default_rng(1)
    table = ScoreDistribution.of(rng.normal(size=5000))
    shifted = np.mean([table.drift(rng.normal(0.5, 1.0, size=200))[1] < 0.01 for _ in range(200)])
    wider = np.mean([table.drift(rng.normal(0.0, 1.6, size=200))[1] < 0.01 for _ in range(200)])
    assert shifted > 0.95 and wider > 0.8, (shifted, wider)


def test_drift_is_conservative_with_discrete_scores():
    """Scores of a small binary model take few values: ties make the test conservative, never liberal."""
    rng = np.random.default_rng(2)
    table = ScoreDistribution.of(rng.integers(0, 5, size=5000).astype(float))
    p_values = np.array([table.drift(rng.integers(0, 5, size=100).astype(float))[1] for _ in range(1000)])
    assert np.mean(p_values < 0.05) <= 0.05
    # every score 2: the batch's CDF jumps 0 -> 1 there, the calibration's from P(<2) = 0.4 to P(<=2) = 0.6
    statistic, _ = table.drift(np.full(100, 2.0))
    assert statistic == pytest.approx(0.4, abs=0.03)


def test_the_calibration_cdf_jumps_at_a_run_of_equal_scores():
    table = ScoreDistribution.of(np.array([1.0] * 50 + [2.0] * 50))
    assert table.cdf(np.array([1.0]))[0] == pytest.approx(0.5, abs=0.02)  # P(score <= 1)
    assert table.cdf(np.array([1.0]), left=True)[0] == 0.0  # P(score < 1)
    assert table.cdf(np.array([0.5, 3.0])).tolist() == [0.0, 1.0]
