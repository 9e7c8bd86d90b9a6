"""The Open Inference Protocol (KServe v2 / Triton) on the same server: health, metadata and infer.

Infer takes one input tensor of shape [N, D] (any numeric datatype, data flat or nested) and returns the
output `log_prob` (FP64, [N]); `parameters.masks` picks the ensemble size. Errors use the protocol's
shape, {"error": "..."}.
"""

from __future__ import annotations

import math

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from ... import __version__
from .. import codecs
from ..deps import DeadlineDep, EngineDep, body_docs, validate_options
from ..errors import InvalidInput
from ..schemas import V2InferRequest, V2InferResponse, V2ModelMetadata

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
NUMERIC = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
}


@router.get("")
async def server_metadata() -> dict:
    return {"name": "made-service", "version": __version__, "extensions": []}


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def ready(engine: EngineDep) -> Response:
    return codecs.json_response({"ready": engine.ready}, status=200 if engine.ready else 503)


@router.get("/models/{name}", response_model=V2ModelMetadata)
async def model_metadata(name: str, engine: EngineDep) -> V2ModelMetadata:
    served = engine.registry.get(name)
    return V2ModelMetadata(
        name=name,
        versions=[str(v) for v in engine.registry.versions(name)],
        platform="pytorch_made",
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, served.config.n_dims]}],
        outputs=[{"name": "log_prob", "datatype": "FP64", "shape": [-1]}],
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, engine: EngineDep) -> Response:
    entry = engine.registry.entry(name)
    is_ready = entry.current is not None and not engine.draining
    return codecs.json_response({"name": name, "ready": is_ready}, status=200 if is_ready else 503)


@router.post("/models/{name}/infer", response_model=V2InferResponse, openapi_extra=body_docs(V2InferRequest))
async def infer(name: str, request: Request, engine: EngineDep, deadline: DeadlineDep) -> Response:
    """log p(x) for an input tensor [N, D]; output `log_prob` [N] in nats."""
    codecs.require_content_type(request, codecs.JSON)
    body = codecs.parse_json(await codecs.read_body(request, engine.settings.max_body_bytes))
    infer_request = validate_options(V2InferRequest, body)
    if len(infer_request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor, got {len(infer_request.inputs)}")
    tensor = infer_request.inputs[0]
    if tensor.datatype not in NUMERIC:
        raise InvalidInput(f"input datatype {tensor.datatype!r} is not numeric")
    if len(tensor.shape) != 2:
        raise InvalidInput(f"input shape must be [N, D], got {tensor.shape}")
    try:
        values = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInput("input data must be numbers (flat, or nested to the declared shape)") from None
    if values.size != math.prod(tensor.shape):
        raise InvalidInput(
            f"input data holds {values.size} values; shape {tensor.shape} needs {math.prod(tensor.shape)}"
        )
    for output in infer_request.outputs or []:
        if output.name != "log_prob":
            raise InvalidInput(f"unknown output {output.name!r}; this model has 'log_prob'")
    masks = (infer_request.parameters or {}).get("masks")
    if masks is not None and (isinstance(masks, bool) or not isinstance(masks, int)):  # JSON true is no int
        raise InvalidInput("parameters.masks must be an integer")
    result = await engine.log_prob(name, values.reshape(tensor.shape), masks, False, deadline)
    return codecs.json_response(
        {
            "model_name": name,
            "model_version": str(result.version),
            "id": infer_request.id,
            "parameters": {"masks": result.masks},
            "outputs": [
                {
                    "name": "log_prob",
                    "datatype": "FP64",
                    "shape": [len(result.log_prob)],
                    "data": result.log_prob,
                }
            ],
        }
    )
