"""The `made` command end to end, as a user runs it: a subprocess on small synthetic files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from service import checkpoint
from tests.helpers import markov_chain


def made(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"made {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    train_x = markov_chain(600, 10, seed=1).numpy().astype(np.uint8)
    valid_x = markov_chain(200, 10, seed=2).numpy().astype(np.uint8)
    np.savez(root / "chain.npz", train_x=train_x, valid_x=valid_x)
    result = made(
        "train",
        "--data",
        str(root / "chain.npz"),
        "--out",
        str(root / "model"),
        "--hidden",
        "64",
        "64",
        "--masks",
        "4",
        "--order",
        "random",
        "--direct",
        "--mask-conditioning",
        "--epochs",
        "4",
        "--batch-size",
        "50",
        "--input-shape",
        "2",
        "5",
        "--seed",
        "3",
    )
    return root, result


def test_train_writes_a_checkpoint_with_its_training_record(trained):
    root, result = trained
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 4 and summary["masks"] == 4
    config = checkpoint.read_config(root / "model")
    record = config.training
    assert config.input_shape == [2, 5] and config.n_masks == 4 and config.direct_connections
    assert record.command.startswith("made train --data ") and record.command.endswith("--seed 3")
    assert record.data_sha256 and len(record.data_sha256) == 64
    assert record.epochs == 4 and record.seed == 3 and record.package_version and record.date
    assert record.best_valid_nll == pytest.approx(summary["best_valid_nll"], abs=1e-3)
    # Anomaly calibration is written at training time, on the validation rows, with the default ensemble.
    assert config.calibration.n == 200 and config.calibration.masks == 4
    assert config.calibration.nll.mean == pytest.approx(summary["best_valid_nll"], abs=1e-3)
    # and the default anomaly score's context model, counted on the training rows
    context = config.calibration.context
    assert config.calibration.default_score == "nll_or_context" and context.template == "jbig10"
    assert context.rows == record.train_rows and sum(context.seen) == context.rows * 10
    assert context.data_sha256 == record.data_sha256
    # Not a terminal: plain log lines, one per epoch, with both NLLs.
    epoch_lines = [line for line in result.stderr.splitlines() if "made.train: epoch" in line]
    assert len(epoch_lines) == 4 and all(
        "train_nll=" in line and "valid_nll=" in line for line in epoch_lines
    )
    assert "chain.npz:valid_x" in result.stderr  # the npz's own validation split was used


def test_progress_bar_shows_train_and_valid_nll(tmp_path):
    np.save(tmp_path / "x.npy", markov_chain(300, 6).numpy())
    result = made(
        "train",
        "--data",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "m"),
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--progress",
    )
    assert "valid_nll=" in result.stderr and "train_nll=" in result.stderr and "epoch" in result.stderr


def test_eval_prints_one_json_line(trained):
    root, _ = trained
    result = made("eval", "--model", str(root / "model"), "--data", str(root / "chain.npz"))
    line = json.loads(result.stdout)
    assert set(line) == {"nll", "bits_per_dim", "n", "masks"}
    assert line["n"] == 200 and line["masks"] == 4
    assert line["bits_per_dim"] == pytest.approx(line["nll"] / (10 * np.log(2)))
    one = json.loads(
        made("eval", "--model", str(root / "model"), "--data", str(root / "chain.npz"), "--masks", "1").stdout
    )
    assert one["masks"] == 1 and one["nll"] != line["nll"]


def test_score_streams_and_matches_the_library(trained, tmp_path):
    root, _ = trained
    rows = markov_chain(1000, 10, seed=9).numpy()
    np.save(tmp_path / "rows.npy", rows)
    made(
        "score",
        "--model",
        str(root / "model"),
        "--data",
        str(tmp_path / "rows.npy"),
        "--out",
        str(tmp_path / "scores.npy"),
        "--batch-rows",
        "128",
        "--masks",
        "3",
    )
    scores = np.load(tmp_path / "scores.npy")
    model, _ = checkpoint.load(root / "model")
    with torch.no_grad():
        expected = model.log_prob(torch.from_numpy(rows).float(), masks=3).double().numpy()
    assert scores.shape == (1000,) and np.allclose(scores, expected, atol=1e-5)


def test_sample_is_seeded_and_in_support(trained, tmp_path):
    root, _ = trained
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        made(
            "sample",
            "--model",
            str(root / "model"),
            "-n",
            "50",
            "--seed",
            seed,
            "--out",
            str(tmp_path / f"{name}.npy"),
        )
    made(
        "sample",
        "--model",
        str(root / "model"),
        "-n",
        "50",
        "--seed",
        "5",
        "--sampler",
        "reference",
        "--out",
        str(tmp_path / "r.npy"),
    )
    a, b, c, r = (np.load(tmp_path / f"{n}.npy") for n in "abcr")
    assert a.shape == (50, 10) and a.dtype == np.int64 and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (
        a != r
    ).mean() < 0.01  # the fast and reference samplers draw the same samples (float32 rounding aside)


def test_user_errors_exit_2_with_one_clear_line(trained, tmp_path):
    root, _ = trained
    bad = np.zeros((5, 10))
    bad[2, 7] = 0.5
    np.save(tmp_path / "bad.npy", bad)
    cases = [
        (
            ["eval", "--model", str(root / "model"), "--data", str(tmp_path / "bad.npy")],
            "value 0.5 at row 2, column 7 is outside the support of the bernoulli likelihood",
        ),
        (
            ["eval", "--model", str(root / "model"), "--data", str(root / "chain.npz"), "--masks", "9"],
            "masks must be between 1 and 4",
        ),
        (
            ["eval", "--model", str(tmp_path / "missing"), "--data", str(root / "chain.npz")],
            "not a directory",
        ),
        (["train", "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "x")], "row 2, column 7"),
        (
            [
                "train",
                "--data",
                str(root / "chain.npz"),
                "--out",
                str(tmp_path / "x"),
                "--likelihood",
                "categorical",
            ],
            "needs the number of categories",
        ),
        (
            ["sample", "--model", str(root / "model"), "-n", "0", "--out", str(tmp_path / "s.npy")],
            "-n must be",
        ),
        (
            ["eval", "--model", str(root / "model"), "--data", str(root / "chain.npz"), "--device", "cuda:7"],
            "cuda",
        ),
        (
            ["merge", str(root / "model"), str(root / "model"), "--out", str(tmp_path / "x")],
            "model 0 has 4 masks; only one-mask models can be merged",
        ),
    ]
    for args, message in cases:
        result = made(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert "made: error: " in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_merge_writes_a_calibrated_mixture_of_its_members(trained, tmp_path):
    root, _ = trained
    members = []
    for seed in (1, 2):
        out = tmp_path / f"member{seed}"
        made(
            "train",
            "--data",
            str(root / "chain.npz"),
            "--out",
            str(out),
            "--hidden",
            "32",
            "--order",
            "random",
            "--direct",
            "--epochs",
            "2",
            "--batch-size",
            "50",
            "--input-shape",
            "2",
            "5",
            "--seed",
            str(seed),
        )
        members.append(str(out))
    result = made("merge", *members, "--out", str(tmp_path / "mixture"), "--weights-dtype", "int8")
    summary = json.loads(result.stdout)
    config = checkpoint.read_config(tmp_path / "mixture")
    assert (
        config.mixture
        and config.n_masks == 2
        and config.hidden_sizes == [64]
        and config.input_shape == [2, 5]
    )
    assert config.weights_dtype == "int8" and config.weights_layout == "masked"
    record = config.training
    assert record.command.startswith("made merge ") and [m["path"] for m in record.members] == members
    assert all(m["command"].startswith("made train ") for m in record.members)
    # Evaluated and calibrated on the members' validation split (chain.npz:valid_x), with both members.
    assert record.valid_file.endswith("chain.npz:valid_x") and config.calibration.masks == 2
    assert config.calibration.nll.mean == pytest.approx(summary["valid_nll"], abs=1e-3)
    # the context model of the first member's training rows, for the default anomaly score
    assert config.calibration.default_score == "nll_or_context"
    assert config.calibration.context.data_file == record.members[0]["data_file"]
    mixture, _ = checkpoint.load(tmp_path / "mixture")
    loaded = [checkpoint.load(m)[0] for m in members]
    x = torch.from_numpy(np.load(root / "chain.npz")["valid_x"]).float()
    with torch.no_grad():
        want = torch.logsumexp(torch.stack([m.log_prob(x) for m in loaded]), 0) - np.log(2)
        assert torch.allclose(mixture.log_prob(x), want, atol=0.02)  # int8 storage: within rounding
    assert -mixture.log_prob(x).mean().item() == pytest.approx(summary["valid_nll"], abs=1e-3)
