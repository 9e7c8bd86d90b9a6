"""A mixture of MADEs (`made merge`): each component an independent member, the whole an exact, normalised
uniform mixture of the members, sampled exactly by both samplers."""

from __future__ import annotations

import math

import pytest
import torch

from service.made import build, make_generator, sample
from service.made.conditional import ConditioningError, marginal_log_prob, sample_conditional
from service.made.fast_sampling import sample_fast
from service.made.mixture import MergeError, merge
from tests.helpers import (
    all_binary,
    all_categorical,
    assert_autoregressive,
    markov_chain,
    take_training_steps,
)


def trained_member(seed: int, likelihood: str = "bernoulli", D: int = 7, hidden=(20, 16), **options):
    torch.manual_seed(seed)
    member = build(
        D,
        likelihood,
        categories=3,
        hidden_sizes=hidden,
        order="random",
        direct_connections=True,
        seed=seed,
        **options,
    )
    x = markov_chain(64, D, seed=seed) if likelihood == "bernoulli" else torch.randint(0, 3, (64, D)).float()
    return take_training_steps(member, x, steps=15)


def random_mixture(D: int, likelihood: str = "bernoulli", hidden=(18, 12), K: int = 3, **options):
    """K untrained members with their own random orderings, merged."""
    return merge(
        [
            build(
                D,
                likelihood,
                categories=3,
                components=2,
                hidden_sizes=hidden,
                order="random",
                direct_connections=True,
                seed=k,
                **options,
            )
            for k in range(K)
        ]
    )


@pytest.mark.parametrize("hidden", [(21, 15), (12,), ()])
def test_each_component_is_autoregressive_and_uses_only_its_own_weights(hidden):
    D, K = 6, 3
    model = random_mixture(D, "mog", hidden=hidden, K=K).double()
    take_training_steps(model, torch.randn(32, D, dtype=torch.float64), steps=10)
    for k in range(K):
        assert_autoregressive(model, k)
        # Component k's outputs get no gradient from any other member's weights, and from all of its own.
        model.zero_grad()
        model.conditionals_for_mask(torch.randn(8, D, dtype=torch.float64), k).sum().backward()
        for j, member in enumerate(model.members):
            grads = [p.grad for p in member.parameters()]
            if j == k:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical"])
def test_a_mixture_sums_to_one_by_enumeration(likelihood):
    D = 6
    model = random_mixture(D, likelihood)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
        x = all_binary(D) if likelihood == "bernoulli" else all_categorical(D, 3)
        for masks in (1, 2, 3):
            total = torch.logsumexp(model.log_prob(x, masks=masks).double(), dim=0)
            assert abs(total.item()) < 1e-5


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical"])
def test_merge_computes_each_member_exactly_and_averages_probabilities(likelihood):
    members = [
        trained_member(s, likelihood, hidden=h) for s, h in ((1, (20, 16)), (2, (9, 30)), (3, (14, 5)))
    ]
    mixture = merge(members)
    assert mixture.config.hidden_sizes == [43, 51] and mixture.n_masks == 3 and mixture.config.mixture
    x = markov_chain(50, 7) if likelihood == "bernoulli" else torch.randint(0, 3, (50, 7)).float()
    with torch.no_grad():
        each = torch.stack([m.log_prob(x) for m in members])  # (K, B)
        assert torch.allclose(mixture.log_prob_per_mask(x), each, atol=1e-5)
        assert torch.allclose(mixture.log_prob(x), torch.logsumexp(each, 0) - math.log(3), atol=1e-5)
        for k, member in enumerate(members):
            assert torch.equal(mixture.ordering(k), member.ordering(0))


def test_merge_refuses_models_that_cannot_be_mixed():
    one = trained_member(1)
    with pytest.raises(MergeError, match="at least two"):
        merge([one])
    with pytest.raises(MergeError, match="n_dims"):
        merge([one, trained_member(2, D=8)])
    with pytest.raises(MergeError, match="likelihood"):
        merge([one, trained_member(2, "categorical")])
    with pytest.raises(MergeError, match="only one-mask models"):
        merge([one, build(7, "bernoulli", hidden_sizes=(20, 16), n_masks=2, direct_connections=True)])
    with pytest.raises(MergeError, match="number of hidden layers"):
        merge([one, trained_member(2, hidden=(20,))])


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical"])
def test_both_samplers_draw_the_same_exact_mixture_samples(likelihood):
    D = 5
    mixture = merge([trained_member(s, likelihood, D=D, hidden=(12, 10)) for s in (1, 2)]).double()
    reference = sample(mixture, 20000, generator=make_generator(7))
    assert torch.equal(sample_fast(mixture, 20000, generator=make_generator(7)), reference)
    # The samples follow the mixture's exact distribution (total variation over all 2^5 or 3^5 rows).
    base = 2 if likelihood == "bernoulli" else 3
    support = all_binary(D) if likelihood == "bernoulli" else all_categorical(D, base)

    def code(rows: torch.Tensor) -> torch.Tensor:  # each row as one integer in [0, base^D)
        return (rows.long() * base ** torch.arange(D - 1, -1, -1)).sum(1)

    with torch.no_grad():
        exact = mixture.log_prob(support.double()).exp()
    counts = torch.bincount(code(reference), minlength=base**D).double()
    empirical = counts[code(support)] / len(reference)
    assert 0.5 * (empirical - exact).abs().sum() < 0.08


def test_a_mixture_conditions_only_on_a_prefix_of_every_member_ordering():
    mixture = merge([trained_member(s, D=6, hidden=(12,)) for s in (1, 2)])
    x = markov_chain(4, 6)
    with torch.no_grad():
        assert torch.allclose(marginal_log_prob(mixture, x), mixture.log_prob(x), atol=1e-6)
    first = mixture.ordering(0)[0]
    assert first != mixture.ordering(1)[0]  # so {first} is a prefix of one member's ordering only
    partial = x.clone()
    partial[:, [d for d in range(6) if d != first]] = float("nan")
    with pytest.raises(ConditioningError, match="prefix"):
        sample_conditional(mixture, partial)


def test_merge_copies_its_members_and_leaves_them_as_they_were():
    members = [trained_member(s, D=6, hidden=(12,)).double() for s in (1, 2)]
    mixture = merge(members)
    assert mixture.dtype == torch.float32 and all(m.dtype == torch.float64 for m in members)
    with torch.no_grad():
        mixture.members[0].network.output.bias.add_(1.0)
    assert not torch.equal(mixture.members[0].network.output.bias.double(), members[0].network.output.bias)


def test_gradients_flow_through_every_member_of_a_freshly_loaded_mixture():
    mixture = merge([trained_member(s, D=6, hidden=(12,)) for s in (1, 2)])
    loss = -mixture.log_prob(markov_chain(16, 6)).mean()
    loss.backward()
    assert all(p.grad is not None for p in mixture.parameters())
