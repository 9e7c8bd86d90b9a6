"""Every kind of bad input gets a clear 4xx JSON error naming the problem; never a 500, and the server
goes on serving everyone else."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import time

import numpy as np
import pytest

from tests.api.helpers import running, save_tiny

GOOD = [[0, 1, 1, 0, 0, 1, 1, 0]]
JSON = {"content-type": "application/json"}


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=True)
    return buffer.getvalue()


NPY = {"content-type": "application/x-npy"}


def npy_header_text(text: str, data_bytes: int = 64) -> bytes:
    """A version 1.0 .npy with `text` as its header (padded as numpy pads it), then `data_bytes` bytes."""
    header = text.encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(data_bytes)


def npy_claiming(shape, data_bytes: int = 80) -> bytes:
    """An .npy header that declares `shape` of float64, followed by only `data_bytes` bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return header.getvalue() + bytes(data_bytes)


def rows_with(value, row=2, column=5, n=4):
    rows = [[0] * 8 for _ in range(n)]
    rows[row][column] = value
    return rows


CASES = [
    # (id, method, path, kwargs, status, code, message fragment, details)
    (
        "unknown model",
        "post",
        "/v1/models/nope/log-prob",
        dict(json={"inputs": GOOD}),
        404,
        "model_not_found",
        "no model named 'nope'",
        {},
    ),
    (
        "wrong dimension",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": [[0, 1, 0]]}),
        422,
        "invalid_input",
        "rows have 3 values; the model expects 8",
        {},
    ),
    (
        "ragged rows",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": [[0] * 8, [0] * 7]}),
        422,
        "invalid_input",
        "ragged: row 1 has 7 values",
        {"row": 1},
    ),
    (
        "null where a fixed-order model cannot marginalise",
        "post",
        "/v1/models/tiny-fixed/log-prob",
        dict(json={"inputs": rows_with(None)}),
        422,
        "invalid_input",
        "not a prefix",
        {"field": "inputs"},
    ),
    (
        "null in anomaly rows",
        "post",
        "/v1/models/tiny/anomaly",
        dict(json={"inputs": rows_with(None)}),
        422,
        "invalid_input",
        "anomaly scores need complete rows",
        {},
    ),
    (
        "null with per_dimension",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": rows_with(None), "per_dimension": True, "masks": 1}),
        422,
        "invalid_input",
        "per_dimension cannot be combined with missing",
        {},
    ),
    (
        "Inf in JSON",
        "post",
        "/v1/models/gauss/log-prob",
        dict(content=b'{"inputs": [[1.0, 2.0, 1e999]]}', headers=JSON),
        400,
        "malformed_request",
        "number is infinity",
        {},
    ),
    (
        "Inf in npy",
        "post",
        "/v1/models/gauss/log-prob",
        dict(content=npy([[1.0, 2.0, np.inf]]), headers={"content-type": "application/x-npy"}),
        422,
        "invalid_input",
        "value inf at row 0, column 2 is not a finite number",
        {"row": 0, "column": 2},
    ),
    (
        "NaN in npy for a fixed-order model",
        "post",
        "/v1/models/gauss/log-prob",
        dict(
            content=npy([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0]]), headers={"content-type": "application/x-npy"}
        ),
        422,
        "invalid_input",
        "not a prefix",
        {},
    ),
    (
        "observed of the wrong length",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": 2, "observed": [0, 1]}),
        422,
        "invalid_input",
        "observed has 2 values; the model expects 8",
        {"field": "observed"},
    ),
    (
        "negative observed index",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": 2, "observed": {"indices": [-1], "values": [1]}}),
        422,
        "invalid_input",
        "observed.indices.0: Input should be greater than or equal to 0",
        {"field": "observed.indices.0"},
    ),
    (
        "observed index out of range",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": 2, "observed": {"indices": [9], "values": [1]}}),
        422,
        "invalid_input",
        "out of range",
        {},
    ),
    (
        "observed outside the support",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": 2, "observed": {"indices": [3], "values": [0.5]}}),
        422,
        "invalid_input",
        "value 0.5 at row 0, column 3 is outside the support",
        {"column": 3, "field": "observed"},
    ),
    (
        "observed gives everything",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": 2, "observed": [0] * 8}),
        422,
        "invalid_input",
        "nothing left to sample",
        {},
    ),
    (
        "non-prefix conditioning of a fixed-order model",
        "post",
        "/v1/models/tiny-fixed/sample",
        dict(json={"n": 2, "observed": {"indices": [5], "values": [1]}}),
        422,
        "invalid_input",
        "not a prefix",
        {"field": "observed"},
    ),
    (
        "outside bernoulli support",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": rows_with(0.5)}),
        422,
        "invalid_input",
        "value 0.5 at row 2, column 5 is outside the support of the bernoulli",
        {"row": 2, "column": 5, "field": "inputs"},
    ),
    (
        "negative for bernoulli",
        "post",
        "/v1/models/tiny/anomaly",
        dict(json={"inputs": rows_with(-1, 3, 0)}),
        422,
        "invalid_input",
        "row 3, column 0 is outside the support",
        {"row": 3, "column": 0},
    ),
    (
        "a string",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": rows_with("1", 1, 4)}),
        422,
        "invalid_input",
        "row 1, column 4 is '1', not a number",
        {"row": 1, "column": 4},
    ),
    (
        "empty batch",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": []}),
        422,
        "invalid_input",
        "'inputs' is empty",
        {},
    ),
    (
        "no inputs",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"masks": 1}),
        422,
        "invalid_input",
        "needs 'inputs'",
        {},
    ),
    (
        "too many rows",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": [[0] * 8] * 2001}),
        422,
        "invalid_input",
        "2001 rows in one request; the limit is 2000",
        {"limit": 2000},
    ),
    (
        "too many masks",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": GOOD, "masks": 5}),
        422,
        "invalid_input",
        "masks must be between 1 and 4",
        {},
    ),
    (
        "unknown option",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": GOOD, "mask": 2}),
        422,
        "invalid_input",
        "mask: Extra inputs are not permitted",
        {},
    ),
    (
        "fpr out of range",
        "post",
        "/v1/models/tiny/anomaly",
        dict(json={"inputs": GOOD, "fpr": 1.5}),
        422,
        "invalid_input",
        "fpr",
        {},
    ),
    (
        "anomaly rows of the wrong width",
        "post",
        "/v1/models/tiny/anomaly",
        dict(json={"inputs": [[0, 1, 1]], "per_feature": True}),
        422,
        "invalid_input",
        "the model expects 8",
        {},
    ),
    (
        "anomaly with no rows",
        "post",
        "/v1/models/tiny/anomaly",
        dict(json={"inputs": [], "score": "nll"}),
        422,
        "invalid_input",
        "empty",
        {},
    ),
    (
        "an anomaly score that does not exist",
        "post",
        "/v1/models/tiny/anomaly",
        dict(json={"inputs": GOOD, "score": "zlib"}),
        422,
        "invalid_input",
        "score",
        {},
    ),
    (
        "an anomaly score that is not a string",
        "post",
        "/v1/models/tiny/anomaly?score=1",
        dict(content=npy(np.array(GOOD, dtype=np.uint8)), headers=NPY),
        422,
        "invalid_input",
        "score",
        {},
    ),
    (
        "n over the sample limit",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": 501}),
        422,
        "invalid_input",
        "n must be between 1 and 500",
        {"limit": 500},
    ),
    ("n zero", "post", "/v1/models/tiny/sample", dict(json={"n": 0}), 422, "invalid_input", "n", {}),
    (
        "malformed JSON",
        "post",
        "/v1/models/tiny/log-prob",
        dict(content=b'{"inputs": [[0, 1', headers=JSON),
        400,
        "malformed_request",
        "malformed JSON",
        {},
    ),
    (
        "JSON that is not an object",
        "post",
        "/v1/models/tiny/log-prob",
        dict(content=b"[1, 2]", headers=JSON),
        400,
        "malformed_request",
        "expected a JSON object",
        {},
    ),
    (
        "broken npy",
        "post",
        "/v1/models/tiny/log-prob",
        dict(content=b"\x93NUMPY garbage", headers={"content-type": "application/x-npy"}),
        400,
        "malformed_request",
        "not a valid .npy array",
        {},
    ),
    (
        "not npy at all",
        "post",
        "/v1/models/tiny/log-prob",
        dict(content=b"0,1,1,0,0,1,1,0", headers={"content-type": "application/x-npy"}),
        400,
        "malformed_request",
        "does not start with the .npy magic string",
        {},
    ),
    (
        "pickled npy",
        "post",
        "/v1/models/tiny/log-prob",
        dict(
            content=npy(np.array([[{"x": 1}]], dtype=object)), headers={"content-type": "application/x-npy"}
        ),
        400,
        "malformed_request",
        "not a valid .npy array",
        {},
    ),
    *(
        (
            f"npy header dict left open ({route})",  # numpy raised tokenize's TokenError: was a 500
            "post",
            f"/v1/models/tiny/{route}",
            dict(
                content=npy_header_text("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 8), "),
                headers=NPY,
            ),
            400,
            "malformed_request",
            "not a valid .npy array",
            {},
        )
        for route in ("log-prob", "anomaly")
    ),
    (
        "a model name longer than a file name, on reload",  # OSError "File name too long": was a 500
        "post",
        "/v1/models/" + "a" * 300 + "/reload",
        dict(headers={"authorization": "Bearer s3cret"}),
        404,
        "model_not_found",
        "no versions",
        {},
    ),
    *(
        (
            f"npy header claiming 10^9 rows ({route})",
            "post",
            f"/v1/models/tiny/{route}",
            dict(content=npy_claiming((10**9, 8)), headers={"content-type": "application/x-npy"}),
            400,
            "malformed_request",
            "its header declares shape [1000000000, 8] of float64 (64000000000 bytes of data), but the body "
            "holds 80",
            {},
        )
        for route in ("log-prob", "anomaly")
    ),
    (
        "wrong content type",
        "post",
        "/v1/models/tiny/log-prob",
        dict(content=b"inputs=1", headers={"content-type": "application/x-www-form-urlencoded"}),
        415,
        "unsupported_media_type",
        "is not accepted here",
        {},
    ),
    (
        "masks as a string in JSON",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": GOOD, "masks": "1"}),
        422,
        "invalid_input",
        "masks: Input should be a valid integer",
        {"field": "masks"},
    ),
    (
        "per_dimension as a word in JSON",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": GOOD, "masks": 1, "per_dimension": "yes"}),
        422,
        "invalid_input",
        "per_dimension: Input should be a valid boolean",
        {"field": "per_dimension"},
    ),
    (
        "sample n as a string",
        "post",
        "/v1/models/tiny/sample",
        dict(json={"n": "3"}),
        422,
        "invalid_input",
        "n: Input should be a valid integer",
        {"field": "n"},
    ),
    (
        "compressed body",
        "post",
        "/v1/models/tiny/log-prob",
        dict(
            content=gzip.compress(b'{"inputs": [[0, 1, 1, 0, 0, 1, 1, 0]]}'),
            headers={**JSON, "content-encoding": "gzip"},
        ),
        415,
        "unsupported_media_type",
        "Content-Encoding 'gzip' is not accepted",
        {},
    ),
    (
        "unacceptable answer",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": GOOD}, headers={"accept": "text/csv"}),
        406,
        "not_acceptable",
        "cannot answer with",
        {},
    ),
    (
        "body over the size limit",
        "post",
        "/v1/models/tiny/log-prob",
        dict(content=b'{"inputs": [' + b"[0,0,0,0,0,0,0,0]," * 20000 + b"[0,0,0,0,0,0,0,0]]}", headers=JSON),
        413,
        "payload_too_large",
        "over the limit of 200000 bytes",
        {"limit": 200000},
    ),
    (
        "bad deadline header",
        "post",
        "/v1/models/tiny/log-prob",
        dict(json={"inputs": GOOD}, headers={"x-request-timeout": "soon"}),
        422,
        "invalid_input",
        "X-Request-Timeout",
        {},
    ),
    (
        "reload without the admin token",
        "post",
        "/v1/models/tiny/reload",
        dict(),
        401,
        "unauthorized",
        "Bearer",
        {},
    ),
    (
        "reload with a wrong token",
        "post",
        "/v1/models/tiny/reload",
        dict(headers={"authorization": "Bearer x"}),
        401,
        "unauthorized",
        "Bearer",
        {},
    ),
    ("unknown route", "get", "/v1/nothing", dict(), 404, "not_found", "no route GET /v1/nothing", {}),
    ("wrong method", "get", "/v1/models/tiny/log-prob", dict(), 405, "method_not_allowed", "", {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(server, case):
    _, method, path, kwargs, status, code, fragment, details = case
    answer = getattr(server.client, method)(path, **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"], error["message"]
    for key, value in details.items():
        assert error[key] == value


def test_a_body_without_content_length_is_still_limited(server):
    def chunks():
        yield b'{"inputs": ['
        for _ in range(20000):
            yield b"[0,0,0,0,0,0,0,0],"
        yield b"[0,0,0,0,0,0,0,0]]}"

    answer = server.client.post("/v1/models/tiny/log-prob", content=chunks(), headers=JSON)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"


def test_bad_requests_do_not_affect_anyone_else(server):
    rejected_before = server.metric("made_rejections_total", model="tiny", reason="invalid_input")
    for _ in range(5):
        assert (
            server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows_with(0.5)}).status_code == 422
        )
    good = server.client.post("/v1/models/tiny/log-prob", json={"inputs": GOOD})
    assert good.status_code == 200 and len(good.json()["log_prob"]) == 1
    assert server.metric("made_rejections_total", model="tiny", reason="invalid_input") == rejected_before + 5
    assert server.metric("made_http_request_duration_seconds_count", status="500") == 0
    assert server.process.poll() is None


def test_too_many_missing_patterns_are_refused(repository):
    from tests.api.helpers import running

    with running(repository, env={"MADE_MAX_MISSING_PATTERNS": "3"}) as server:
        rows = [[None if i == j else 0 for i in range(8)] for j in range(4)]  # 4 distinct patterns
        answer = server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows})
        fine = server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows[:3]})
    assert answer.status_code == 422 and answer.json()["error"]["limit"] == 3
    assert "4 distinct patterns" in answer.json()["error"]["message"]
    assert fine.status_code == 200


V2_INFER = "/v2/models/tiny/infer"


@pytest.mark.parametrize(
    "tensor, parameters, fragment",
    [
        ({"shape": [-1, -10], "data": [0] * 10}, None, "shape"),  # two unknown dimensions: was a 500
        ({"shape": [-2, 8], "data": [0] * 16}, None, "shape"),
        ({"shape": [1, 8], "data": [0] * 8}, {"masks": True}, "parameters.masks must be an integer"),
        ({"shape": [1, 8], "data": [0] * 8}, {"masks": "1"}, "parameters.masks must be an integer"),
    ],
    ids=["shape [-1, -10]", "negative dimension", "masks true", "masks as a string"],
)
def test_bad_v2_infer_requests_get_the_protocols_4xx(server, tensor, parameters, fragment):
    body = {"inputs": [{"name": "input", "datatype": "FP32", **tensor}]}
    if parameters is not None:
        body["parameters"] = parameters
    answer = server.client.post(V2_INFER, json=body)
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert isinstance(error, str) and fragment in error, error  # the Open Inference Protocol's error body


def binary_infer(header: dict, data: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    json_part = json.dumps(header).encode()
    length = len(json_part) if header_length is None else header_length
    return json_part + data, {"Inference-Header-Content-Length": str(length)}


BINARY_INPUT = {"name": "input", "datatype": "FP32", "shape": [2, 8]}


@pytest.mark.parametrize(
    "body_and_headers, fragment",
    [
        (
            binary_infer({"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": 64}}]}, b"\0" * 8),
            "8 bytes",
        ),
        (
            binary_infer({"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": 60}}]}, b"\0" * 60),
            "64",
        ),
        (
            binary_infer(
                {"inputs": [{**BINARY_INPUT, "shape": [10**12, 8], "parameters": {"binary_data_size": 64}}]},
                b"\0" * 64,
            ),
            "does not match",
        ),
        (binary_infer({"inputs": [{**BINARY_INPUT, "data": [0] * 16}]}, b"\0" * 64), "no input has them"),
        (
            binary_infer({"inputs": [BINARY_INPUT]}, b"\0" * 64, header_length=10**9),
            "Inference-Header-Content-Length",
        ),
        (binary_infer({"inputs": [BINARY_INPUT]}, b"", header_length=-1), "Inference-Header-Content-Length"),
        (
            binary_infer(
                {"inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": True}}]}, b"\0" * 64
            ),
            "binary_data_size must be an integer",
        ),
        (
            binary_infer(
                {
                    "inputs": [{**BINARY_INPUT, "parameters": {"binary_data_size": 64}}],
                    "parameters": {"binary_data_output": 1},
                },
                b"\0" * 64,
            ),
            "binary_data_output must be true or false",
        ),
        (
            binary_infer(
                {
                    "inputs": [{**BINARY_INPUT, "data": [0] * 16}],
                    "outputs": [{"name": "log_prob", "parameters": {"class_count": 2}}],
                },
                b"",
            ),
            "not supported",
        ),
    ],
    ids=[
        "data shorter than declared",
        "declared size wrong for the shape",
        "huge shape, small data",
        "binary data nobody declared",
        "header length beyond the body",
        "negative header length",
        "binary_data_size true",
        "binary_data_output not a bool",
        "classification output",
    ],
)
def test_bad_binary_v2_requests_get_the_protocols_4xx(server, body_and_headers, fragment):
    body, headers = body_and_headers
    answer = server.client.post(
        V2_INFER, content=body, headers=headers | {"content-type": "application/octet-stream"}
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert fragment in answer.json()["error"], answer.json()


def test_a_version_that_is_not_served_is_404_on_every_versioned_route(server):
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0] * 8}]}
    for version in ("2", "0", "x", "01x"):
        assert server.client.get(f"/v2/models/tiny/versions/{version}").status_code == 404
        assert server.client.post(f"/v2/models/tiny/versions/{version}/infer", json=body).status_code == 404
        assert server.client.get(f"/v2/models/tiny/versions/{version}/ready").status_code == 400
    assert server.client.post("/v2/models/tiny/versions/1/infer", json=body).status_code == 200
    assert server.client.get("/v2/models/nothing/versions/1/ready").status_code == 404


@pytest.mark.parametrize("name", ["%2E%2E", "%2E", "..%2F..", "%2E%2E%5C%2E%2E"])
def test_a_model_name_never_leaves_the_repository(tmp_path, name):
    # A complete model version right outside the repository: <repository>/../1 (and <repository>/1).
    repository = tmp_path / "models"
    save_tiny(repository / "tiny" / "1")
    shutil.copytree(repository / "tiny" / "1", tmp_path / "1")
    shutil.copytree(repository / "tiny" / "1", repository / "1")
    with running(repository, env={"MADE_ADMIN_TOKEN": "t"}) as server:
        answer = server.client.post(f"/v1/models/{name}/reload", headers={"authorization": "Bearer t"})
        assert answer.status_code == 404, answer.text  # was 202, then served <repository>/.. as model ".."
        # no such model, or (with a decoded "/") no such route
        assert answer.json()["error"]["code"] in ("model_not_found", "not_found")
        time.sleep(0.3)  # a background load, had one started, would show by now
        assert [m["name"] for m in server.client.get("/v1/models").json()["models"]] == ["tiny"]
        assert server.client.get("/readyz").status_code == 200


@pytest.mark.parametrize("authorization", ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret"])
def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not(server, authorization):
    def reload(header: str) -> int:
        return server.client.post("/v1/models/tiny/reload", headers={"authorization": header}).status_code

    assert reload(authorization) == 202
    assert reload(authorization.replace("s3cret", "S3CRET")) == 401


def test_query_string_options_are_text_and_still_read(server):
    # Options of an .npy body travel in the query string, where "1" and "true" are the only spellings.
    answer = server.client.post(
        "/v1/models/tiny/log-prob?masks=1&per_dimension=true",
        content=npy(np.asarray(GOOD, dtype=np.float32)),
        headers={"content-type": "application/x-npy"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["masks"] == 1 and len(answer.json()["per_dimension"][0]) == 8
