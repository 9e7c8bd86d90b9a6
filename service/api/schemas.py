"""Request and response bodies, as pydantic models: they validate options and document the API.

Rows (`inputs`) are parsed by the codecs straight into numpy (pydantic would be far slower on 100k rows);
the models here still describe them, so /openapi.json shows the full request.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..calibration import ScoreName

Rows = Annotated[
    list[list[float | None]],
    Field(
        # no example here: a valid one depends on the model (/openapi.json has one per served model)
        description="rows of D numbers each (bernoulli: 0/1; categorical: integers 0..K-1; else reals)",
    ),
]
Masks = Annotated[
    int | None, Field(ge=1, description="ensemble size K (default: the model's); <= stored masks")
]


REFUSED = "refused"  # the type of a refusal: validate_options shows its message as is, with its details


def refusal(message: str, **details: Any) -> PydanticCustomError:
    """A validation error that reads like the service's own (no "Value error," prefix), with details such
    as the limit that was exceeded."""
    return PydanticCustomError(REFUSED, "{message}", {"message": message, **details})


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
    per_dimension: list[list[float]] | None = Field(
        None, description="(rows, D) conditionals; sum = log_prob"
    )


class AnomalyOptions(Strict):
    fpr: Annotated[
        float | None,
        Field(
            gt=0,
            lt=1,
            description="false-positive rate for the threshold (default: the model's calibration default)",
        ),
    ] = None
    per_feature: bool = Field(
        False,
        description="also each dimension's part of the score: -log p(x_d | x_<d) over the masks, less the "
        "context model's -log q(x_d | context) where nll_or_context's ratio test decides (docs/anomaly.md)",
    )
    score: ScoreName | None = Field(
        None,
        description="anomaly score: nll_or_context (the NLL test or the NLL-minus-context test, whichever is "
        "more surprised) or nll (the negative log-likelihood); default: the model's calibration default",
    )


class AnomalyRequest(AnomalyOptions):
    inputs: Rows


class AnomalyResponse(BaseModel):
    model: str
    version: int
    masks: int
    score_name: ScoreName = Field(description="the anomaly score used: nll_or_context or nll")
    fpr: float
    threshold: float = Field(
        description="score above which a row is flagged; flags `fpr` of calibration data"
    )
    score: list[float] = Field(
        description="anomaly score per row: nll, the negative log-likelihood in nats; nll_or_context, "
        "-log of the smaller of its two tests' p-values"
    )
    p_value: list[float] = Field(
        description="P(a normal row scores at least as high), from the calibration data; is_anomaly is "
        "p_value < fpr"
    )
    is_anomaly: list[bool]
    per_feature: list[list[float]] | None = Field(
        None,
        description="(rows, D) each dimension's part of the deciding test's statistic, input order (with "
        "per_feature): of the NLL (they sum to it when the masks share one ordering, else to the masks' "
        "mean NLL), or of NLL - L(x) where nll_or_context's ratio test decides",
    )


class DriftOptions(Strict):
    alpha: Annotated[
        float,
        Field(gt=0, lt=1, description="significance level: is_drift when p_value < alpha"),
    ] = 0.01
    score: ScoreName | None = Field(
        None, description="anomaly score whose distribution is tested (default: the calibration default)"
    )


class DriftRequest(DriftOptions):
    inputs: Rows


class DriftResponse(BaseModel):
    model: str
    version: int
    masks: int
    score_name: ScoreName = Field(description="the anomaly score tested")
    rows: int = Field(description="rows in the batch tested")
    statistic: float = Field(description="Kolmogorov-Smirnov statistic: the largest gap between the CDFs")
    p_value: float = Field(description="two-sample KS p-value against the model's calibration scores")
    alpha: float
    is_drift: bool = Field(description="p_value < alpha: the batch's scores are not from the calibration's")
    mean_score: float = Field(description="mean anomaly score of the batch (calibration mean for contrast)")
    calibration_mean_score: float


class Observed(Strict):
    indices: list[Annotated[int, Field(ge=0)]] = Field(description="observed dimensions, counting from 0")
    values: list[float] = Field(description="their values, in the same order")

    @model_validator(mode="after")
    def _one_value_per_dimension(self):
        if len(self.indices) != len(self.values):
            raise refusal(f"observed has {len(self.indices)} indices but {len(self.values)} values")
        if len(set(self.indices)) != len(self.indices):
            raise refusal("observed.indices repeats a dimension")
        return self

    def row(self, n_dims: int) -> np.ndarray:
        """(D,) float64, NaN where a value is to be drawn; ValueError if it does not fit D dimensions."""
        if self.indices and max(self.indices) >= n_dims:
            raise ValueError(f"observed index {max(self.indices)} is out of range for {n_dims} dimensions")
        row = np.full(n_dims, np.nan)
        row[self.indices] = self.values
        if np.isnan(row[self.indices]).any():
            raise ValueError("observed.values must be numbers")
        return row


class SampleRequest(Strict):
    n: Annotated[int, Field(ge=1, description="number of samples (<= max_sample_n)")]
    observed: Observed | list[float | None] | None = Field(
        None,
        description="condition on these values (inpainting): {indices, values}, or a row of D values with "
        "null where a value is to be drawn; samples keep the observed values exactly",
    )
    seed: Annotated[
        int | None, Field(ge=0, lt=2**63, description="same seed, same samples (default: random)")
    ] = None
    masks: Masks = None

    @field_validator("n")
    @classmethod
    def _at_most_max_sample_n(cls, n: int, info: ValidationInfo) -> int:
        """The upper bound is a server setting: the Settings come as the validation context."""
        limit = getattr(info.context, "max_sample_n", None)
        if limit is not None and n > limit:
            raise refusal(f"n must be between 1 and {limit}, got {n}", limit=limit)
        return n

    def observed_row(self, n_dims: int) -> np.ndarray | None:
        """(D,) float64 with NaN where a value is to be drawn (None: unconditional sampling); ValueError if
        `observed` does not fit a model of D dimensions or leaves nothing to draw."""
        if self.observed is None:
            return None
        if isinstance(self.observed, Observed):
            row = self.observed.row(n_dims)
        elif len(self.observed) != n_dims:
            raise ValueError(
                f"observed has {len(self.observed)} values; the model expects {n_dims} "
                "(null where a value is to be drawn)"
            )
        else:
            row = np.array([np.nan if v is None else v for v in self.observed], dtype=np.float64)
        if not np.isnan(row).any():
            raise ValueError("observed gives every dimension: there is nothing left to sample")
        return row


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
class V2ServerReady(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong (the Open Inference Protocol's error body)")


class V2Tensor(BaseModel):
    name: str
    shape: list[NonNegativeInt]  # a request's tensor has a concrete shape (-1 is for metadata only)
    datatype: str
    data: list[Any] | None = None  # absent when the tensor's bytes follow the JSON (binary_data_size)
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
