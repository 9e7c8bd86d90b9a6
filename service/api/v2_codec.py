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
OUTPUTS = ("log_prob",)


@dataclass
class InferInput:
    """What an infer request asks for, checked: the rows, and the options the protocol carries."""

    id: str | None
    rows: np.ndarray  # (N, D)
    masks: int | None
    timeout_s: float | None  # parameters.timeout (microseconds in the protocol)
    binary_outputs: bool  # answer log_prob as raw bytes after a JSON header


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
    binary_outputs = bool(_flag(parameters, "binary_data_output", "parameters"))
    for output in request.outputs or []:
        if output.name not in OUTPUTS:
            raise InvalidInput(
                f"unknown output {output.name!r}; this model has {', '.join(map(repr, OUTPUTS))}"
            )
        unknown = set(output.parameters or {}) - {"binary_data"}
        if unknown:
            raise InvalidInput(f"output parameters {sorted(unknown)} are not supported (only binary_data)")
        per_output = _flag(output.parameters or {}, "binary_data", "output parameters")
        if per_output is not None:  # an output's own choice wins over the request's
            binary_outputs = per_output
    return InferInput(
        request.id,
        values.reshape(tensor.shape),
        masks,
        None if timeout_us is None else timeout_us / 1e6,
        binary_outputs,
    )


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
    name: str, version: int, request: InferInput, masks: int, log_prob: np.ndarray
) -> Response:
    output = {"name": "log_prob", "datatype": "FP64", "shape": [len(log_prob)]}
    answer = {
        "model_name": name,
        "model_version": str(version),
        "id": request.id,
        "parameters": {"masks": masks},
    }
    if not request.binary_outputs:
        return codecs.json_response(answer | {"outputs": [output | {"data": log_prob}]})
    data = np.ascontiguousarray(log_prob, dtype=DTYPES["FP64"]).tobytes()
    header = orjson.dumps(answer | {"outputs": [output | {"parameters": {"binary_data_size": len(data)}}]})
    return Response(
        header + data, media_type=OCTET_STREAM, headers={"Inference-Header-Content-Length": str(len(header))}
    )
