"""config.json: the model's architecture (`MADEConfig`, whole) plus what the checkpoint adds to it."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..calibration import Calibration
from ..context_model import template_for
from ..made import Density, MADEConfig

FORMAT = "made-checkpoint"
FORMAT_VERSION = 1
# Storage dtype of the floating-point tensors. "int8" quantizes the masked layers' weight matrices
# (layout.py) and keeps the other, small, tensors (biases, scales) in float32.
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.float32,
}


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, truncated or incompatible."""


class Standardisation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shift: list[float]
    scale: list[Annotated[float, Field(gt=0)]]


class TrainingRecord(BaseModel):
    """How the weights were made. Extra keys are kept: the record grows with the trainer."""

    model_config = ConfigDict(extra="allow")
    command: str | None = None
    data_file: str | None = None
    data_sha256: str | None = None
    valid_sha256: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    best_valid_nll: float | None = None
    valid_masks: int | None = None
    seed: int | None = None
    package_version: str | None = None
    date: str | None = None


class CheckpointConfig(MADEConfig):
    """The architecture's fields (flat, as config.json has always held them) and the checkpoint's own."""

    format: Literal["made-checkpoint"] = FORMAT
    format_version: int = FORMAT_VERSION
    input_shape: list[Annotated[int, Field(ge=1)]] | None = None
    standardisation: Standardisation | None = None
    # "int8": each masked weight matrix row as int8 values times one float32 scale (w = q * scale)
    weights_dtype: Literal[tuple(DTYPES)] = "float32"
    # "masked": a one-mask model or a mixture stores only the weights some mask keeps (about half),
    # each matrix flattened row-major (layout.py)
    weights_layout: Literal["dense", "masked"] = "dense"
    training: TrainingRecord | None = None
    calibration: Calibration | None = None

    @model_validator(mode="after")
    def _checkpoint_fields(self):
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this build reads {FORMAT_VERSION})"
            )
        if self.weights_layout == "masked" and self.n_masks != 1 and not self.mixture:
            raise ValueError(
                f"weights_layout 'masked' needs a one-mask model or a mixture, not n_masks={self.n_masks}"
            )
        if self.calibration is not None and self.calibration.masks > self.n_masks:
            raise ValueError(f"calibration.masks={self.calibration.masks} exceeds n_masks={self.n_masks}")
        context = self.calibration.context if self.calibration is not None else None
        if context is not None and self.likelihood.name != "bernoulli":
            raise ValueError("calibration.context (a model of 0/1 rows) needs the bernoulli likelihood")
        if context is not None and context.template != template_for(self.input_shape):
            raise ValueError(
                f"calibration.context.template {context.template!r} does not fit "
                f"input_shape {self.input_shape}"
            )
        if self.input_shape is not None and math.prod(self.input_shape) != self.n_dims:
            raise ValueError(f"input_shape {self.input_shape} does not hold n_dims={self.n_dims} values")
        if self.likelihood.make().real_valued and self.standardisation is None:
            raise ValueError("a real-valued likelihood needs 'standardisation' statistics")
        if self.standardisation is not None:
            s = self.standardisation
            if len(s.shift) != self.n_dims or len(s.scale) != self.n_dims:
                raise ValueError("standardisation shift/scale must have n_dims entries each")
        return self

    @property
    def architecture(self) -> MADEConfig:
        return MADEConfig.model_validate(self.model_dump(include=set(MADEConfig.model_fields)))

    @classmethod
    def describing(cls, model: Density, **checkpoint_fields) -> CheckpointConfig:
        """The config of `model` as a checkpoint: its architecture whole, its standardisation, and the
        checkpoint's own fields (input_shape, weights_dtype, weights_layout, training, calibration)."""
        if model.likelihood.real_valued:
            checkpoint_fields["standardisation"] = Standardisation(
                shift=model.shift.tolist(), scale=model.scale.tolist()
            )
        return cls.model_validate(model.config.model_dump() | checkpoint_fields)
