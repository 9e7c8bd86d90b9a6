"""Calibration: thresholds flag the asked-for fraction of normal data, p-values are calibrated."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from service import checkpoint
from service.calibration import Calibration, calibrate
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
