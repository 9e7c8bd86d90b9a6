"""The Open Inference Protocol (KServe v2 / Triton) on the same server: health, metadata and infer, each
model route also under /versions/{version}.

Infer takes one input tensor of shape [N, D] (any numeric datatype; data flat, nested, or binary under the
binary tensor data extension) and returns the output `log_prob` (FP64, [N]); `parameters.masks` picks the
ensemble size, `parameters.timeout` (microseconds) lowers the deadline. Each model serves one version: a
versioned route for another version answers 404. Errors use the protocol's shape, {"error": "..."}.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ... import __version__
from .. import codecs, v2_codec
from ..deps import DeadlineDep, EngineDep, body_docs
from ..direct import direct
from ..engine import Engine
from ..errors import (
    DeadlineExceeded,
    InvalidInput,
    MalformedRequest,
    ModelNotFound,
    ModelNotReady,
    NotCalibrated,
    PayloadTooLarge,
    QueueFull,
    UnsupportedMediaType,
    v2_responses,
)
from ..schemas import V2InferRequest, V2InferResponse, V2ModelMetadata, V2ModelReady, V2ServerReady

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
EXTENSIONS = ["binary_tensor_data"]
MODEL_ERRORS = (ModelNotFound,)
# The protocol's readiness answers are booleans: 200 for true, a 4xx (400, as Triton) for false.
NOT_READY = 400
SERVER_READY_DOCS = {NOT_READY: {"model": V2ServerReady, "description": "not ready (loading, or draining)"}}
MODEL_READY_DOCS = {
    NOT_READY: {"model": V2ModelReady, "description": "not ready: loading, failed, another version, draining"}
} | v2_responses(ModelNotFound)
INFER_ERRORS = (
    MalformedRequest,
    NotCalibrated,
    ModelNotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidInput,
    ModelNotReady,
    QueueFull,
    DeadlineExceeded,
)
INFER_DOCS = body_docs(V2InferRequest)
INFER_DOCS["requestBody"]["content"][v2_codec.OCTET_STREAM] = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": "binary tensor data extension: a JSON infer request of "
        "Inference-Header-Content-Length bytes, then the raw little-endian bytes of each input "
        "that declares parameters.binary_data_size",
    }
}
INFER_DOCS["parameters"] = [
    {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "binary tensor data extension: the length of the JSON part of the body",
    }
]


@router.get("")
async def server_metadata() -> dict:
    return {"name": "made-service", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", response_model=V2ServerReady, responses=SERVER_READY_DOCS)
async def ready(engine: EngineDep) -> Response:
    return codecs.json_response({"ready": engine.ready}, status=200 if engine.ready else NOT_READY)


def _metadata(engine: Engine, name: str, version: str | None) -> V2ModelMetadata:
    served = engine.registry.get(name, version)
    return V2ModelMetadata(
        name=name,
        versions=[str(v) for v in engine.registry.versions(name)] if version is None else [version],
        platform="pytorch_made",
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, served.config.n_dims]}],
        outputs=[
            {"name": output, "datatype": datatype, "shape": [-1]}
            for output, datatype in v2_codec.OUTPUTS.items()
            if served.calibration is not None or output not in v2_codec.ANOMALY_OUTPUTS
        ],
    )


def _ready(engine: Engine, name: str, version: str | None) -> Response:
    is_ready = engine.registry.serves(name, version) and not engine.draining
    return codecs.json_response({"name": name, "ready": is_ready}, status=200 if is_ready else NOT_READY)


async def _infer(
    engine: Engine, request: Request, name: str, version: str | None, deadline: float
) -> Response:
    header_length = request.headers.get(v2_codec.HEADER_LENGTH)
    allowed = (codecs.JSON, v2_codec.OCTET_STREAM) if header_length is not None else (codecs.JSON,)
    codecs.require_content_type(request, *allowed)
    body = await codecs.read_body(request, engine.settings.max_body_bytes)
    infer = v2_codec.read_infer_request(body, header_length)
    if infer.timeout_s is not None:
        deadline = min(deadline, engine.deadline(infer.timeout_s))
    if infer.anomaly:
        anomaly = await engine.anomaly(
            name, infer.rows, infer.fpr, deadline, version=version, score=infer.score
        )
        parameters = {
            "masks": anomaly.masks,
            "score": anomaly.score_name,
            "fpr": anomaly.fpr,
            "threshold": anomaly.threshold,
        }
        values = {
            "log_prob": anomaly.log_prob,
            "anomaly_score": anomaly.score,
            "p_value": anomaly.p_value,
            "is_anomaly": anomaly.is_anomaly,
        }
        return v2_codec.infer_response(name, anomaly.version, infer, parameters, values)
    result = await engine.log_prob(name, infer.rows, infer.masks, False, deadline, version=version)
    return v2_codec.infer_response(
        name, result.version, infer, {"masks": result.masks}, {"log_prob": result.log_prob}
    )


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=v2_responses(*MODEL_ERRORS))
async def model_metadata(name: str, engine: EngineDep) -> V2ModelMetadata:
    return _metadata(engine, name, None)


@router.get(
    "/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=v2_responses(*MODEL_ERRORS)
)
async def model_version_metadata(name: str, version: str, engine: EngineDep) -> V2ModelMetadata:
    return _metadata(engine, name, version)


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses=MODEL_READY_DOCS)
async def model_ready(name: str, engine: EngineDep) -> Response:
    return _ready(engine, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready", response_model=V2ModelReady, responses=MODEL_READY_DOCS
)
async def model_version_ready(name: str, version: str, engine: EngineDep) -> Response:
    return _ready(engine, name, version)


@router.post(
    "/models/{name}/infer",
    response_model=V2InferResponse,
    openapi_extra=INFER_DOCS,
    responses=v2_responses(*INFER_ERRORS),
)
@direct
async def infer(name: str, request: Request, engine: EngineDep, deadline: DeadlineDep) -> Response:
    """log p(x) for an input tensor [N, D]; output `log_prob` [N] in nats."""
    return await _infer(engine, request, name, None, deadline)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=V2InferResponse,
    openapi_extra=INFER_DOCS,
    responses=v2_responses(*INFER_ERRORS),
)
@direct
async def infer_version(
    name: str, version: str, request: Request, engine: EngineDep, deadline: DeadlineDep
) -> Response:
    """log p(x) for an input tensor [N, D] from this version of the model (404 unless it is the one
    serving)."""
    return await _infer(engine, request, name, version, deadline)
