"""Every endpoint of a real server process, and its answers checked against the library."""

from __future__ import annotations

import io
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from service import checkpoint
from service.context_model import ContextModel
from tests.api.helpers import MADE, SERVER_DEVICE, TRAINING_DATA
from tests.helpers import all_binary, markov_chain

JSON = {"content-type": "application/json"}


def local(repository, name="tiny"):
    model, config = checkpoint.load(repository / name / "1")
    return model, config


def test_health_and_readiness(server):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {"gauss": "ready", "tiny": "ready", "tiny-fixed": "ready"}


def test_model_listing_and_details(server):
    listing = server.client.get("/v1/models").json()["models"]
    assert {m["name"] for m in listing} == {"tiny", "tiny-fixed", "gauss"}
    tiny = server.client.get("/v1/models/tiny").json()
    assert tiny["status"] == "ready" and tiny["version"] == 1 and tiny["n_dims"] == 8
    assert tiny["input_shape"] == [2, 4] and tiny["likelihood"] == {"name": "bernoulli"}
    assert tiny["masks"] == {
        "stored": 4,
        "default": 2,
        "resampling": "both",
        "fresh_masks": False,
        "mixture": False,
    }
    assert tiny["device"] == SERVER_DEVICE and tiny["training"]["seed"] == 0
    assert tiny["calibration"]["n"] == 300 and tiny["calibration"]["masks"] == 2
    assert server.client.get("/v1/models/none").status_code == 404


def test_where_a_model_was_trained_from_is_shown_only_to_the_admin(server):
    """The training record's command line and data files name paths on the operator's disks."""
    private = ("command", "data_file")
    for route in ("/v1/models/tiny", "/v1/models"):
        for authorization, shown in [(None, False), ("Bearer wrong", False), ("Bearer s3cret", True)]:
            headers = {"authorization": authorization} if authorization else {}
            answer = server.client.get(route, headers=headers)
            assert answer.status_code == 200
            assert (TRAINING_DATA in answer.text) == shown, (route, authorization)
            listed = [answer.json()] if route.endswith("tiny") else answer.json()["models"]
            training = next(m for m in listed if m["name"] == "tiny")["training"]
            assert all((key in training) == shown for key in private), training
            assert training["seed"] == 0  # the rest of the record is public


def test_log_prob_matches_the_library(server, repository):
    model, _ = local(repository)
    rows = markov_chain(37, 8, seed=5)
    for masks in (None, 1, 4):
        body = {"inputs": rows.tolist()} | ({"masks": masks} if masks else {})
        answer = server.client.post("/v1/models/tiny/log-prob", json=body).json()
        with torch.no_grad():
            expected = model.log_prob(rows, masks=masks).double().numpy()
        assert answer["model"] == "tiny" and answer["version"] == 1 and answer["masks"] == (masks or 2)
        np.testing.assert_allclose(answer["log_prob"], expected, atol=1e-5)


def test_log_prob_over_http_equals_made_score(server, repository, tmp_path):
    rows = markov_chain(200, 8, seed=8).numpy()
    np.save(tmp_path / "rows.npy", rows)
    subprocess.run(
        [
            MADE,
            "score",
            "--model",
            str(repository / "tiny" / "1"),
            "--data",
            str(tmp_path / "rows.npy"),
            "--out",
            str(tmp_path / "scores.npy"),
        ],
        check=True,
        capture_output=True,
    )
    answer = server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows.tolist()}).json()
    np.testing.assert_allclose(answer["log_prob"], np.load(tmp_path / "scores.npy"), atol=1e-6)


def test_probabilities_over_http_sum_to_one(server):
    everything = all_binary(8).tolist()
    for masks in (1, 4):
        log_p = server.client.post(
            "/v1/models/tiny/log-prob", json={"inputs": everything, "masks": masks}
        ).json()
        assert abs(np.exp(np.array(log_p["log_prob"])).sum() - 1) < 1e-5


def test_json_booleans_count_as_bits(server):
    bits = [[0, 1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]]
    as_bools = [[bool(v) for v in row] for row in bits]
    mixed = [[False, True, 1, 0, False, 1, True, 0], bits[1]]
    answers = [
        server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows}).json()["log_prob"]
        for rows in (bits, as_bools, mixed)
    ]
    assert answers[0] == answers[1] == answers[2]


def test_per_dimension_conditionals(server, repository):
    rows = markov_chain(5, 8, seed=2).tolist()
    answer = server.client.post(
        "/v1/models/tiny-fixed/log-prob", json={"inputs": rows, "per_dimension": True}
    ).json()
    per_dim = np.array(answer["per_dimension"])
    assert per_dim.shape == (5, 8)
    np.testing.assert_allclose(per_dim.sum(1), answer["log_prob"], atol=1e-5)
    # mixed orderings cannot have per-dimension conditionals: a clear 422, not a 500
    refused = server.client.post(
        "/v1/models/tiny/log-prob", json={"inputs": rows, "per_dimension": True, "masks": 4}
    )
    assert refused.status_code == 422 and "share one ordering" in refused.json()["error"]["message"]


def test_npy_in_and_out(server, repository):
    model, _ = local(repository)
    rows = markov_chain(50, 8, seed=3).numpy().astype(np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, rows)
    answer = server.client.post(
        "/v1/models/tiny/log-prob?masks=4",
        content=buffer.getvalue(),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-npy"
    assert answer.headers["x-masks"] == "4" and answer.headers["x-model-version"] == "1"
    log_p = np.load(io.BytesIO(answer.content), allow_pickle=False)
    with torch.no_grad():
        np.testing.assert_allclose(
            log_p, model.log_prob(torch.from_numpy(rows).float(), masks=4).numpy(), atol=1e-5
        )


def code_lengths(config, rows) -> np.ndarray:
    """L(x) under the checkpoint's context model, computed here from its stored counts."""
    context = config.calibration.context
    model = ContextModel(config.n_dims, config.input_shape)
    return (
        model.set_counts(torch.tensor(context.ones), torch.tensor(context.seen))
        .code_length(torch.as_tensor(rows, dtype=torch.float32))
        .numpy()
    )


def test_anomaly_scores_p_values_and_thresholds(server, repository):
    _, config = local(repository)
    calibration = config.calibration
    normal = markov_chain(100, 8, seed=11).tolist()
    weird = [[0, 1, 0, 1, 0, 1, 0, 1]] * 3  # alternating bits: very unlikely under a sticky chain
    answer = server.client.post("/v1/models/tiny/anomaly", json={"inputs": normal + weird}).json()
    assert answer["score_name"] == "nll_or_context" and answer["fpr"] == calibration.default_fpr
    assert answer["threshold"] == pytest.approx(calibration.nll_or_context.threshold(calibration.default_fpr))
    assert all(answer["is_anomaly"][-3:]) and np.mean(answer["is_anomaly"][:100]) < 0.1
    assert all(p <= 0.01 for p in answer["p_value"][-3:]) and np.median(answer["p_value"][:100]) > 0.2
    assert answer["is_anomaly"] == [p < answer["fpr"] for p in answer["p_value"]]
    nll = -np.array(
        server.client.post("/v1/models/tiny/log-prob", json={"inputs": normal + weird, "masks": 2}).json()[
            "log_prob"
        ]
    )
    reference = calibration.reference
    union = -np.minimum(
        reference.nll.log_p_value(nll),
        reference.nll_minus_context.log_p_value(nll - code_lengths(config, normal + weird)),
    )
    np.testing.assert_allclose(answer["score"], union, rtol=1e-6)
    # the NLL on request: the score is the negative log-likelihood, with its own threshold
    by_nll = server.client.post(
        "/v1/models/tiny/anomaly", json={"inputs": normal + weird, "score": "nll"}
    ).json()
    assert by_nll["score_name"] == "nll" and all(by_nll["is_anomaly"][-3:])
    np.testing.assert_allclose(by_nll["score"], nll)
    assert by_nll["threshold"] == pytest.approx(calibration.nll.threshold(calibration.default_fpr))
    looser = server.client.post("/v1/models/tiny/anomaly", json={"inputs": normal, "fpr": 0.5}).json()
    assert looser["fpr"] == 0.5 and looser["threshold"] < answer["threshold"]
    table = server.client.post(
        "/v1/models/tiny/anomaly",
        json={"inputs": normal, "score": "nll"},
        headers={"accept": "application/x-npy"},
    )
    records = np.load(io.BytesIO(table.content), allow_pickle=False)
    assert records.dtype.names == ("score", "p_value", "is_anomaly") and len(records) == 100
    assert table.headers["x-score"] == "nll"
    np.testing.assert_allclose(records["score"], nll[:100])
    unknown = server.client.post("/v1/models/tiny/anomaly", json={"inputs": normal, "score": "zlib"})
    assert unknown.status_code == 422 and "score" in unknown.json()["error"]["message"]
    uncalibrated = server.client.post("/v1/models/gauss/anomaly", json={"inputs": [[4.0, 4.0, 4.0]]})
    assert uncalibrated.status_code == 409 and "made calibrate" in uncalibrated.json()["error"]["message"]


def test_sampling_is_seeded_and_offers_json_npy_and_png(server):
    first = server.client.post("/v1/models/tiny/sample", json={"n": 20, "seed": 7}).json()
    again = server.client.post("/v1/models/tiny/sample", json={"n": 20, "seed": 7}).json()
    other = server.client.post("/v1/models/tiny/sample", json={"n": 20, "seed": 8}).json()
    assert first["samples"] == again["samples"] and first["samples"] != other["samples"]
    assert first["seed"] == 7 and np.array(first["samples"]).shape == (20, 8)
    assert set(np.unique(first["samples"])) <= {0, 1}
    unseeded = server.client.post("/v1/models/tiny/sample", json={"n": 3})
    replay = server.client.post(
        "/v1/models/tiny/sample", json={"n": 3, "seed": int(unseeded.headers["x-seed"])}
    )
    assert unseeded.json()["samples"] == replay.json()["samples"]
    npy = server.client.post(
        "/v1/models/tiny/sample", json={"n": 20, "seed": 7}, headers={"accept": "application/x-npy"}
    )
    assert np.array_equal(np.load(io.BytesIO(npy.content)), np.array(first["samples"]))
    png = server.client.post("/v1/models/tiny/sample", json={"n": 9}, headers={"accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    no_image = server.client.post("/v1/models/gauss/sample", json={"n": 2}, headers={"accept": "image/png"})
    assert no_image.status_code == 406
    real = server.client.post("/v1/models/gauss/sample", json={"n": 500, "seed": 1}).json()["samples"]
    assert abs(np.mean(real) - 4) < 1.0  # standardisation undone: samples in the data's units


def test_openapi_and_docs(server):
    spec = server.client.get("/openapi.json").json()
    for path in (
        "/v1/models/{name}/log-prob",
        "/v1/models/{name}/anomaly",
        "/v1/models/{name}/sample",
        "/v2/models/{name}/infer",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"]
    body = spec["paths"]["/v1/models/{name}/log-prob"]["post"]["requestBody"]["content"]
    assert "application/json" in body and "application/x-npy" in body
    assert server.client.get("/docs").status_code == 200
    # Every $ref resolves (Observed and V2RequestedOutput dangled: tools could not build sample or infer).
    refs = set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert {"Observed", "V2RequestedOutput"} <= refs
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])
    assert '"$defs"' not in json.dumps(spec)


def test_the_openapi_document_declares_what_the_server_does(server):
    spec = server.client.get("/openapi.json").json()
    paths = spec["paths"]
    # /metrics is Prometheus text, not JSON (was declared application/json)
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    # the v2 inference routes list their errors, in the protocol's error body
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        responses = paths[path]["post"]["responses"]
        assert {"400", "404", "413", "415", "422", "503", "504"} <= set(responses), sorted(responses)
        error = responses["404"]["content"]["application/json"]["schema"]["$ref"]
        assert error.endswith("/V2ErrorResponse")
        assert "application/octet-stream" in paths[path]["post"]["requestBody"]["content"]
    # X-Request-Timeout is a number with a floor, not a free string
    (timeout,) = [p for p in paths["/v1/models/{name}/log-prob"]["post"]["parameters"] if p["in"] == "header"]
    assert {"type": "number", "minimum": 0.01} in timeout["schema"]["anyOf"]


def test_every_request_example_is_answered_by_the_model_it_names(server):
    """The examples are one per served model (the 4-column example fitted none of them)."""
    spec = server.client.get("/openapi.json").json()
    answered = 0
    for path, operations in spec["paths"].items():
        operation = operations.get("post", {})
        examples = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        for name, example in examples.get("examples", {}).items():
            url = path.replace("{name}", name).replace("{version}", "1")
            answer = server.client.post(url, json=example["value"])
            assert answer.status_code == 200, (url, answer.text)
            answered += 1
    # log-prob and both infer routes for the three models; anomaly and drift for the two calibrated ones
    assert answered == 3 * 3 + 2 * 2


def test_kserve_v2(server, repository):
    model, _ = local(repository)
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    meta = server.client.get("/v2/models/tiny").json()
    assert meta["inputs"][0]["shape"] == [-1, 8] and meta["outputs"][0]["name"] == "log_prob"
    assert server.client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    rows = markov_chain(6, 8, seed=4)
    request = {
        "id": "r1",
        "inputs": [{"name": "input", "shape": [6, 8], "datatype": "FP32", "data": rows.flatten().tolist()}],
    }
    answer = server.client.post("/v2/models/tiny/infer", json=request).json()
    assert answer["model_name"] == "tiny" and answer["model_version"] == "1" and answer["id"] == "r1"
    output = answer["outputs"][0]
    assert output["name"] == "log_prob" and output["shape"] == [6] and output["datatype"] == "FP64"
    with torch.no_grad():
        np.testing.assert_allclose(output["data"], model.log_prob(rows).numpy(), atol=1e-5)
    bad = server.client.post(
        "/v2/models/tiny/infer",
        json={"inputs": [{"name": "input", "shape": [1, 7], "datatype": "FP32", "data": [0] * 7}]},
    )
    assert bad.status_code == 422 and isinstance(bad.json()["error"], str)  # the protocol's error shape
    assert server.client.get("/v2/models/none").status_code == 404


def test_many_concurrent_clients_get_their_own_rows_in_order(server, repository):
    model, _ = local(repository)
    generator = np.random.default_rng(0)
    requests = [
        (generator.integers(0, 2, size=(int(generator.integers(1, 40)), 8))).astype(float) for _ in range(120)
    ]

    def ask(rows):
        return server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows.tolist()}).json()[
            "log_prob"
        ]

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, requests))
    with torch.no_grad():
        for rows, answer in zip(requests, answers, strict=True):
            expected = model.log_prob(torch.from_numpy(rows).float()).numpy()
            np.testing.assert_allclose(answer, expected, atol=1e-5)
    assert server.metric("made_batch_rows_count", model="tiny") < server.metric(
        "made_request_rows_count", model="tiny", operation="log_prob"
    )  # requests were merged


def test_drift_keeps_its_level_on_inlier_batches_and_flags_a_shifted_one(server):
    """The tiny model was calibrated on 300 rows of a Markov chain that keeps each bit with probability 0.9:
    fresh batches of that chain are drift only at the level's rate; a chain that keeps bits with 0.6 is
    drift."""
    before = server.metric("made_drift_checks_total", model="tiny")
    alarms = 0
    for seed in range(20):
        rows = markov_chain(200, 8, seed=100 + seed).int().tolist()
        answer = server.client.post("/v1/models/tiny/drift", json={"inputs": rows, "alpha": 0.05})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["rows"] == 200 and body["alpha"] == 0.05 and 0 <= body["statistic"] <= 1
        assert body["score_name"] == "nll_or_context"  # the calibration's default
        assert body["is_drift"] == (body["p_value"] < 0.05)
        alarms += body["is_drift"]
    assert alarms <= 4  # P(more than 4 of 20 at a true 5% level) < 0.3%

    shifted = markov_chain(200, 8, stay=0.6, seed=7).numpy().astype(np.uint8)
    npy = io.BytesIO()
    np.save(npy, shifted)
    answer = server.client.post(
        "/v1/models/tiny/drift", content=npy.getvalue(), headers={"content-type": "application/x-npy"}
    )
    body = answer.json()
    assert answer.status_code == 200 and body["is_drift"] and body["alpha"] == 0.01, body
    assert body["mean_score"] > body["calibration_mean_score"]
    by_nll = server.client.post(
        "/v1/models/tiny/drift?score=nll",
        content=npy.getvalue(),
        headers={"content-type": "application/x-npy"},
    ).json()
    assert by_nll["score_name"] == "nll" and by_nll["is_drift"], by_nll
    assert server.metric("made_drift_checks_total", model="tiny") == before + 22
    assert server.metric("made_drift_checks_total", model="tiny", result="drift") >= 1
    assert server.metric("made_drift_p_value", model="tiny") == pytest.approx(body["p_value"])


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"inputs": [[0, 1] * 4] * 10}, 422, "at least 30 rows"),
        ({"inputs": [[0, 1] * 4] * 40, "alpha": 1.5}, 422, "alpha"),
        ({"inputs": [[0, 1] * 4] * 40, "alpha": "0.1"}, 422, "alpha"),
        ({"inputs": [[0, 1, 1]] * 40}, 422, "expects 8"),
        ({"inputs": [[0, 1, None, 0, 1, 0, 1, 0]] * 40}, 422, "complete rows"),
        ({"inputs": []}, 422, "empty"),
        ({"inputs": [[0, 1] * 4] * 40, "score": "zlib"}, 422, "score"),
    ],
    ids=[
        "too few rows",
        "alpha out of range",
        "alpha as a string",
        "wrong width",
        "missing value",
        "empty",
        "unknown score",
    ],
)
def test_bad_drift_requests_get_a_clear_4xx(server, body, status, fragment):
    answer = server.client.post("/v1/models/tiny/drift", json=body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"]["message"], answer.json()


def test_drift_needs_a_calibrated_model(server):
    answer = server.client.post("/v1/models/gauss/drift", json={"inputs": [[4.0, 4.0, 4.0]] * 40})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "not_calibrated"


def test_per_feature_anomaly_scores_in_json_npy_and_a_heat_map(server, repository):
    rows = markov_chain(5, 8, seed=3).int().tolist() + [[0] * 8, [1] * 8, [0, 1] * 4]
    # the NLL, one mask, one ordering: the parts are the conditionals and sum to the score exactly
    fixed = server.client.post(
        "/v1/models/tiny-fixed/anomaly", json={"inputs": rows, "per_feature": True, "score": "nll"}
    ).json()
    parts = np.array(fixed["per_feature"])
    assert parts.shape == (8, 8)
    np.testing.assert_allclose(parts.sum(axis=1), fixed["score"], rtol=1e-6)
    # the default, nll_or_context: each row's parts are those of the test that decided it, summing to its
    # NLL or to its NLL - L(x)
    _, config = local(repository, "tiny-fixed")
    nll = np.array(fixed["score"])
    ratio = nll - code_lengths(config, rows)
    reference = config.calibration.reference
    decided_by_ratio = reference.nll_minus_context.log_p_value(ratio) < reference.nll.log_p_value(nll)
    default = server.client.post(
        "/v1/models/tiny-fixed/anomaly", json={"inputs": rows, "per_feature": True}
    ).json()
    assert default["score_name"] == "nll_or_context"
    np.testing.assert_allclose(
        np.array(default["per_feature"]).sum(axis=1), np.where(decided_by_ratio, ratio, nll), rtol=1e-6
    )
    # masks with different orderings: each part is the mean over masks, summing to the masks' mean NLL
    mixed = server.client.post(
        "/v1/models/tiny/anomaly", json={"inputs": rows, "per_feature": True, "score": "nll"}
    ).json()
    assert np.all(np.array(mixed["per_feature"]).sum(axis=1) >= np.array(mixed["score"]) - 1e-6)
    plain = server.client.post("/v1/models/tiny/anomaly", json={"inputs": rows, "score": "nll"}).json()
    assert "per_feature" not in plain and plain["score"] == pytest.approx(mixed["score"])

    buffer = io.BytesIO()
    np.save(buffer, np.array(rows, dtype=np.uint8))
    npy = server.client.post(
        "/v1/models/tiny-fixed/anomaly?per_feature=true&score=nll",
        content=buffer.getvalue(),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    table = np.load(io.BytesIO(npy.content))
    assert table["per_feature"].shape == (8, 8)
    np.testing.assert_allclose(table["per_feature"], parts)

    png = server.client.post(
        "/v1/models/tiny-fixed/anomaly",
        json={"inputs": rows, "score": "nll"},
        headers={"accept": "image/png"},
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.headers["x-threshold"] == repr(fixed["threshold"])


def test_a_heat_map_needs_an_image_shape_and_per_feature_a_boolean(server):
    no_shape = server.client.post(
        "/v1/models/gauss/anomaly", json={"inputs": [[4.0, 4.0, 4.0]]}, headers={"accept": "image/png"}
    )
    assert no_shape.status_code == 409  # not calibrated comes first; the shape is checked after
    answer = server.client.post("/v1/models/tiny/anomaly", json={"inputs": [[0] * 8], "per_feature": "yes"})
    assert answer.status_code == 422 and "per_feature" in answer.json()["error"]["message"]
