"""Calibration: thresholds flag the asked-for fraction of normal data, p-values are calibrated."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from service import checkpoint
from service.calibration import Calibration, calibrate, kolmogorov_sf
from tests.api.helpers import MADE, save_tiny


def test_threshold_flags_the_requested_fraction_of_normal_data():
    rng = np.random.default_rng(0)
    table = calibrate(rng.gamma(3.0, 2.0, size=20_000), masks=1)
    fresh = rng.gamma(3.0, 2.0, size=20_000)  # new normal data from the same distribution
    for fpr in (0.01, 0.05, 0.2):
        assert abs(np.mean(fresh > table.threshold(fpr)) - fpr) < 0.25 * fpr + 0.003
    p = table.p_value(fresh)
    for level in (0.01, 0.1, 0.5):  # valid p-values: P(p <= a) ~ a under normal data
        assert abs(np.mean(p <= level) - level) < 0.2 * level + 0.005
    assert table.p_value(np.array([1e9]))[0] == pytest.approx(1 / (20_000 + 1))  # floored at 1/(n+1)
    assert table.p_value(np.array([-1e9]))[0] == 1.0


def test_invalid_tables_are_refused():
    with pytest.raises(ValueError, match="nondecreasing"):
        Calibration(masks=1, n=3, quantiles=[3.0, 1.0, 2.0], mean=2.0, std=1.0)


def test_made_calibrate_rewrites_the_checkpoint(tmp_path):
    save_tiny(tmp_path / "m", steps=20)
    rows = np.random.default_rng(1).integers(0, 2, size=(400, 8))
    np.save(tmp_path / "normal.npy", rows)
    result = subprocess.run(
        [
            MADE,
            "calibrate",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "normal.npy"),
            "--fpr",
            "0.05",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(result.stdout)
    config = checkpoint.read_config(tmp_path / "m")
    assert summary["n"] == 400 and config.calibration.n == 400 and config.calibration.default_fpr == 0.05
    assert config.calibration.data_file.endswith("normal.npy") and len(config.calibration.data_sha256) == 64
    model, _ = checkpoint.load(tmp_path / "m")  # still loads, weights untouched
    assert model.n_dims == 8


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
    table = calibrate(rng.normal(size=5000), masks=1)
    p_values = np.array([table.drift(rng.normal(size=100))[1] for _ in range(2000)])
    for alpha in (0.05, 0.01):
        bound = alpha + 3.3 * np.sqrt(alpha * (1 - alpha) / len(p_values))
        assert np.mean(p_values < alpha) <= bound, alpha


def test_drift_detects_a_shifted_batch_and_a_wider_one():
    rng = np.random.default_rng(1)
    table = calibrate(rng.normal(size=5000), masks=1)
    shifted = np.mean([table.drift(rng.normal(0.5, 1.0, size=200))[1] < 0.01 for _ in range(200)])
    wider = np.mean([table.drift(rng.normal(0.0, 1.6, size=200))[1] < 0.01 for _ in range(200)])
    assert shifted > 0.95 and wider > 0.8, (shifted, wider)


def test_drift_is_conservative_with_discrete_scores():
    """Scores of a small binary model take few values: ties make the test conservative, never liberal."""
    rng = np.random.default_rng(2)
    table = calibrate(rng.integers(0, 5, size=5000).astype(float), masks=1)
    p_values = np.array([table.drift(rng.integers(0, 5, size=100).astype(float))[1] for _ in range(1000)])
    assert np.mean(p_values < 0.05) <= 0.05
    # every score 2: the batch's CDF jumps 0 -> 1 there, the calibration's from P(<2) = 0.4 to P(<=2) = 0.6
    statistic, _ = table.drift(np.full(100, 2.0))
    assert statistic == pytest.approx(0.4, abs=0.03)


def test_the_calibration_cdf_jumps_at_a_run_of_equal_scores():
    table = calibrate(np.array([1.0] * 50 + [2.0] * 50), masks=1)
    assert table.cdf(np.array([1.0]))[0] == pytest.approx(0.5, abs=0.02)  # P(score <= 1)
    assert table.cdf(np.array([1.0]), left=True)[0] == 0.0  # P(score < 1)
    assert table.cdf(np.array([0.5, 3.0])).tolist() == [0.0, 1.0]
