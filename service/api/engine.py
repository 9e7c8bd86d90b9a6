"""What the service does, below the routes: take one snapshot of the model, validate against it, batch,
and shape the numbers. The checks are in validation.py, the model calls in compute.py, the batching in
batcher.py; the engine orchestrates them.

One Engine per server process. It owns the device, a single compute thread (every model call runs there,
so a model's active mask is never switched under another call, and a GPU sees one stream of work), a
loader thread for (re)loading models, the model registry, and the batchers.

Each request is served by one model version: the snapshot (ServedModel) taken when it arrives is the one
its rows are validated against and the one that computes them, since a batcher computes with the snapshot
it was made for. A reload in between, even one that changes D, cannot reach the model with rows of
another version's shape.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..calibration import Calibration
from ..devices import resolve_device
from ..made import draw_randomness, make_generator
from ..made.conditional import draw_conditional_randomness
from ..settings import Settings
from . import compute, metrics, validation
from .batcher import Batchers
from .registry import ModelRegistry, ServedModel
from .schemas import SampleRequest


@dataclass
class LogProbResult:
    version: int
    masks: int
    log_prob: np.ndarray  # (N,) nats
    per_dimension: np.ndarray | None  # (N, D) log p(x_d | x_<d), input order


@dataclass
class Scored:
    log_prob: np.ndarray  # (N,) nats, under the calibration's ensemble
    score: np.ndarray  # (N,) the anomaly score
    per_feature: np.ndarray | None  # (N, D) each dimension's part of it (calibration.feature_scores)


@dataclass
class AnomalyResult:
    version: int
    masks: int
    score_name: str  # which anomaly score: "nll_or_context" or "nll"
    fpr: float
    threshold: float
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    log_prob: np.ndarray
    per_feature: np.ndarray | None = None  # (N, D) each dimension's part of the score
    image: SampleImage | None = None  # the rows as images, for a heat-map grid


@dataclass
class DriftResult:
    version: int
    masks: int
    score_name: str
    rows: int
    statistic: float
    p_value: float
    alpha: float
    is_drift: bool
    mean_score: float
    calibration_mean_score: float


@dataclass
class SampleImage:
    """What a PNG grid of samples needs: the values as computed, the image shape and the value range."""

    values: np.ndarray  # (n, D) in the model's float dtype
    shape: list[int]  # (height, width)
    low: float
    high: float
    observed: np.ndarray | None  # (D,) bool: the dimensions given, for conditional samples


@dataclass
class SampleResult:
    version: int
    masks: int
    seed: int
    samples: np.ndarray  # (n, D) in the likelihood's sample dtype (integers for discrete likelihoods)
    image: SampleImage | None = None  # only when asked for


LOADER_THREADS = min(4, os.cpu_count() or 1)


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.compute_threads:
            torch.set_num_threads(settings.compute_threads)
        self.compute_executor = ThreadPoolExecutor(1, thread_name_prefix="made-compute")
        # Models load side by side (reading files and warming them leave the GIL often), so a restarted
        # server is ready sooner; one model's versions still load one at a time (registry.reload_task).
        self.loader_executor = ThreadPoolExecutor(LOADER_THREADS, thread_name_prefix="made-loader")
        self.registry = ModelRegistry(settings, self.device, self.loader_executor)
        self.batchers = Batchers(
            self.compute_executor,
            max_batch_rows=settings.max_batch_rows,
            max_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue_requests=settings.max_queue_requests,
            requests_in_flight=lambda: self.in_flight,
            handoff_s=settings.compute_handoff_ms / 1000.0,
        )
        self.draining = False  # set on SIGTERM: readiness fails, new requests get 503
        self.in_flight = 0  # HTTP requests being handled (kept by the request middleware)
        self._tasks: list[asyncio.Task] = []

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Begin loading every model; return at once so /healthz answers while they load."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.registry.load_all(), name="load-models"))
        if self.settings.reload_poll_s > 0:
            self._tasks.append(loop.create_task(self.registry.watch(), name="watch-repository"))

    @property
    def ready(self) -> bool:
        return self.registry.ready and not self.draining

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing queued: a draining server may exit."""
        return self.in_flight == 0 and self.batchers.idle

    async def stop(self) -> None:
        await self.batchers.close(timeout=self.settings.shutdown_grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.compute_executor.shutdown(wait=True)
        self.loader_executor.shutdown(wait=False, cancel_futures=True)

    def deadline(self, requested_s: float | None) -> float:
        """loop.time() by which the request must have left the queue: the default, or sooner if asked."""
        timeout = self.settings.request_timeout_s
        if requested_s is not None:
            timeout = min(timeout, requested_s)
        return asyncio.get_running_loop().time() + timeout

    # ---- operations ----------------------------------------------------------------------------------------
    async def log_prob(
        self,
        name: str,
        rows: np.ndarray,
        masks: int | None,
        per_dimension: bool,
        deadline: float,
        version: str | None = None,
    ) -> LogProbResult:
        """log p(x) per row (null/NaN entries marginalised out), and per dimension if asked for; from
        `version` of the model if one is named (404 unless it is the one serving)."""
        served = self.registry.get(name, version)
        return await self._log_prob(served, rows, masks, per_dimension, deadline)

    async def _log_prob(
        self, served: ServedModel, rows: np.ndarray, masks: int | None, per_dimension: bool, deadline: float
    ) -> LogProbResult:
        K = validation.masks(served, masks)
        if per_dimension:
            validation.per_dimension(served, K)
        validation.row_shape(served, rows, self.settings.max_request_rows)
        # NaN marks a missing value: then log p(x_observed). Only floats can hold NaN, and numpy answers small
        # rows faster than torch.
        marginal = rows.dtype.kind == "f" and bool(np.isnan(rows).any())
        if marginal:
            payload = (validation.rows(served, rows, self.settings.max_request_rows, allow_missing=True),)
            missing = torch.isnan(payload[0])
            validation.missing_values(served, missing, K, per_dimension, self.settings.max_missing_patterns)
        elif rows.shape[0] > self.settings.max_batch_rows:
            # split over several batches: checked here, so that an error names the request's own row
            payload = (validation.rows(served, rows, self.settings.max_request_rows),)
        else:
            payload = (rows,)  # complete rows: their values are checked in the batch (validation.batch_rows)
        batcher = self.batchers.get(
            served,
            "log_prob",
            (K, per_dimension, marginal),
            lambda: compute.log_prob(served, K, per_dimension, marginal),
        )
        result = await batcher.submit(payload, deadline)
        return LogProbResult(served.version, K, result[0], result[1] if per_dimension else None)

    async def anomaly(
        self,
        name: str,
        rows: np.ndarray,
        fpr: float | None,
        deadline: float,
        version: str | None = None,
        per_feature: bool = False,
        image: bool = False,
        score: str | None = None,
    ) -> AnomalyResult:
        """Anomaly scores (`score`, default: the calibration's default score), p-values and flags against the
        version's own calibration; with `per_feature`, each dimension's part of the score; `image`: also
        what a heat-map PNG needs."""
        served = self.registry.get(name, version)
        calibration = validation.calibration(served)
        score_name = validation.anomaly_score(served, calibration, score)
        if image:
            validation.image_shape(served)
        validation.complete_rows(rows)
        scored = await self._scores(served, calibration, score_name, rows, deadline, per_feature or image)
        distribution = calibration.distribution(score_name)
        fpr = calibration.default_fpr if fpr is None else fpr
        threshold = distribution.threshold(fpr)
        return AnomalyResult(
            served.version,
            calibration.masks,
            score_name,
            fpr,
            threshold,
            scored.score,
            distribution.p_value(scored.score),
            scored.score > threshold,
            scored.log_prob,
            scored.per_feature,
            self._image(served, rows.astype(np.float64), None) if image else None,
        )

    async def _scores(
        self,
        served: ServedModel,
        calibration: Calibration,
        score_name: str,
        rows: np.ndarray,
        deadline: float,
        per_feature: bool = False,
    ) -> Scored:
        """The anomaly score `score_name` of each complete row, as the calibration defines it (under the
        calibration's ensemble size), and with `per_feature` each dimension's part: the one place anomaly
        and drift get their scores from."""
        K = calibration.masks
        if score_name == "nll" and not per_feature:  # batched with the log-prob requests
            log_prob = (await self._log_prob(served, rows, K, False, deadline)).log_prob
            return Scored(log_prob, -log_prob, None)
        x = validation.rows(served, rows, self.settings.max_request_rows)
        if score_name == "nll":
            batcher = self.batchers.get(
                served, "log_prob", ("features", K), lambda: compute.feature_scores(served, K)
            )
            log_prob, nll_parts = await batcher.submit((x,), deadline)
            return Scored(log_prob, -log_prob, nll_parts)
        batcher = self.batchers.get(
            served,
            "log_prob",
            ("context", K, per_feature),
            lambda: compute.context_scores(served, K, per_feature),
        )
        log_prob, code_length, *parts = await batcher.submit((x,), deadline)
        score = calibration.score(score_name, -log_prob, code_length)
        if not per_feature:
            return Scored(log_prob, score, None)
        return Scored(log_prob, score, calibration.feature_scores(score_name, -log_prob, code_length, *parts))

    async def drift(
        self, name: str, rows: np.ndarray, alpha: float, deadline: float, score: str | None = None
    ) -> DriftResult:
        """Whether a batch's anomaly scores come from the calibration distribution (two-sample KS)."""
        served = self.registry.get(name)
        calibration = validation.calibration(served)
        score_name = validation.anomaly_score(served, calibration, score)
        validation.drift_rows(rows, self.settings.min_drift_rows)
        validation.complete_rows(rows)
        scores = (await self._scores(served, calibration, score_name, rows, deadline)).score
        distribution = calibration.distribution(score_name)
        statistic, p_value = distribution.drift(scores)
        is_drift = p_value < alpha
        metrics.DRIFT_CHECKS.labels(model=name, result="drift" if is_drift else "no_drift").inc()
        metrics.DRIFT_P_VALUE.labels(model=name).set(p_value)
        return DriftResult(
            served.version,
            calibration.masks,
            score_name,
            len(scores),
            statistic,
            p_value,
            alpha,
            is_drift,
            float(scores.mean()),
            distribution.mean,
        )

    async def sample(
        self, name: str, request: SampleRequest, deadline: float, image: bool = False
    ) -> SampleResult:
        """request.n samples; with `observed`, n completions of it drawn from p(x_missing | x_observed), the
        observed values kept exactly. `image`: also what a PNG grid needs (406 for a model without one)."""
        served = self.registry.get(name)
        if image:
            validation.image_shape(served)
        K = validation.masks(served, request.masks)
        seed = secrets.randbits(63) if request.seed is None else request.seed
        # This request's own randomness, drawn now: merged with other requests, its samples stay the same.
        generator = make_generator(seed, served.device)
        observed = validation.observed_row(served, request)
        if observed is None:
            payload = tuple(draw_randomness(served.model, request.n, K, generator))
            batcher = self.batchers.get(
                served,
                "sample",
                ("unconditional", K),
                lambda: compute.sample(served, self.settings.cuda_graphs),
            )
        else:
            payload = self._conditional_payload(served, observed, request.n, K, generator)
            batcher = self.batchers.get(
                served, "sample", ("conditional", K), lambda: compute.conditional_sample(served, K)
            )
        (samples,) = await batcher.submit(payload, deadline)
        values = samples.numpy()
        observed_mask = None if observed is None else ~np.isnan(observed)
        return SampleResult(
            served.version,
            K,
            seed,
            served.model.likelihood.cast_samples(values),
            self._image(served, values, observed_mask) if image else None,
        )

    def _conditional_payload(
        self, served: ServedModel, observed: np.ndarray, n: int, masks: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        """(given (n, D) with NaN where a value is drawn, then the conditional sampler's randomness)."""
        given = validation.rows(
            served, observed[None, :], self.settings.max_request_rows, allow_missing=True, field="observed"
        )[0].to(served.device)
        given_mask = ~torch.isnan(given)[None, :]  # (1, D): the dimensions given
        validation.conditioning(
            served, given_mask, masks, self.settings.max_missing_patterns, field="observed"
        )
        return (
            given.to(served.model.dtype).expand(n, -1),
            *draw_conditional_randomness(served.model, n, generator),
        )

    @staticmethod
    def _image(served: ServedModel, values: np.ndarray, observed: np.ndarray | None) -> SampleImage:
        """A discrete likelihood knows its range; real-valued samples are shown from their min to max."""
        low, high = served.model.likelihood.value_range() or (float(values.min()), float(values.max()))
        return SampleImage(values, validation.image_shape(served), low, high, observed)
