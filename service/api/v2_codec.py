"""Open Inference Protocol bodies: an infer request in, an infer response out, as JSON tensors or with the
binary tensor data extension.

The extension (KServe v2 / Triton "binary_tensor_data"): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the tensors' raw little-endian bytes, in the order of
the tensors that declare `parameters.binary_data_size`. A client asks for binary outputs with
`parameters.binary_data_output: true` (tritonclient sends it when it names no outputs) or per output with
`parameters.binary_data`; the answer then carries the same header and layout.

Every declared size is checked against the bytes actually received before anything is allocated from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson
from starlette.responses import Response

from ..calibration import SCORES
from . import codecs
from .deps import validate_options
from .errors import InvalidInput, MalformedRequest
from .schemas import V2InferRequest

HEADER_LENGTH = "inference-header-content-length"
OCTET_STREAM = "application/octet-stream"
# the protocol's numeric datatypes as little-endian numpy types (BOOL is one byte per element)
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# every output a model can answer with, and its datatype; the anomaly outputs need a calibrated model
OUTPUTS = {"log_prob": "FP64", "anomaly_score": "FP64", "p_value": "FP64", "is_anomaly": "BOOL"}
ANOMALY_OUTPUTS = ("anomaly_score", "p_value", "is_anomaly")


@dataclass
class InferInput:
    """What an infer request asks for, checked: the rows, the outputs, and the protocol's options."""

    id: str | None
    rows: np.ndarray  # (N, D)
    masks: int | None
    fpr: float | None  # parameters.fpr: the anomaly threshold's false-positive rate
    score: str | None  # parameters.score: which anomaly score (default: the calibration's)
    timeout_s: float | None  # parameters.timeout (microseconds in the protocol)
    outputs: list[tuple[str, bool]]  # (name, as raw bytes after the JSON header), in the order asked

    @property
    def anomaly(self) -> bool:
        return any(name in ANOMALY_OUTPUTS for name, _ in self.outputs)


def _integer(parameters: dict, key: str, where: str) -> int | None:
    value = parameters.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):  # JSON true is no int
        raise InvalidInput(f"{where}.{key} must be an integer")
    return value


def _flag(parameters: dict, key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} must be true or false")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary data): the whole body is JSON unless Inference-Header-Content-Length says
    where it ends."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length must be a byte count within the body's {len(body)} bytes, "
            f"got {header_length!r}"
        )
    end = int(header_length)
    return body[:end], body[end:]


def read_infer_request(body: bytes, header_length: str | None) -> InferInput:
    header, binary = split_body(body, header_length)
    request = validate_options(V2InferRequest, codecs.parse_json(header))
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"input datatype {tensor.datatype!r} is not numeric")
    if len(tensor.shape) != 2:
        raise InvalidInput(f"input shape must be [N, D], got {tensor.shape}")
    count = math.prod(tensor.shape)
    size = _integer(tensor.parameters or {}, "binary_data_size", "input parameters")
    if size is not None:
        values = _binary_values(tensor.data, binary, size, count, dtype, tensor.shape)
    else:
        if binary:
            raise InvalidInput(f"{len(binary)} bytes of binary data follow the header, but no input has them")
        values = _json_values(tensor.data, count, tensor.shape)

    parameters = request.parameters or {}
    masks = _integer(parameters, "masks", "parameters")
    timeout_us = _integer(parameters, "timeout", "parameters")
    if timeout_us is not None and timeout_us <= 0:
        raise InvalidInput("parameters.timeout must be a positive number of microseconds")
    fpr = parameters.get("fpr")
    if fpr is not None and (isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 < fpr < 1):
        raise InvalidInput("parameters.fpr must be a number between 0 and 1")
    score = parameters.get("score")
    if score is not None and score not in SCORES:
        raise InvalidInput(f"parameters.score must be one of {', '.join(map(repr, SCORES))}")
    binary_outputs = bool(_flag(parameters, "binary_data_output", "parameters"))
    outputs = []
    for output in request.outputs or []:
        if output.name not in OUTPUTS:
            raise InvalidInput(
                f"unknown output {output.name!r}; the outputs are {', '.join(map(repr, OUTPUTS))}"
            )
        unknown = set(output.parameters or {}) - {"binary_data"}
        if unknown:
            raise InvalidInput(f"output parameters {sorted(unknown)} are not supported (only binary_data)")
        per_output = _flag(output.parameters or {}, "binary_data", "output parameters")
        # an output's own choice wins over the request's
        outputs.append((output.name, binary_outputs if per_output is None else per_output))
    if len({name for name, _ in outputs}) != len(outputs):
        raise InvalidInput("an output is named twice")
    infer = InferInput(
        request.id,
        values.reshape(tensor.shape),
        masks,
        fpr,
        score,
        None if timeout_us is None else timeout_us / 1e6,
        outputs or [("log_prob", binary_outputs)],
    )
    if infer.anomaly and masks is not None:
        raise InvalidInput(
            "parameters.masks cannot be chosen with anomaly outputs: they use the calibration's"
        )
    return infer


def _binary_values(data, binary: bytes, size: int, count: int, dtype: np.dtype, shape) -> np.ndarray:
    if data is not None:
        raise InvalidInput("an input has either 'data' or parameters.binary_data_size, not both")
    if size != count * dtype.itemsize:
        raise InvalidInput(
            f"binary_data_size {size} does not match shape {shape} of {dtype.name} "
            f"({count * dtype.itemsize} bytes)"
        )
    if len(binary) != size:
        raise InvalidInput(f"binary_data_size is {size} bytes, but {len(binary)} bytes follow the header")
    return np.frombuffer(binary, dtype=dtype)


def _json_values(data, count: int, shape) -> np.ndarray:
    if data is None:
        raise InvalidInput("the input needs 'data' (or binary data with parameters.binary_data_size)")
    try:
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInput("input data must be numbers (flat, or nested to the declared shape)") from None
    if values.size != count:
        raise InvalidInput(f"input data holds {values.size} values; shape {shape} needs {count}")
    return values


def infer_response(
    name: str, version: int, request: InferInput, parameters: dict, values: dict[str, np.ndarray]
) -> Response:
    """The outputs asked for, in their order: JSON data, or raw bytes after the JSON header for those asked
    in binary (then the whole answer is application/octet-stream with Inference-Header-Content-Length)."""
    answer = {"model_name": name, "model_version": str(version), "id": request.id, "parameters": parameters}
    outputs, chunks = [], []
    for output_name, binary in request.outputs:
        datatype = OUTPUTS[output_name]
        value = values[output_name]
        output = {"name": output_name, "datatype": datatype, "shape": [len(value)]}
        if binary:
            data = np.ascontiguousarray(value, dtype=DTYPES[datatype]).tobytes()
            chunks.append(data)
            outputs.append(output | {"parameters": {"binary_data_size": len(data)}})
        else:
            outputs.append(output | {"data": value})
    if not chunks:
        return codecs.json_response(answer | {"outputs": outputs})
    header = orjson.dumps(answer | {"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(
        b"".join([header, *chunks]),
        media_type=OCTET_STREAM,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
