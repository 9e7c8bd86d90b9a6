"""Request and response bodies, as pydantic models: they validate options and document the API.

Rows (`inputs`) are parsed by the codecs straight into numpy (pydantic would be far slower on 100k rows);
the models here still describe them, so /openapi.json shows the full request.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Rows = Annotated[
    list[list[float | None]],
    Field(description="rows of D numbers each (bernoulli: 0/1; categorical: integers 0..K-1; else reals)",
          examples=[[[0, 1, 1, 0], [1, 1, 0, 0]]]),
]
Masks = Annotated[int | None, Field(ge=1, description="ensemble size K (default: the model's); <= stored masks")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogProbOptions(Strict):
    masks: Masks = None
    per_dimension: bool = Field(False, description="also return log p(x_d | x_<d) per dimension, input order")


class LogProbRequest(LogProbOptions):
    inputs: Rows


class LogProbResponse(BaseModel):
    model: str
    version: int
    masks: int
    log_prob: list[float] = Field(description="log p(x) in nats, one per row, in request order")
    per_dimension: list[list[float]] | None = Field(None, description="(rows, D) conditionals; sum = log_prob")


class AnomalyOptions(Strict):
    fpr: Annotated[float | None, Field(gt=0, lt=1, description="false-positive rate for the threshold "
                                                               "(default: the model's calibration default)")] = None


class AnomalyRequest(AnomalyOptions):
    inputs: Rows


class AnomalyResponse(BaseModel):
    model: str
    version: int
    masks: int
    fpr: float
    threshold: float = Field(description="score above which a row is flagged; flags `fpr` of calibration data")
    score: list[float] = Field(description="negative log-likelihood per row, nats")
    p_value: list[float] = Field(description="fraction of calibration rows scoring at least as high")
    is_anomaly: list[bool]


class Observed(Strict):
    indices: list[Annotated[int, Field(ge=0)]] = Field(description="observed dimensions, counting from 0")
    values: list[float] = Field(description="their values, in the same order")


class SampleRequest(Strict):
    n: Annotated[int, Field(ge=1, description="number of samples (<= max_sample_n)")]
    observed: Observed | list[float | None] | None = Field(
        None, description="condition on these values (inpainting): {indices, values}, or a row of D values with "
                          "null where a value is to be drawn; samples keep the observed values exactly")
    seed: Annotated[int | None, Field(ge=0, lt=2**63, description="same seed, same samples (default: random)")] = None
    masks: Masks = None


class SampleResponse(BaseModel):
    model: str
    version: int
    masks: int
    seed: int = Field(description="the seed used; send it back to draw the same samples again")
    samples: list[list[float]]


class MasksInfo(BaseModel):
    stored: int
    default: int
    resampling: str
    fresh_masks: bool
    mixture: bool = Field(False, description="true: each mask is a separately trained MADE (made merge)")


class ModelInfo(BaseModel):
    name: str
    status: str = Field(description="ready, loading or failed")
    version: int | None = None
    versions_available: list[int] = []
    loading_version: int | None = None
    last_error: str | None = None
    likelihood: dict[str, Any] | None = None
    n_dims: int | None = None
    input_shape: list[int] | None = None
    hidden_sizes: list[int] | None = None
    masks: MasksInfo | None = None
    device: str | None = None
    loaded_at: float | None = None
    load_seconds: float | None = None
    training: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]


class ReloadResponse(BaseModel):
    model: str
    status: str
    version: int


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: invalid_input, model_not_found, queue_full, ...")
    message: str = Field(description="what is wrong, naming the row and column of a bad value")
    row: int | None = None
    column: int | None = None
    field: str | None = None
    limit: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- Open Inference Protocol v2 (KServe, Triton) ---------------------------------------------------------
class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
