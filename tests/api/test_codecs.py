"""Request bodies in and response bodies out: rows from JSON and .npy, Accept negotiation, PNG grids."""

from __future__ import annotations

import io
import warnings

import numpy as np
import orjson
import pytest
from PIL import Image
from starlette.requests import Request

from service import data
from service.api import codecs
from service.api.errors import InvalidInput, MalformedRequest, NotAcceptable
from service.made.likelihoods import make_likelihood


def request_with(**headers) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def test_json_rows_keep_integers_turn_booleans_to_bits_and_nulls_to_nan():
    assert codecs.rows_from_json([[0, 1], [1, 1]]).dtype == np.int64
    assert codecs.rows_from_json([[True, False]]).tolist() == [[1, 0]]
    assert codecs.rows_from_json([[True, False]]).dtype == np.uint8
    rows = codecs.rows_from_json([[0.5, None]])
    assert rows[0, 0] == 0.5 and np.isnan(rows[0, 1])


def the_general_way(body: bytes) -> tuple[np.ndarray, dict]:
    document = codecs.parse_json(body)
    return codecs.rows_from_json(document["inputs"]), {k: v for k, v in document.items() if k != "inputs"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [[0, 1], [1, 1]], "masks": 2}',
        b'{"inputs": [[0, 1, 1]]}',  # one member, one row: the shortest way through
        b'{"inputs": [[0.25, 1]]}',
        b'{"per_dimension": true, "inputs": [[0.5, -1e-3, 2E5]]}',
        b'{"inputs":[[1, 2.0]], "fpr": 0.01, "score": "nll"}',
        b'{"inputs": [[-0.0, 1e-320, 9007199254740993]], "o": {"a": 1}}',
        orjson.dumps({"inputs": np.random.default_rng(0).integers(0, 2, (64, 784)).tolist()}),
        orjson.dumps({"inputs": np.random.default_rng(1).normal(size=(8, 50)).tolist()}),
    ],
)
def test_numeric_json_rows_are_read_fast_as_the_general_way_reads_them(body):
    rows, others = codecs.numeric_rows_from_json(body)
    expected_rows, expected_others = the_general_way(body)
    assert rows.dtype == expected_rows.dtype and rows.shape == expected_rows.shape
    np.testing.assert_array_equal(rows, expected_rows)
    assert others == expected_others


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [[0, null]]}',  # a missing value: NaN, the general way
        b'{"inputs": [[true, false]]}',  # booleans become bits, the general way
        b'{"inputs": [[0, 1], [1]]}',  # ragged: named there
        b'{"inputs": [[0, 1], [1, 0, 1], [1]]}',  # ragged with as many values as 3 full rows
        b'{"inputs": [[[0], [1]]]}',  # nested: as_buffer would flatten it
        b'{"inputs": [0, 1]}',  # not rows
        b'{"inputs": []}',
        b'{"inputs": [[]]}',
        b'{"inputs": [[0, "1"]]}',
        b'{"inputs": [[0]], "inputs": [[1]]}',  # orjson keeps the last, simdjson would give the first
        b'{"inputs": [[0, 1]], "note": "[x]"}',  # a "[" elsewhere: the general way, to be sure
        b'{"inputs": [[0, 1e400]]}',
        b'{"inputs": [[0, 1]]} trailing',
        b"[[0, 1]]",
        b'{"rows": [[0, 1]]}',
        b"",
    ],
)
def test_any_other_body_is_left_to_the_general_way(body):
    assert codecs.numeric_rows_from_json(body) is None


def test_the_fast_way_recovers_after_a_body_it_refused():
    """The parser is reused per thread: a refused body must leave nothing that blocks the next parse."""
    for body in (b'{"inputs": [[0, "x"]]}', b'{"inputs": [[0, 1]], "inputs": [[1, 1]]}', b"{"):
        assert codecs.numeric_rows_from_json(body) is None
        rows, _ = codecs.numeric_rows_from_json(b'{"inputs": [[1, 0]]}')
        assert rows.tolist() == [[1, 0]]


@pytest.mark.parametrize(
    ("value", "message", "details"),
    [
        ("rows", "must be a list of rows", {"field": "inputs"}),
        ([], "is empty", {"field": "inputs"}),
        ([[0, 1], [1]], "ragged: row 1 has 1 values", {"field": "inputs", "row": 1}),
        ([[0, "x"]], "row 0, column 1 is 'x'", {"field": "inputs", "row": 0, "column": 1}),
    ],
)
def test_bad_json_rows_are_named(value, message, details):
    with pytest.raises(InvalidInput) as refused:
        codecs.rows_from_json(value)
    assert message in refused.value.message and refused.value.details == details


@pytest.mark.parametrize(
    "rows",
    [
        np.array([[0, 1, 1], [1, 0, 1]], dtype=np.float32),
        np.asfortranarray(np.array([[0, 1, 1], [1, 0, 1]], dtype=np.float32)),
        np.array([[0, 1, 1], [1, 0, 1]], dtype=np.uint8),
        np.array([[0, 1, 1], [1, 0, 1]], dtype=np.float64),
    ],
    ids=["float32", "float32-fortran", "uint8", "float64"],
)
def test_npy_rows_are_a_view_of_the_body_that_validation_copies(rows):
    array = codecs.rows_from_npy(npy(rows))
    assert not array.flags.writeable  # the body's own bytes: no copy on the event loop
    np.testing.assert_array_equal(array, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it is given memory it may not write
        x = data.validate(array, make_likelihood("bernoulli"), 3)
    x += 1  # the model's tensor is its own, writable memory
    np.testing.assert_array_equal(x.numpy(), rows.astype(np.float32) + 1)
    np.testing.assert_array_equal(array, rows)  # and the body's view is untouched


def test_npy_rows_and_what_is_refused():
    np.testing.assert_array_equal(codecs.rows_from_npy(npy([[1.0, 2.0]])), [[1.0, 2.0]])
    with pytest.raises(MalformedRequest):
        codecs.rows_from_npy(b"not numpy")
    with pytest.raises(MalformedRequest):
        codecs.rows_from_npy(npy([[1.0]])[:-4] + b"\x00")  # truncated
    for bad in ([1.0, 2.0], np.zeros((0, 3)), [["a", "b"]]):
        with pytest.raises(InvalidInput):
            codecs.rows_from_npy(npy(bad))


def test_accept_negotiation():
    assert codecs.wants(request_with(), codecs.JSON, codecs.NPY) == codecs.JSON
    assert codecs.wants(request_with(accept="application/x-npy"), codecs.JSON, codecs.NPY) == codecs.NPY
    assert codecs.wants(request_with(accept="image/png, */*"), codecs.JSON, codecs.NPY) == codecs.JSON
    with pytest.raises(NotAcceptable):
        codecs.wants(request_with(accept="text/csv"), codecs.JSON, codecs.NPY)


def test_parse_json_wants_an_object():
    assert codecs.parse_json(b'{"a": 1}') == {"a": 1}
    for body in (b"", b"{", b"[1]"):
        with pytest.raises(MalformedRequest):
            codecs.parse_json(body)


def test_png_grid_tiles_samples_with_a_gap_and_maps_the_range():
    samples = np.array([[0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=np.float32)  # two 2x3 images
    image = Image.open(io.BytesIO(codecs.png_grid(samples, [2, 3], 0.0, 1.0, scale=1)))
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.shape == (1 * 3 + 1, 2 * 4 + 1)  # one row of two tiles
    assert pixels[1:3, 1:4].tolist() == [[0, 255, 255], [0, 0, 0]]
    assert (pixels[1:3, 5:8] == 255).all() and (pixels[0] == 128).all()
    coloured = Image.open(
        io.BytesIO(
            codecs.png_grid(samples, [2, 3], 0.0, 1.0, scale=1, observed=np.array([True] * 3 + [False] * 3))
        )
    )
    assert coloured.mode == "RGB"
