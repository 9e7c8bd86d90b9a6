"""Marginal likelihoods and conditional samples against exact enumeration on small binary models."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from service.made import build, make_generator
from service.made.conditional import (
    ConditioningError,
    draw_conditional_randomness,
    marginal_log_prob,
    observed_first,
    sample_conditional,
    sample_conditional_from_randomness,
)
from tests.helpers import all_binary, markov_chain, take_training_steps

D = 6
SUBSETS = [[0, 2, 3, 5], [4], [1, 2, 3, 4, 5], [5, 0]]


@pytest.fixture(scope="module")
def agnostic():
    torch.manual_seed(0)
    model = build(
        D,
        "bernoulli",
        hidden_sizes=(32, 32),
        n_masks=3,
        order="random",
        direct_connections=True,
        mask_conditioning=True,
    ).double()
    return take_training_steps(model, markov_chain(400, D, stay=0.8).double(), steps=150)


@pytest.fixture(scope="module")
def narrow():
    """Two hidden units for 6 dimensions and no direct connections: most positions share an event with
    the one before, so the observed prefix often ends inside a block of positions drawn together."""
    torch.manual_seed(1)
    model = build(D, "bernoulli", hidden_sizes=(2,), n_masks=3, order="random").double()
    return take_training_steps(model, markov_chain(400, D, stay=0.8).double(), steps=150)


def reordered_joint(model, observed: torch.Tensor, K: int) -> torch.Tensor:
    """log p of every binary vector under the mixture of the K observed-first masks, by brute force."""
    everything = all_binary(D).double()
    per_mask = []
    for k in range(K):
        model.network.use_degrees(*observed_first(model, k, observed))
        per_mask.append(model.conditionals_for_active_mask(everything).sum(1))
    return torch.logsumexp(torch.stack(per_mask), 0) - math.log(K)


def as_mask(indices) -> torch.Tensor:
    observed = torch.zeros(D, dtype=torch.bool)
    observed[indices] = True
    return observed


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("indices", SUBSETS)
def test_marginal_equals_the_sum_over_missing_dimensions(agnostic, indices, K):
    observed = as_mask(indices)
    everything = all_binary(D).double()
    with torch.no_grad():
        joint = reordered_joint(agnostic, observed, K)
        groups = defaultdict(list)
        for row, log_p in zip(everything, joint, strict=True):
            groups[tuple(row[observed].tolist())].append(log_p)
        partial = everything.clone()
        partial[:, ~observed] = float("nan")
        marginal = marginal_log_prob(agnostic, partial, masks=K)
    for row, value in zip(everything, marginal, strict=True):
        exact = torch.logsumexp(torch.stack(groups[tuple(row[observed].tolist())]), 0)
        assert abs(value.item() - exact.item()) < 1e-5


def test_prefix_marginals_of_a_fixed_order_model_are_its_own(agnostic):
    model = build(D, "bernoulli", hidden_sizes=(24,), order="reversed").double()
    take_training_steps(model, markov_chain(200, D).double(), steps=60)
    everything = all_binary(D).double()
    with torch.no_grad():
        joint = model.log_prob(everything)
        partial = everything.clone()
        partial[:, [0, 1, 2]] = float("nan")  # reversed ordering: 5, 4, 3 come first
        marginal = marginal_log_prob(model, partial)
    for row, value in zip(everything, marginal, strict=True):
        same = (everything[:, 3:] == row[3:]).all(1)
        assert abs(value.item() - torch.logsumexp(joint[same], 0).item()) < 1e-5
    with pytest.raises(ConditioningError, match="prefix"):
        bad = everything[:2].clone()
        bad[:, 5] = float("nan")
        marginal_log_prob(model, bad)


def test_nothing_missing_is_log_prob_and_nothing_observed_is_zero(agnostic):
    x = all_binary(D).double()
    with torch.no_grad():
        assert torch.allclose(marginal_log_prob(agnostic, x), agnostic.log_prob(x), atol=1e-12)
        assert torch.all(marginal_log_prob(agnostic, torch.full((3, D), float("nan"))) == 0)


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("indices", SUBSETS)
def test_conditional_samples_match_the_exact_conditional(agnostic, indices, K):
    """TV between 40,000 samples and the exact conditional (by enumeration) below 3x the expectation
    bound 1/2 sqrt(S/n) of the sampler test in test_sampling.py."""
    assert_conditional_samples_match(agnostic, indices, K)


@pytest.mark.parametrize("indices", SUBSETS)
def test_conditional_samples_of_a_narrow_model_match_the_exact_conditional(narrow, indices):
    assert_conditional_samples_match(narrow, indices, 3)


def assert_conditional_samples_match(model, indices, K):
    observed = as_mask(indices)
    everything = all_binary(D).double()
    given = torch.tensor([1.0 if i % 2 == 0 else 0.0 for i in range(D)], dtype=torch.float64)
    consistent = (everything[:, observed] == given[observed]).all(1)
    with torch.no_grad():
        joint = reordered_joint(model, observed, K)
    exact = torch.softmax(joint[consistent], 0)
    n = 40_000
    query = given.expand(n, -1).clone()
    query[:, ~observed] = float("nan")
    samples = sample_conditional(model, query, masks=K, generator=make_generator(7))
    assert torch.all(samples[:, observed] == given[observed])  # observed values kept exactly
    index = {tuple(r.tolist()): i for i, r in enumerate(everything[consistent])}
    counts = torch.zeros(len(exact), dtype=torch.float64)
    for row, count in zip(*torch.unique(samples, dim=0, return_counts=True), strict=True):
        counts[index[tuple(row.tolist())]] += count
    tv = 0.5 * (counts / n - exact).abs().sum().item()
    assert tv < 3 * 0.5 * math.sqrt(len(exact) / n), tv


def test_real_valued_conditioning_keeps_observed_values_exactly():
    data = torch.randn(300, 4) * torch.tensor([3.0, 1.0, 0.1, 7.0]) + 11
    model = build(
        4,
        "mog",
        components=2,
        hidden_sizes=(16,),
        n_masks=2,
        order="random",
        shift=data.mean(0),
        scale=data.std(0),
    )
    query = data[:50].clone()
    query[:, 1] = float("nan")
    samples = sample_conditional(model, query, generator=make_generator(0))
    assert torch.equal(samples[:, [0, 2, 3]], data[:50, [0, 2, 3]])
    assert torch.isfinite(samples).all()


def test_merged_rows_keep_their_own_randomness(agnostic):
    query = torch.full((7, D), float("nan"), dtype=torch.float64)
    query[:3, 0] = 1.0
    query[3:, [2, 3]] = 0.0
    parts = [draw_conditional_randomness(agnostic, n, make_generator(s)) for n, s in ((3, 1), (4, 2))]
    alone = [
        sample_conditional_from_randomness(agnostic, q, r)
        for q, r in zip((query[:3], query[3:]), parts, strict=True)
    ]
    merged_randomness = type(parts[0])(*(torch.cat(t) for t in zip(*parts, strict=True)))
    merged = sample_conditional_from_randomness(agnostic, query, merged_randomness)
    assert torch.equal(merged, torch.cat(alone))


def test_check_observed_accepts_prefixes_and_names_the_first_bad_set():
    from service.made.conditional import check_observed

    fixed = build(D, "bernoulli", hidden_sizes=(8,), order="reversed")  # ordering 5, 4, 3, 2, 1, 0
    prefixes = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1] * D], dtype=torch.bool)
    check_observed(fixed, prefixes, masks=1)
    with pytest.raises(ConditioningError, match="not a prefix"):
        check_observed(fixed, torch.cat([prefixes, as_mask([0]).view(1, D)]), masks=1)
    agnostic_model = build(D, "bernoulli", hidden_sizes=(8,), n_masks=2, order="random")
    check_observed(agnostic_model, as_mask([0]).view(1, D), masks=2)  # any set, for an order-agnostic model
