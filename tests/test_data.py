"""Data files: every format the CLI reads, and every bad value refused with its row and column."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service import data
from service.data import DataError
from service.made import make_likelihood

BERNOULLI = make_likelihood("bernoulli")


def test_npy_npz_and_csv_read_the_same_rows(tmp_path):
    x = (np.random.default_rng(0).random((20, 5)) > 0.5).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x)
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", header="a,b,c,d,e", comments="")
    for name in ("a.npy", "b.npz", "c.csv"):
        assert np.array_equal(data.load(str(tmp_path / name), BERNOULLI).numpy(), x)


def test_npz_roles_keys_and_packed_bits(tmp_path):
    rng = np.random.default_rng(1)
    train = (rng.random((30, 13)) > 0.5).astype(np.uint8)
    valid = (rng.random((10, 13)) > 0.5).astype(np.uint8)
    np.savez(
        tmp_path / "d.npz",
        train_x=np.packbits(train, axis=1),
        valid_x=np.packbits(valid, axis=1),
        n_dims=np.int64(13),
    )
    spec = str(tmp_path / "d.npz")
    assert np.array_equal(data.load(spec, BERNOULLI, role="train").numpy(), train)
    assert np.array_equal(data.load(spec, BERNOULLI, role="eval").numpy(), valid)
    assert np.array_equal(data.load(spec + ":train_x", BERNOULLI, role="eval").numpy(), train)
    with pytest.raises(DataError, match="has no array 'test_x'"):
        data.load(spec + ":test_x", BERNOULLI)
    np.savez(tmp_path / "e.npz", a=train, b=valid)
    with pytest.raises(DataError, match="say which array"):
        data.load(str(tmp_path / "e.npz"), BERNOULLI)


@pytest.mark.parametrize(
    "value,likelihood,message",
    [
        (np.nan, BERNOULLI, "value nan at row 3, column 2 is not a finite number"),
        (np.inf, make_likelihood("gaussian"), "value inf at row 3, column 2 is not a finite number"),
        (
            0.5,
            BERNOULLI,
            r"value 0.5 at row 3, column 2 is outside the support of the bernoulli likelihood \(0 or 1\)",
        ),
        (3.0, make_likelihood("categorical", categories=3), r"row 3, column 2 .* \(an integer in \[0, 2\]\)"),
        (1.5, make_likelihood("categorical", categories=3), "row 3, column 2 is outside the support"),
        (-1.0, make_likelihood("categorical", categories=3), "row 3, column 2 is outside the support"),
    ],
)
def test_bad_values_are_named_by_row_and_column(value, likelihood, message):
    x = np.zeros((5, 4))
    x[3, 2] = value
    with pytest.raises(DataError, match=message):
        data.validate(x, likelihood, 4)


def test_shapes_are_checked():
    with pytest.raises(DataError, match="rows have 3 values; the model expects 4"):
        data.validate(np.zeros((2, 3)), BERNOULLI, 4)
    with pytest.raises(DataError, match="expected a 2-D array"):
        data.validate(np.zeros(4), BERNOULLI, 4)
    with pytest.raises(DataError, match="no rows"):
        data.validate(np.zeros((0, 4)), BERNOULLI, 4)


def test_streamed_batches_report_rows_of_the_whole_file(tmp_path):
    x = np.zeros((100, 3))
    x[57, 1] = 0.25
    np.save(tmp_path / "x.npy", x)
    array, source = data.open_array(str(tmp_path / "x.npy"))
    batches = data.iter_batches(array, source, BERNOULLI, 3, batch_rows=10)
    for _ in range(5):  # rows 0..49 are fine
        assert next(batches).shape == (10, 3)
    with pytest.raises(DataError, match="row 57, column 1"):
        next(batches)


def test_csv_problems(tmp_path):
    (tmp_path / "ragged.csv").write_text("0,1,0\n1,1\n")
    with pytest.raises(DataError, match="line 2 has 2 values; earlier rows have 3"):
        data.load(str(tmp_path / "ragged.csv"), BERNOULLI)
    (tmp_path / "words.csv").write_text("0,1,0\n1,yes,0\n")
    with pytest.raises(DataError, match="line 2 has 'yes', which is not a number"):
        data.load(str(tmp_path / "words.csv"), BERNOULLI)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="could not be read"):
        data.load(str(tmp_path / "obj.npy"), BERNOULLI)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported data format"):
        data.load(str(tmp_path / "x.parquet"), BERNOULLI)
    with pytest.raises(DataError, match="does not exist"):
        data.load(str(tmp_path / "none.npy"), BERNOULLI)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_, np.float16, np.float32, np.float64])
def test_every_numeric_dtype_is_validated(dtype):
    categorical = make_likelihood("categorical", categories=3)
    x = np.array([[0, 1], [1, 0]], dtype=dtype)
    assert data.validate(x, categorical, 2).dtype == torch.float32
    if dtype is not np.bool_:
        bad = np.array([[0, 1], [1, 3]], dtype=dtype)
        with pytest.raises(DataError, match="row 1, column 1 is outside the support"):
            data.validate(bad, categorical, 2)


def test_float64_values_that_float32_would_round_are_refused():
    with pytest.raises(DataError, match="row 0, column 1"):
        data.validate(np.array([[0.0, 2.0000001]]), make_likelihood("categorical", categories=3), 2)
