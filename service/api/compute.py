"""The model calls behind the batchers: each compute function is bound to one ServedModel snapshot, runs in
the compute thread, and turns one batch of payloads into one result per payload."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..made import Randomness
from ..made.conditional import ConditionalRandomness, marginal_log_prob, sample_conditional_from_randomness
from ..made.fast_sampling import sample_fast_from_randomness
from . import validation
from .batcher import Arrays, Compute, Tensors, rows_of
from .errors import InvalidInput
from .registry import ServedModel


def concat(payloads: Sequence[Tensors]) -> tuple[torch.Tensor, ...]:
    """The payloads' tensors joined along the rows, one tensor per position."""
    return tuple(torch.cat(ts) for ts in zip(*payloads, strict=True))


def _row_results(served: ServedModel, payloads: Sequence[Tensors], results) -> list[Arrays]:
    """The payloads' rows (x,) joined and scored at once by `results(x)`, a tuple of float tensors with one
    row per input row, split back into one float64 tuple per payload."""
    return _scored(served, torch.cat([p[0] for p in payloads]), [rows_of(p) for p in payloads], results)


def _scored(served: ServedModel, x: torch.Tensor, sizes: list[int], results) -> list[Arrays]:
    """`results(x)` for the rows x of several requests (`sizes` rows each): one tuple of float64 numpy
    arrays per request, slices of one array per output (what the routes answer with, and cheaper to slice
    than tensors, in the compute thread, and to hand over, on the event loop)."""
    with torch.inference_mode():
        outputs = [_float64(t) for t in results(x if x.device == served.device else x.to(served.device))]
    bounds = [0, *itertools.accumulate(sizes)]
    return [tuple(o[start:stop] for o in outputs) for start, stop in itertools.pairwise(bounds)]


def _float64(t: torch.Tensor) -> np.ndarray:
    """A result tensor as a float64 numpy array, in as few torch calls as it can be: every torch call gives
    up the GIL and must win it back from the event loop, which costs more than a small call does."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return t.numpy().astype(np.float64, copy=False)  # float32 -> float64 is exact, as .double() is
    return t.double().cpu().numpy()


def log_prob(served: ServedModel, masks: int, per_dimension: bool, marginal: bool) -> Compute:
    """Payload (x,): float64 results (log p(x),), or (log p(x), (N, D) conditionals) with per_dimension;
    with `marginal`, NaN entries of x are marginalised out. Without, x is the request's rows as sent (an
    array, its shape checked), whose values are checked here (values_checked_first), or rows checked
    before they were queued (a request split over several batches)."""
    model = served.model

    def results(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if marginal:
            return (marginal_log_prob(model, x, masks=masks),)
        if per_dimension:
            conditionals = model.conditional_log_probs(x, masks=masks).double()  # summed in float64
            return conditionals.sum(dim=1), conditionals
        return (model.log_prob(x, masks=masks),)

    if marginal:
        return lambda payloads: _row_results(served, payloads, results)
    return values_checked_first(served, results)


def values_checked_first(served: ServedModel, results) -> Compute:
    """The Compute of `results` (as _scored takes it) for payloads (rows,) as validation.batch_rows takes
    them: the batch's values are checked first, and a request whose rows are refused gets its InvalidInput
    while the rest of the batch is computed."""

    def run(payloads: Sequence[Tensors]) -> list[Arrays | InvalidInput]:
        parts = [p[0] for p in payloads]
        checked = validation.batch_rows(served, parts)
        if isinstance(checked, torch.Tensor):  # every request's rows are valid, joined already
            return _scored(served, checked, [len(part) for part in parts], results)
        valid = [x for x in checked if not isinstance(x, InvalidInput)]
        scored = iter(_scored(served, torch.cat(valid), [len(x) for x in valid], results) if valid else ())
        return [x if isinstance(x, InvalidInput) else next(scored) for x in checked]

    return run


def feature_scores(served: ServedModel, masks: int) -> Compute:
    """Payload (x,): float64 results (log p(x), (N, D) per-dimension anomaly scores), from one pass."""
    return lambda payloads: _row_results(
        served, payloads, lambda x: served.model.log_prob_and_feature_scores(x, masks)
    )


def context_scores(served: ServedModel, masks: int, per_feature: bool) -> Compute:
    """Payload (x,): float64 results (log p(x), L(x)), L the code length under the calibration's context model
    (the parts of the nll_or_context score); with per_feature also each dimension's part of each, (N, D)
    -log p(x_d | x_<d) (as feature_scores) and (N, D) -log q(x_d | c_d(x))."""
    model, context = served.model, served.context_model

    def results(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if per_feature:
            log_prob, nll_parts = model.log_prob_and_feature_scores(x, masks)
            code_parts = -context.conditional_log_probs(x)
            return log_prob, code_parts.sum(dim=1), nll_parts, code_parts
        return model.log_prob(x, masks=masks), context.code_length(x)

    return lambda payloads: _row_results(served, payloads, results)


@contextmanager
def walk_threads(device: torch.device) -> Iterator[None]:
    """The samplers walk the dimensions in hundreds of small steps. On a CPU, splitting each step over
    torch's intra-op threads costs more than it saves: 64 samples on a compute thread, interleaved on a
    2-core machine (2026-11-30, the walk of ba247aa), took a median 68 ms on one thread against 123 ms on
    two for the bundled model, and 9.9 against 15.7 ms for a 784-500 MADE. The setting is the calling
    thread's (OpenMP's), and the compute thread's own default comes back for the next batch."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sample(served: ServedModel, cuda_graphs: bool) -> Compute:
    """Payload: one request's Randomness (drawn when it arrived, so merging does not change its samples)."""

    def compute(payloads: Sequence[Tensors]) -> list[Tensors]:
        sizes = [rows_of(p) for p in payloads]
        randomness = Randomness(*concat(payloads))
        with walk_threads(served.device):
            samples = sample_fast_from_randomness(served.model, randomness, cuda_graphs).cpu()
        return [(s,) for s in samples.split(sizes)]

    return compute


def conditional_sample(served: ServedModel, masks: int) -> Compute:
    """Payload (given (n, D) with NaN where a value is drawn, mask_u, noise): completions of `given`."""

    def compute(payloads: Sequence[Tensors]) -> list[Tensors]:
        sizes = [rows_of(p) for p in payloads]
        given, mask_u, noise = concat(payloads)
        randomness = ConditionalRandomness(mask_u, noise)
        with walk_threads(served.device):
            samples = sample_conditional_from_randomness(served.model, given, randomness, masks=masks).cpu()
        return [(s,) for s in samples.split(sizes)]

    return compute
