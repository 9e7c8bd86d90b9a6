"""What the service does, below the routes: validate, batch, compute, and shape the numbers.

One Engine per server process. It owns the device, a single compute thread (every model call runs there,
so a model's active mask is never switched under another call, and a GPU sees one stream of work), a
loader thread for (re)loading models, the model registry, and one batcher per model and operation.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..data import DataError, validate
from ..devices import resolve_device
from ..made import Randomness, draw_randomness, make_generator
from ..made.conditional import (
    ConditionalRandomness,
    ConditioningError,
    check_observed,
    draw_conditional_randomness,
    marginal_log_prob,
    sample_conditional_from_randomness,
)
from ..made.fast_sampling import sample_fast_from_randomness
from ..settings import Settings
from .batcher import Batcher, QueueBudget, Tensors, rows_of
from .errors import InvalidInput, ModelNotReady, NotCalibrated
from .registry import ModelRegistry, ServedModel

log = logging.getLogger("made.engine")


@dataclass
class LogProbResult:
    version: int
    masks: int
    log_prob: np.ndarray  # (N,) nats
    per_dimension: np.ndarray | None  # (N, D) log p(x_d | x_<d), input order


@dataclass
class AnomalyResult:
    version: int
    masks: int
    fpr: float
    threshold: float
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray


@dataclass
class SampleResult:
    version: int
    masks: int
    seed: int
    samples: np.ndarray  # (n, D)
    served: ServedModel
    observed: np.ndarray | None = None  # (D,) bool: the dimensions given, for conditional samples


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.compute_threads:
            torch.set_num_threads(settings.compute_threads)
        self.compute_executor = ThreadPoolExecutor(1, thread_name_prefix="made-compute")
        self.loader_executor = ThreadPoolExecutor(1, thread_name_prefix="made-loader")
        self.registry = ModelRegistry(settings, self.device, self.loader_executor)
        self.batchers: dict[tuple, Batcher] = {}
        self.budgets: dict[tuple[str, str], QueueBudget] = {}  # one queue bound per model and operation
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
        return self.in_flight == 0 and all(b.idle for b in self.batchers.values())

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_s
        await asyncio.gather(*(b.close(timeout=grace) for b in self.batchers.values()))
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

    def _batcher(self, name: str, operation: str, key: tuple, compute) -> Batcher:
        batcher = self.batchers.get((name, operation, key))
        if batcher is None:
            budget = self.budgets.setdefault((name, operation), QueueBudget(self.settings.max_queue_requests))
            batcher = Batcher(
                name, operation, compute, self.compute_executor,
                max_batch_rows=self.settings.max_batch_rows,
                max_delay_s=self.settings.max_batch_delay_ms / 1000.0,
                max_queue_requests=self.settings.max_queue_requests,
                budget=budget,
            )
            batcher.start()
            self.batchers[(name, operation, key)] = batcher
        return batcher

    # ---- validation --------------------------------------------------------------------------------------
    def validate_rows(self, served: ServedModel, rows: np.ndarray, allow_missing: bool = False,
                      field: str = "inputs") -> torch.Tensor:
        if rows.shape[0] > self.settings.max_request_rows:
            raise InvalidInput(
                f"{rows.shape[0]} rows in one request; the limit is {self.settings.max_request_rows}",
                limit=self.settings.max_request_rows,
            )
        try:
            return validate(rows, served.model.likelihood, served.model.n_dims, source=field,
                            allow_missing=allow_missing)
        except DataError as exc:
            details = {k: v for k, v in (("row", exc.row), ("column", exc.column)) if v is not None}
            raise InvalidInput(str(exc), field=field, **details) from None

    @staticmethod
    async def submit_consistent(batcher: Batcher, payload: Tensors, deadline: float) -> tuple[Tensors, int]:
        """Submit, and if a split request was computed partly by the old and partly by a newly swapped-in
        version, compute it again: an answer always comes from one version."""
        for _ in range(2):
            result, versions = await batcher.submit(payload, deadline)
            if len(set(versions)) == 1:
                return result, versions[0]
            log.info("request straddled a model swap; computing it again", extra={"model": batcher.model})
        raise ModelNotReady("the model version changed twice during this request; retry",
                            headers={"Retry-After": "1"})

    def check_conditioning(self, served: ServedModel, observed: torch.Tensor, masks: int, field: str) -> None:
        """Refuse up front (422) what the model cannot condition on, before anything is queued: too many
        distinct missing patterns (each costs a network pass per mask), or, for a fixed-order model, an
        observed set that is not a prefix of its ordering (conditional.check_observed)."""
        patterns = torch.unique(observed, dim=0)
        if len(patterns) > self.settings.max_missing_patterns:
            raise InvalidInput(f"{len(patterns)} distinct patterns of missing values in one request; the limit is "
                               f"{self.settings.max_missing_patterns}", field=field,
                               limit=self.settings.max_missing_patterns)
        try:
            check_observed(served.model, patterns, masks)
        except ConditioningError as exc:
            raise InvalidInput(str(exc), field=field) from None

    @staticmethod
    def resolve_masks(served: ServedModel, masks: int | None) -> int:
        try:
            return served.model.resolve_masks(masks)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="masks") from None

    # ---- operations ----------------------------------------------------------------------------------------
    async def log_prob(
        self, name: str, rows: np.ndarray, masks: int | None, per_dimension: bool, deadline: float
    ) -> LogProbResult:
        served = self.registry.get(name)
        K = self.resolve_masks(served, masks)
        if per_dimension and K > 1 and not served.shares_ordering(K):
            raise InvalidInput(
                f"per-dimension conditionals of a {K}-mask ensemble need masks that share one ordering; "
                "this model's masks use different orderings (ask for masks=1)", field="per_dimension")
        x = self.validate_rows(served, rows, allow_missing=True)
        missing = torch.isnan(x)
        marginal = bool(missing.any())
        if marginal:  # null/NaN entries are marginalised out: log p(x_observed)
            if per_dimension:
                raise InvalidInput("per_dimension cannot be combined with missing (null) values", field="per_dimension")
            self.check_conditioning(served, ~missing, K, field="inputs")
        key = (K, per_dimension, marginal)
        batcher = self._batcher(name, "log_prob", key, self._log_prob_compute(name, K, per_dimension, marginal))
        result, version = await self.submit_consistent(batcher, (x,), deadline)
        return LogProbResult(version, K, result[0].numpy(), result[1].numpy() if per_dimension else None)

    def _log_prob_compute(self, name: str, masks: int, per_dimension: bool, marginal: bool = False):
        def compute(payloads: list[Tensors]) -> tuple[list[Tensors], int]:
            served = self.registry.get(name)  # the version being served when the batch runs
            sizes = [rows_of(p) for p in payloads]
            x = torch.cat([p[0] for p in payloads]).to(served.device)
            with torch.inference_mode():
                if marginal:
                    outputs = (marginal_log_prob(served.model, x, masks=masks).double(),)
                elif per_dimension:
                    conditionals = served.model.conditional_log_probs(x, masks=masks).double()
                    outputs = (conditionals.sum(dim=1), conditionals)
                else:
                    outputs = (served.model.log_prob(x, masks=masks).double(),)
            split = [t.cpu().split(sizes) for t in outputs]
            return [tuple(s[i] for s in split) for i in range(len(sizes))], served.version

        return compute

    async def anomaly(self, name: str, rows: np.ndarray, fpr: float | None, deadline: float) -> AnomalyResult:
        served = self.registry.get(name)
        calibration = served.calibration
        if calibration is None:
            raise NotCalibrated(f"model {name!r} version {served.version} has no anomaly calibration; "
                                "run `made calibrate --model DIR --data FILE`")
        if fpr is not None and not 0 < fpr < 1:
            raise InvalidInput(f"fpr must be between 0 and 1, got {fpr}", field="fpr")
        if np.isnan(rows).any():
            raise InvalidInput("anomaly scores need complete rows: the calibration is of full rows, so a "
                               "marginal likelihood would not be comparable (use log-prob for missing values)",
                               field="inputs")
        result = await self.log_prob(name, rows, calibration.masks, False, deadline)
        now = self.registry.get(name)
        if now.version == result.version and now.calibration is not None:
            calibration = now.calibration  # the calibration of the version that computed the scores
        fpr = calibration.default_fpr if fpr is None else fpr
        threshold = calibration.threshold(fpr)
        score = -result.log_prob
        return AnomalyResult(result.version, calibration.masks, fpr, threshold, score,
                             calibration.p_value(score), score > threshold)

    @staticmethod
    def observed_row(observed, n_dims: int) -> np.ndarray:
        """(D,) float64 with NaN where a value is to be drawn, from {indices, values} or a row with nulls."""
        if isinstance(observed, list):
            if len(observed) != n_dims:
                raise InvalidInput(f"observed has {len(observed)} values; the model expects {n_dims} "
                                   "(null where a value is to be drawn)", field="observed")
            return np.array([np.nan if v is None else v for v in observed], dtype=np.float64)
        indices, values = observed.indices, observed.values
        if len(indices) != len(values):
            raise InvalidInput(f"observed has {len(indices)} indices but {len(values)} values", field="observed")
        if len(set(indices)) != len(indices):
            raise InvalidInput("observed.indices repeats a dimension", field="observed")
        if indices and max(indices) >= n_dims:
            raise InvalidInput(f"observed index {max(indices)} is out of range for {n_dims} dimensions",
                               field="observed")
        row = np.full(n_dims, np.nan)
        row[indices] = values
        if np.isnan(row[indices]).any():
            raise InvalidInput("observed.values must be numbers", field="observed")
        return row

    async def sample(
        self, name: str, n: int, seed: int | None, masks: int | None, deadline: float,
        observed=None,
    ) -> SampleResult:
        """n samples; with `observed` (D,) holding NaN where a value is to be drawn, n completions of it,
        drawn from p(x_missing | x_observed), the observed values kept exactly."""
        served = self.registry.get(name)
        if not 1 <= n <= self.settings.max_sample_n:
            raise InvalidInput(f"n must be between 1 and {self.settings.max_sample_n}, got {n}",
                               field="n", limit=self.settings.max_sample_n)
        K = self.resolve_masks(served, masks)
        seed = secrets.randbits(63) if seed is None else seed
        generator = make_generator(seed, served.device)
        # This request's own randomness, drawn now: merged with other requests, its samples stay the same.
        if observed is not None:
            observed = self.observed_row(observed, served.model.n_dims)
            if not np.isnan(observed).any():
                raise InvalidInput("observed gives every dimension: there is nothing left to sample",
                                   field="observed")
        if observed is None:
            payload = tuple(draw_randomness(served.model, n, K, generator))
            batcher = self._batcher(name, "sample", ("unconditional", K), self._sample_compute(name))
        else:
            given = self.validate_rows(served, observed[None, :], allow_missing=True, field="observed")[0]
            given = given.to(served.device)
            self.check_conditioning(served, ~torch.isnan(given)[None, :], K, field="observed")
            payload = (given.to(served.model.dtype).expand(n, -1), *draw_conditional_randomness(served.model, n, generator))
            batcher = self._batcher(name, "sample", ("conditional", K), self._conditional_compute(name, K))
        (samples,), version = await self.submit_consistent(batcher, payload, deadline)
        observed_mask = None if observed is None else ~np.isnan(observed)
        return SampleResult(version, K, seed, samples.numpy(), served, observed_mask)

    def _sample_compute(self, name: str):
        def compute(payloads: list[Tensors]) -> tuple[list[Tensors], int]:
            served = self.registry.get(name)
            sizes = [rows_of(p) for p in payloads]
            randomness = Randomness(*(torch.cat(ts) for ts in zip(*payloads, strict=True)))
            samples = sample_fast_from_randomness(served.model, randomness, self.settings.cuda_graphs).cpu()
            return [(s,) for s in samples.split(sizes)], served.version

        return compute

    def _conditional_compute(self, name: str, masks: int):
        def compute(payloads: list[Tensors]) -> tuple[list[Tensors], int]:
            served = self.registry.get(name)
            sizes = [rows_of(p) for p in payloads]
            given, mask_u, noise = (torch.cat(ts) for ts in zip(*payloads, strict=True))
            samples = sample_conditional_from_randomness(served.model, given, ConditionalRandomness(mask_u, noise),
                                                         masks=masks).cpu()
            return [(s,) for s in samples.split(sizes)], served.version

        return compute
