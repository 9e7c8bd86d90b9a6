"""Checks of one request against the one model version that will compute it (a ServedModel snapshot), made
so that a bad request never fails its batch-mates: before anything is queued, except the values of rows
to score, which are checked in their batch, each request answered on its own (batch_rows). What a
request's schema can check on its own (ranges, {indices, values} pairs, max_sample_n) is checked by the
schema (schemas.py)."""

from __future__ import annotations

import numpy as np
import torch

from ..calibration import Calibration
from ..data import DataError, check_shape, validate
from ..made.conditional import ConditioningError, check_observed
from .errors import InvalidInput, NotAcceptable, NotCalibrated
from .registry import ServedModel
from .schemas import SampleRequest


def rows(
    served: ServedModel, rows: np.ndarray, max_rows: int, allow_missing: bool = False, field: str = "inputs"
) -> torch.Tensor:
    """(N, D) rows as the model's tensor: at most `max_rows`, D wide, in the likelihood's support."""
    row_shape(served, rows, max_rows, field)
    try:
        return validate(
            rows, served.model.likelihood, served.model.n_dims, source=field, allow_missing=allow_missing
        )
    except DataError as exc:
        raise _invalid_input(exc, field) from None


def row_shape(served: ServedModel, rows: np.ndarray, max_rows: int, field: str = "inputs") -> None:
    """At most `max_rows` rows, each of D values: what is checked before a request whose values are checked
    in its batch (batch_rows) may join one."""
    if rows.shape[0] > max_rows:
        raise InvalidInput(f"{rows.shape[0]} rows in one request; the limit is {max_rows}", limit=max_rows)
    try:
        check_shape(rows, served.model.n_dims, source=field)
    except DataError as exc:
        raise _invalid_input(exc, field) from None


def batch_rows(
    served: ServedModel, parts: list[np.ndarray | torch.Tensor]
) -> torch.Tensor | list[torch.Tensor | InvalidInput]:
    """The rows of every request of a batch as one model tensor when all are valid; else each request's
    rows as the model's tensor, or the InvalidInput that request gets. A part is a request's rows as sent
    (an array, shape checked by row_shape, no missing values), or a tensor `rows` made before it was
    queued (a request split over several batches, whose errors must name its own rows).

    The values are checked in the compute thread, where the whole batch costs one pass: on the event loop,
    checking each 1-row request cost more than a third of the engine's time per request. Only a batch that
    fails is checked again request by request, to find whose rows are wrong and name them as `rows` would;
    so are the parts of a batch that are not all arrays of one dtype, so that each is checked as sent."""
    if all(isinstance(part, np.ndarray) for part in parts) and len({part.dtype for part in parts}) == 1:
        try:
            joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return validate(joined, served.model.likelihood, served.model.n_dims)
        except DataError:
            pass
    outcomes: list[torch.Tensor | InvalidInput] = []
    for part in parts:
        if isinstance(part, torch.Tensor):  # checked before it was queued
            outcomes.append(part)
            continue
        try:
            outcomes.append(rows(served, part, max_rows=len(part)))
        except InvalidInput as exc:
            outcomes.append(exc)
    return outcomes


def _invalid_input(exc: DataError, field: str) -> InvalidInput:
    details = {k: v for k, v in (("row", exc.row), ("column", exc.column)) if v is not None}
    return InvalidInput(str(exc), field=field, **details)


def complete_rows(rows: np.ndarray) -> None:
    if np.isnan(rows).any():
        raise InvalidInput(
            "anomaly scores need complete rows: the calibration is of full rows, so a "
            "marginal likelihood would not be comparable (use log-prob for missing values)",
            field="inputs",
        )


def drift_rows(rows: np.ndarray, minimum: int) -> None:
    if rows.shape[0] < minimum:
        raise InvalidInput(
            f"a drift check needs at least {minimum} rows, got {rows.shape[0]}: a two-sample test on fewer "
            "says little",
            field="inputs",
            limit=minimum,
        )


def masks(served: ServedModel, masks: int | None) -> int:
    """The ensemble size K to use: the model's default, or the one asked for if the model has it."""
    try:
        return served.model.resolve_masks(masks)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="masks") from None


def per_dimension(served: ServedModel, masks: int) -> None:
    """Per-dimension conditionals of an ensemble are only defined when its masks share one ordering."""
    if masks > 1 and not served.model.shares_ordering(masks):
        raise InvalidInput(
            f"per-dimension conditionals of a {masks}-mask ensemble need masks that share one ordering; "
            "this model's masks use different orderings (ask for masks=1)",
            field="per_dimension",
        )


def conditioning(
    served: ServedModel, observed: torch.Tensor, masks: int, max_patterns: int, field: str
) -> None:
    """Refuse what the model cannot condition on: too many distinct missing patterns (each costs a network
    pass per mask), or, for a fixed-order model, an observed set that is not a prefix of its ordering
    (conditional.check_observed). `observed` is (N, D) bool."""
    patterns = torch.unique(observed, dim=0)
    if len(patterns) > max_patterns:
        raise InvalidInput(
            f"{len(patterns)} distinct patterns of missing values in one request; "
            f"the limit is {max_patterns}",
            field=field,
            limit=max_patterns,
        )
    try:
        check_observed(served.model, patterns, masks)
    except ConditioningError as exc:
        raise InvalidInput(str(exc), field=field) from None


def missing_values(
    served: ServedModel, missing: torch.Tensor, masks: int, per_dimension: bool, max_patterns: int
) -> None:
    """Rows with missing values ((N, D) bool `missing`) are scored by their marginal likelihood: never with
    per-dimension conditionals, and only for patterns the model can condition on."""
    if per_dimension:
        raise InvalidInput(
            "per_dimension cannot be combined with missing (null) values", field="per_dimension"
        )
    conditioning(served, ~missing, masks, max_patterns, field="inputs")


def calibration(served: ServedModel) -> Calibration:
    if served.calibration is None:
        raise NotCalibrated(
            f"model {served.name!r} version {served.version} has no anomaly calibration; "
            "run `made calibrate --model DIR --data FILE`"
        )
    return served.calibration


def anomaly_score(served: ServedModel, calibration: Calibration, score: str | None) -> str:
    """The anomaly score to use: the one asked for, else the calibration's default (409 if not calibrated)."""
    score = calibration.default_score if score is None else score
    if score not in calibration.scores:
        raise NotCalibrated(
            f"model {served.name!r} version {served.version} is not calibrated for the {score!r} score "
            f"(it has: {', '.join(calibration.scores)}); `made calibrate` with the model's training rows "
            "adds it for models of 0/1 rows"
        )
    return score


def observed_row(served: ServedModel, request: SampleRequest) -> np.ndarray | None:
    """The request's `observed` as a (D,) row with NaN where a value is to be drawn, or None."""
    try:
        return request.observed_row(served.model.n_dims)
    except ValueError as exc:
        raise InvalidInput(str(exc), field="observed") from None


def image_shape(served: ServedModel) -> list[int]:
    """(height, width) of the model's samples as images; 406 for a model without a 2-D input shape."""
    shape = served.config.input_shape
    if not shape or len(shape) != 2:
        raise NotAcceptable(
            f"model {served.name!r} has no 2-D input_shape, so it has no image form; "
            "ask for application/json or application/x-npy"
        )
    return shape
