"""Conditioning on observed dimensions: marginal likelihoods and conditional sampling (inpainting).

For a set O of observed dimensions, each ensemble mask k is re-ordered so that O comes first (both O and
the rest keep mask k's relative order) while its hidden degrees stay as they are. Under such an ordering
    log p_k(x_O)         = sum of the first |O| conditionals          (one network pass)
    p_k(x_U | x_O)       = the remaining conditionals, sampled position by position.
The K-mask ensemble is the uniform mixture of these K models, so
    log p(x_O)           = logsumexp_k log p_k(x_O) - log K
    p(x_U | x_O)         = sum_k w_k p_k(x_U | x_O),   w_k = p_k(x_O) / sum_j p_j(x_O)
and a conditional sample first picks mask k with probability w_k, then fills U under mask k: exact.

The answers are exact for the re-ordered ensemble. How close that is to the ensemble as trained depends
on training: an order-agnostic model has learnt to predict under many orderings, and one trained with a
fresh mask every step under any, but a model trained on a finite set of orderings meets new ones here, so
its marginals can disagree with its full-row scores (measured on the bundled MNIST model: the top half of a
blank image scores -35.6 nats alone against -16.7 for the whole image). A model trained with one fixed
ordering only answers when O is a prefix of that ordering: then nothing is re-ordered and the answer is
exact for the model as trained; any other O is refused with ConditioningError. So does a mixture of MADEs
(`made merge`), for a prefix of every member's ordering.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .density import Density, evaluating, mask_average
from .fast_sampling import build_plan, sample_with_plan
from .masks import degrees_from_ordering


class ConditioningError(ValueError):
    """The model cannot condition on this set of dimensions (a fixed-order model, a non-prefix set)."""


class ConditionalRandomness(NamedTuple):
    mask_u: torch.Tensor  # (n,) uniform: picks the mask from the posterior weights w_k
    noise: torch.Tensor  # (n, D, R) as in the unconditional sampler


def observed_first(model: Density, k: int, observed: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Degrees of component k re-ordered so the observed dimensions (bool (D,)) come first."""
    ordering = model.ordering(k)
    observed = observed.to(ordering.device)
    first = ordering[observed[ordering]]
    reordered = torch.cat([first, ordering[~observed[ordering]]])
    if not model.order_agnostic and not torch.equal(reordered, ordering):
        raise ConditioningError(
            "this model was trained with one fixed ordering, so it can only condition on a prefix of that "
            f"ordering (the first {len(first)} dimensions of {ordering[: min(len(first), 8)].tolist()}"
            f"{'...' if len(first) > 8 else ''}); these observed dimensions are not a prefix"
        )
    density, mask = model.component(k)
    return degrees_from_ordering(reordered), density.network.hidden_degrees(mask)


def check_observed(model: Density, observed: torch.Tensor, masks: int) -> None:
    """Raise ConditioningError unless the model can condition on every row's observed set ((B, D) bool),
    for the first `masks` masks: always for an order-agnostic model; for a fixed-order one only when each
    set is a prefix of the ordering. Checked for all rows at once, before any network pass."""
    if model.order_agnostic:
        return
    patterns = torch.unique(observed, dim=0)
    for k in range(masks):  # a prefix: along the ordering, an observed value never follows a missing one
        along = patterns[:, model.ordering(k).to(patterns.device)]
        bad = (along[:, 1:] & ~along[:, :-1]).any(dim=1)
        if bool(bad.any()):
            observed_first(model, k, patterns[int(bad.nonzero()[0])])  # raises, naming the prefix


def _patterns(observed: torch.Tensor):
    """Yields (pattern (D,), row indices) for each distinct observed pattern of (B, D) bool."""
    patterns, inverse = torch.unique(observed, dim=0, return_inverse=True)
    for i, pattern in enumerate(patterns):
        yield pattern, (inverse == i).nonzero(as_tuple=True)[0]


@torch.no_grad()
def _observed_log_probs(model: Density, x: torch.Tensor, pattern: torch.Tensor, K: int) -> torch.Tensor:
    """(K, B) log p_k(x_O) for rows sharing one observed pattern (D,); missing entries of x may hold
    anything (they come after the observed ones, so no observed conditional sees them)."""
    placeholder = model.shift if model.likelihood.real_valued else torch.zeros_like(model.shift)
    filled = torch.where(pattern, x, placeholder)
    out = []
    for k in range(K):
        density, _ = model.component(k)
        density.network.use_degrees(
            *observed_first(model, k, pattern)
        )  # until use_mask installs a stored one
        conditionals = density.conditionals_for_active_mask(filled)  # (B, D)
        out.append(conditionals[:, pattern].sum(dim=1))
    return torch.stack(out)


@torch.no_grad()
def marginal_log_prob(model: Density, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
    """(B,) log p(x_observed) in nats; NaN entries of x are missing and are marginalised, not imputed.
    A row with nothing missing gets exactly its log_prob; a row with nothing observed gets 0."""
    K = model.resolve_masks(masks)
    observed = ~torch.isnan(x)
    result = torch.empty(x.shape[0], device=x.device, dtype=model.dtype)
    with evaluating(model):
        for pattern, rows in _patterns(observed):
            per_mask = _observed_log_probs(model, x[rows], pattern, K)
            result[rows] = mask_average(per_mask)
    return result


def draw_conditional_randomness(
    model: Density, n: int, generator: torch.Generator | None = None
) -> ConditionalRandomness:
    mask_u = torch.rand(n, generator=generator, device=model.device, dtype=model.dtype)
    noise = model.likelihood.draw_noise(n, model.n_dims, generator, model.device).to(model.dtype)
    return ConditionalRandomness(mask_u, noise)


@torch.no_grad()
def sample_conditional_from_randomness(
    model: Density, x: torch.Tensor, randomness: ConditionalRandomness, masks: int | None = None
) -> torch.Tensor:
    """(n, D): each row of x with its NaN entries filled by a draw from p(x_missing | x_observed); the
    observed entries are returned exactly as given."""
    K = model.resolve_masks(masks)
    observed = ~torch.isnan(x)
    samples = x.clone()
    with evaluating(model):
        for pattern, rows in _patterns(observed):
            n_observed = int(pattern.sum())
            if n_observed == model.n_dims:
                continue  # nothing to fill
            x_rows = x[rows]
            log_w = _observed_log_probs(model, x_rows, pattern, K)  # (K, n_rows)
            weights = torch.softmax(log_w, dim=0).t()  # (n_rows, K): the posterior over masks
            chosen = (torch.cumsum(weights, dim=1) <= randomness.mask_u[rows, None]).sum(1).clamp(max=K - 1)
            z_rows = model.standardise(torch.nan_to_num(x_rows))
            for k in chosen.unique().tolist():
                members = (chosen == k).nonzero(as_tuple=True)[0]
                density, _ = model.component(k)
                plan = build_plan(density, *observed_first(model, k, pattern))
                given = z_rows[members][:, plan.ordering[:n_observed]]  # (m, |O|) by position
                z = sample_with_plan(density, plan, randomness.noise[rows[members]], observed=given)
                samples[rows[members]] = model.destandardise(z)
    samples[observed] = x[observed]  # exactly as given (no round trip through the standardisation)
    return samples


def sample_conditional(
    model: Density, x: torch.Tensor, masks: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    return sample_conditional_from_randomness(
        model, x, draw_conditional_randomness(model, len(x), generator), masks
    )
