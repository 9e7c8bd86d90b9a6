"""POST /v1/models/{name}/log-prob, /anomaly, /drift and /sample: parse, call the engine, shape the answer."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import codecs
from ..deps import DeadlineDep, EngineDep, body_docs, read_rows_and_options, validate_options
from ..direct import direct
from ..errors import (
    ComputeFailed,
    DeadlineExceeded,
    InvalidInput,
    MalformedRequest,
    ModelNotFound,
    ModelNotReady,
    NotAcceptable,
    NotCalibrated,
    OutOfMemory,
    PayloadTooLarge,
    QueueFull,
    ShuttingDown,
    UnsupportedMediaType,
    responses,
)
from ..schemas import (
    AnomalyOptions,
    AnomalyRequest,
    AnomalyResponse,
    DriftOptions,
    DriftRequest,
    DriftResponse,
    LogProbOptions,
    LogProbRequest,
    LogProbResponse,
    SampleRequest,
    SampleResponse,
)

# the 200 answer of routes that also draw images (Accept: image/png)
ANSWERS_JSON_NPY_OR_PNG = {
    "responses": {
        "200": {
            "content": {
                codecs.JSON: {},
                codecs.NPY: {},
                codecs.PNG: {"schema": {"type": "string", "format": "binary"}},
            }
        }
    }
}
router = APIRouter(prefix="/v1/models", tags=["inference"])
ERRORS = (
    MalformedRequest,
    ModelNotFound,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidInput,
    ComputeFailed,
    ModelNotReady,
    QueueFull,
    OutOfMemory,
    ShuttingDown,
    DeadlineExceeded,
)


@router.post(
    "/{name}/log-prob",
    response_model=LogProbResponse,
    responses=responses(*ERRORS),
    openapi_extra=body_docs(LogProbRequest, npy=True, query=LogProbOptions),
)
@direct
async def log_prob(name: str, request: Request, engine: EngineDep, deadline: DeadlineDep) -> Response:
    """Exact log p(x) in nats for each row, from one network pass per mask (K masks average probabilities).

    JSON or `application/x-npy` in; `Accept: application/x-npy` answers with a float64 array (N,), or (N, D)
    conditionals with per_dimension."""
    accept = codecs.wants(request, codecs.JSON, codecs.NPY)  # before any work: a 406 costs nothing
    options, rows = await read_rows_and_options(request, engine, LogProbOptions)
    result = await engine.log_prob(name, rows, options.masks, options.per_dimension, deadline)
    headers = {"X-Model-Version": str(result.version), "X-Masks": str(result.masks)}
    if accept == codecs.NPY:
        return codecs.npy_response(
            result.per_dimension if options.per_dimension else result.log_prob, headers
        )
    body = {"model": name, "version": result.version, "masks": result.masks, "log_prob": result.log_prob}
    if result.per_dimension is not None:
        body["per_dimension"] = result.per_dimension
    return codecs.json_response(body, headers=headers)


@router.post(
    "/{name}/anomaly",
    response_model=AnomalyResponse,
    responses=responses(*ERRORS, NotCalibrated),
    openapi_extra=body_docs(AnomalyRequest, npy=True, query=AnomalyOptions) | ANSWERS_JSON_NPY_OR_PNG,
)
@direct
async def anomaly(name: str, request: Request, engine: EngineDep, deadline: DeadlineDep) -> Response:
    """Anomaly score (`score`: nll_or_context, the default for models of 0/1 rows, or nll), p-value against
    the model's calibration data, and a flag at the threshold for the requested false-positive rate; with
    `per_feature`, each dimension's part of the score. `Accept: application/x-npy` answers with a structured
    array (score, p_value, is_anomaly, and per_feature; the score used in `X-Score`); `Accept: image/png`,
    for a model with a 2-D input shape, with a heat-map grid: each row, then where its score comes from."""
    accept = codecs.wants(request, codecs.JSON, codecs.NPY, codecs.PNG)
    options, rows = await read_rows_and_options(request, engine, AnomalyOptions)
    result = await engine.anomaly(
        name,
        rows,
        options.fpr,
        deadline,
        per_feature=options.per_feature,
        image=accept == codecs.PNG,
        score=options.score,
    )
    headers = {
        "X-Model-Version": str(result.version),
        "X-Masks": str(result.masks),
        "X-Score": result.score_name,
        "X-Threshold": repr(result.threshold),
        "X-FPR": repr(result.fpr),
    }
    if accept == codecs.PNG:
        image = result.image
        png = codecs.heatmap_png(image.values, result.per_feature, image.shape, image.low, image.high)
        return Response(png, media_type=codecs.PNG, headers=headers)
    if accept == codecs.NPY:
        fields = [("score", "<f8"), ("p_value", "<f8"), ("is_anomaly", "?")]
        if result.per_feature is not None:
            fields.append(("per_feature", "<f8", (result.per_feature.shape[1],)))
        table = np.empty(len(result.score), dtype=fields)
        table["score"], table["p_value"], table["is_anomaly"] = (
            result.score,
            result.p_value,
            result.is_anomaly,
        )
        if result.per_feature is not None:
            table["per_feature"] = result.per_feature
        return codecs.npy_response(table, headers)
    return codecs.json_response(
        {
            "model": name,
            "version": result.version,
            "masks": result.masks,
            "score_name": result.score_name,
            "fpr": result.fpr,
            "threshold": result.threshold,
            "score": result.score,
            "p_value": result.p_value,
            "is_anomaly": result.is_anomaly,
            **({"per_feature": result.per_feature} if result.per_feature is not None else {}),
        },
        headers=headers,
    )


@router.post(
    "/{name}/drift",
    response_model=DriftResponse,
    responses=responses(*ERRORS, NotCalibrated),
    openapi_extra=body_docs(DriftRequest, npy=True, query=DriftOptions),
)
@direct
async def drift(name: str, request: Request, engine: EngineDep, deadline: DeadlineDep) -> Response:
    """Has the data drifted? A two-sample Kolmogorov-Smirnov test of the batch's anomaly scores against the
    model's calibration scores: `is_drift` when the p-value is below `alpha` (default 0.01). At least
    `min_drift_rows` rows (default 30)."""
    options, rows = await read_rows_and_options(request, engine, DriftOptions)
    result = await engine.drift(name, rows, options.alpha, deadline, score=options.score)
    return codecs.json_response(
        {
            "model": name,
            "version": result.version,
            "masks": result.masks,
            "score_name": result.score_name,
            "rows": result.rows,
            "statistic": result.statistic,
            "p_value": result.p_value,
            "alpha": result.alpha,
            "is_drift": result.is_drift,
            "mean_score": result.mean_score,
            "calibration_mean_score": result.calibration_mean_score,
        },
        headers={"X-Model-Version": str(result.version)},
    )


@router.post(
    "/{name}/sample",
    response_model=SampleResponse,
    responses=responses(*ERRORS),
    openapi_extra=body_docs(SampleRequest) | ANSWERS_JSON_NPY_OR_PNG,
)
@direct
async def sample(name: str, request: Request, engine: EngineDep, deadline: DeadlineDep) -> Response:
    """Draw n samples; the same seed gives the same samples. With `observed`, draw n completions of a
    partly observed vector from p(x_missing | x_observed) (inpainting), keeping the observed values exactly.
    `Accept: image/png` returns a grid image for models with a 2-D input shape (with `observed`: the query
    first, then the completions, the drawn pixels tinted); `application/x-npy` an (n, D) array."""
    codecs.require_content_type(request, codecs.JSON)
    accept = codecs.wants(request, codecs.JSON, codecs.NPY, codecs.PNG)
    body = codecs.parse_json(await codecs.read_body(request, engine.settings.max_body_bytes))
    options = validate_options(SampleRequest, body, engine.settings)
    result = await engine.sample(name, options, deadline, image=accept == codecs.PNG)
    headers = {
        "X-Model-Version": str(result.version),
        "X-Seed": str(result.seed),
        "X-Masks": str(result.masks),
    }
    if result.image is not None:
        image = result.image
        png = codecs.png_grid(image.values, image.shape, image.low, image.high, observed=image.observed)
        return Response(png, media_type=codecs.PNG, headers=headers)
    if accept == codecs.NPY:
        return codecs.npy_response(result.samples, headers)
    return codecs.json_response(
        {
            "model": name,
            "version": result.version,
            "masks": result.masks,
            "seed": result.seed,
            "samples": result.samples,
        },
        headers=headers,
    )
