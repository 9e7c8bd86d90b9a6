"""NVIDIA's own client, tritonclient (HTTP), against the live server: every call it makes for a model we
serve, with and without a version, with JSON and with binary tensors (the binary tensor data extension)
both ways. Its answers must equal /v1's."""

from __future__ import annotations

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROWS = np.array([[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]])


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1_log_prob(server) -> np.ndarray:
    answer = server.client.post("/v1/models/tiny/log-prob", json={"inputs": ROWS.tolist()})
    assert answer.status_code == 200
    return np.array(answer.json()["log_prob"])


def infer(triton, *, datatype="FP32", binary_in=False, binary_out=None, version="", parameters=None):
    tensor = httpclient.InferInput("input", list(ROWS.shape), datatype)
    values = ROWS.astype(bool if datatype == "BOOL" else np.float32)
    tensor.set_data_from_numpy(values, binary_data=binary_in)
    outputs = (
        None if binary_out is None else [httpclient.InferRequestedOutput("log_prob", binary_data=binary_out)]
    )
    return triton.infer(
        "tiny", [tensor], model_version=version, outputs=outputs, parameters=parameters, request_id="r-1"
    )


def test_server_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "made-service"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_readiness_with_and_without_a_version(triton):
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny", "1")
    assert not triton.is_model_ready("tiny", "2")  # not the version served
    assert not triton.is_model_ready("no-such-model")


def test_model_metadata_with_and_without_a_version(triton):
    for version in ("", "1"):
        metadata = triton.get_model_metadata("tiny", model_version=version)
        assert metadata["name"] == "tiny" and metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
        assert metadata["outputs"] == [
            {"name": "log_prob", "datatype": "FP64", "shape": [-1]},
            {"name": "anomaly_score", "datatype": "FP64", "shape": [-1]},  # tiny is calibrated
            {"name": "p_value", "datatype": "FP64", "shape": [-1]},
            {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
        ]
    with pytest.raises(InferenceServerException, match="not served"):
        triton.get_model_metadata("tiny", model_version="2")


@pytest.mark.parametrize("version", ["", "1"], ids=["no version", "version 1"])
@pytest.mark.parametrize(
    "binary_in, binary_out",
    [(False, False), (True, False), (False, True), (True, True), (True, None)],
    ids=["json", "binary in", "binary out", "binary both", "binary by default"],
)
def test_infer_equals_v1(triton, v1_log_prob, version, binary_in, binary_out):
    result = infer(triton, binary_in=binary_in, binary_out=binary_out, version=version)
    log_prob = result.as_numpy("log_prob")
    assert log_prob.dtype == np.float64 and log_prob.shape == (len(ROWS),)
    np.testing.assert_allclose(log_prob, v1_log_prob, rtol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["model_version"] == "1" and response["id"] == "r-1"
    (output,) = response["outputs"]  # answered in binary exactly when asked (tritonclient's default: yes)
    assert ("binary_data_size" in output.get("parameters", {})) == (binary_out is not False)


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "INT64", "FP16", "FP64"])
def test_binary_inputs_of_every_width(triton, v1_log_prob, datatype):
    tensor = httpclient.InferInput("input", list(ROWS.shape), datatype)
    dtype = {"BOOL": bool, "UINT8": np.uint8, "INT64": np.int64, "FP16": np.float16, "FP64": np.float64}
    tensor.set_data_from_numpy(ROWS.astype(dtype[datatype]), binary_data=True)
    result = triton.infer("tiny", [tensor])
    np.testing.assert_allclose(result.as_numpy("log_prob"), v1_log_prob, rtol=1e-6)


def test_masks_parameter(server, triton):
    expected = server.client.post("/v1/models/tiny/log-prob", json={"inputs": ROWS.tolist(), "masks": 1})
    result = infer(triton, binary_in=True, parameters={"masks": 1})
    np.testing.assert_allclose(result.as_numpy("log_prob"), expected.json()["log_prob"], rtol=1e-6)
    assert result.get_response()["parameters"] == {"masks": 1}


def test_errors_reach_the_client_as_the_protocol_says(triton):
    with pytest.raises(InferenceServerException, match="not served") as wrong_version:
        infer(triton, version="7")
    assert wrong_version.value.status() == "404"
    with pytest.raises(InferenceServerException, match="masks must be an integer"):
        infer(triton, parameters={"masks": "two"})
    tensor = httpclient.InferInput("input", [1, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 5), np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="expects 8"):
        triton.infer("tiny", [tensor])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("version", ["", "1"], ids=["no version", "version 1"])
def test_anomaly_outputs_equal_v1_anomaly(server, triton, binary, version):
    """A KServe/Triton client gets anomaly answers without the /v1 routes: anomaly_score, p_value and
    is_anomaly (BOOL), with the threshold's fpr as a parameter."""
    expected = server.client.post(
        "/v1/models/tiny/anomaly", json={"inputs": ROWS.tolist(), "fpr": 0.2}
    ).json()
    tensor = httpclient.InferInput("input", list(ROWS.shape), "UINT8")
    tensor.set_data_from_numpy(ROWS.astype(np.uint8), binary_data=binary)
    names = ("is_anomaly", "anomaly_score", "p_value", "log_prob")  # any order, answered in that order
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = triton.infer("tiny", [tensor], outputs=outputs, parameters={"fpr": 0.2}, model_version=version)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == list(names)
    assert (
        response["parameters"]["fpr"] == 0.2 and response["parameters"]["threshold"] == expected["threshold"]
    )
    np.testing.assert_allclose(result.as_numpy("anomaly_score"), expected["score"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("p_value"), expected["p_value"], rtol=1e-6)
    log_prob = server.client.post(
        "/v1/models/tiny/log-prob", json={"inputs": ROWS.tolist(), "masks": 2}
    ).json()
    np.testing.assert_allclose(result.as_numpy("log_prob"), log_prob["log_prob"], rtol=1e-6)
    flags = result.as_numpy("is_anomaly")
    assert flags.dtype == bool and flags.tolist() == expected["is_anomaly"]
    assert response["parameters"]["score"] == expected["score_name"] == "nll_or_context"
    # the NLL on request, as on /v1
    by_nll = triton.infer(
        "tiny", [tensor], outputs=outputs, parameters={"fpr": 0.2, "score": "nll"}, model_version=version
    )
    assert by_nll.get_response()["parameters"]["score"] == "nll"
    np.testing.assert_allclose(by_nll.as_numpy("anomaly_score"), -np.array(log_prob["log_prob"]), rtol=1e-6)


def test_anomaly_outputs_need_a_calibrated_model_and_the_calibrations_masks(triton):
    tensor = httpclient.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.full((1, 3), 4.0, np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="calibration") as uncalibrated:
        triton.infer("gauss", [tensor], outputs=[httpclient.InferRequestedOutput("p_value")])
    assert uncalibrated.value.status() == "409"
    with pytest.raises(InferenceServerException, match="masks cannot be chosen"):
        tiny = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        tiny.set_data_from_numpy(ROWS.astype(np.float32))
        triton.infer(
            "tiny", [tiny], outputs=[httpclient.InferRequestedOutput("is_anomaly")], parameters={"masks": 1}
        )
    with pytest.raises(InferenceServerException, match="fpr must be a number between 0 and 1"):
        infer(triton, parameters={"fpr": 2})
    with pytest.raises(InferenceServerException, match="parameters.score must be one of"):
        infer(triton, parameters={"score": "zlib"})
