"""Exact normalisation: exp(log p) sums (or integrates) to one, for single masks and ensembles,
after training steps rather than only at initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from service.made import build
from tests.helpers import all_binary, all_categorical, markov_chain, take_training_steps

BINARY_CONFIGS = [
    dict(hidden_sizes=(32,), n_masks=1),
    dict(hidden_sizes=(32, 32), n_masks=4, order="random", direct_connections=True, mask_conditioning=True),
    dict(hidden_sizes=(24, 24), n_masks=3, mask_resampling="connectivity", activation="tanh"),
    dict(hidden_sizes=(24,), n_masks=5, mask_resampling="order", dropout=0.2),
]


@pytest.mark.parametrize("options", BINARY_CONFIGS)
def test_binary_sums_to_one_by_enumeration(options):
    D = 10
    model = build(D, "bernoulli", **options)
    take_training_steps(model, markov_chain(256, D))
    everything = all_binary(D)  # (1024, D)
    with torch.no_grad():
        for K in sorted({1, model.n_masks}):
            total = torch.logsumexp(model.log_prob(everything, masks=K).double(), dim=0).exp().item()
            assert abs(total - 1.0) < 1e-5, f"K={K}: sum of p(x) over all 2^{D} vectors is {total}"


@pytest.mark.parametrize(
    "options",
    [
        dict(hidden_sizes=(20,)),
        dict(
            hidden_sizes=(20, 20), n_masks=3, order="random", direct_connections=True, mask_conditioning=True
        ),
    ],
)
def test_categorical_sums_to_one_by_enumeration(options):
    D, K = 4, 3
    model = build(D, "categorical", categories=K, **options)
    data = torch.randint(0, K, (200, D)).float()
    data[:, 1] = data[:, 0]  # some structure to learn
    take_training_steps(model, data)
    with torch.no_grad():
        for masks in sorted({1, model.n_masks}):
            log_p = model.log_prob(all_categorical(D, K), masks=masks).double()
            assert abs(torch.logsumexp(log_p, 0).exp().item() - 1.0) < 1e-5


def correlated_real_data(n: int, D: int) -> torch.Tensor:
    """Real data with a non-trivial location and scale, so the standardisation's Jacobian matters."""
    z = torch.randn(n, D)
    if D == 2:
        z[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]
    return z * torch.tensor([3.0, 0.5][:D]) + torch.tensor([10.0, -2.0][:D])


@pytest.mark.parametrize("likelihood", ["gaussian", "mog"])
@pytest.mark.parametrize("D", [1, 2])
def test_real_densities_integrate_to_one(likelihood, D):
    data = correlated_real_data(500, D)
    shift, scale = data.mean(0), data.std(0)
    model = build(
        D,
        likelihood,
        components=3,
        hidden_sizes=(16,),
        n_masks=2,
        order="random",
        direct_connections=True,
        shift=shift,
        scale=scale,
    ).double()
    take_training_steps(model, data.double(), steps=60)
    # Grid over +-10 standard deviations of each dimension, in the data's original units.
    axes = [
        torch.linspace(float(s - 10 * c), float(s + 10 * c), 801 if D == 2 else 20001, dtype=torch.float64)
        for s, c in zip(shift, scale, strict=True)
    ]
    grid = torch.cartesian_prod(*axes).reshape(-1, D)
    cell = math.prod(float(a[1] - a[0]) for a in axes)
    with torch.no_grad():
        for masks in (1, 2):
            density = model.log_prob(grid, masks=masks).exp()
            integral = density.sum().item() * cell
            assert abs(integral - 1.0) < 2e-3, f"{likelihood} D={D} K={masks}: integral {integral}"


def test_standardisation_jacobian_is_included():
    """Scaling the data by c must lower every log-density by D log c: it is a density in original units."""
    data = correlated_real_data(300, 2)
    model = build(2, "gaussian", hidden_sizes=(8,), shift=data.mean(0), scale=data.std(0))
    scaled = build(2, "gaussian", hidden_sizes=(8,), shift=5 * data.mean(0), scale=5 * data.std(0))
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = model.log_prob(data) - 2 * math.log(5)
        assert torch.allclose(scaled.log_prob(5 * data), expected, atol=1e-4)


def test_ensemble_averages_probabilities_not_logits():
    model = build(6, "bernoulli", hidden_sizes=(16,), n_masks=4, order="random")
    take_training_steps(model, markov_chain(128, 6))
    x = all_binary(6)
    with torch.no_grad():
        per_mask = torch.stack([model.log_prob_per_mask(x, 4)[k] for k in range(4)]).double()
        mean_probability = per_mask.exp().mean(dim=0).log()
        assert torch.allclose(model.log_prob(x, masks=4).double(), mean_probability, atol=1e-5)
        for k in range(4):  # and each member is the plain one-mask model
            assert torch.allclose(per_mask[k], model.conditionals_for_mask(x, k).sum(1).double())


def test_asking_for_more_masks_than_stored_is_refused():
    model = build(4, hidden_sizes=(8,), n_masks=3)
    with pytest.raises(ValueError, match="between 1 and 3"):
        model.log_prob(all_binary(4), masks=4)
    assert model.resolve_masks(None) == 3
    assert build(4, hidden_sizes=(8,), n_masks=3, eval_masks=2).resolve_masks(None) == 2


@pytest.mark.parametrize(
    "options",
    [dict(n_masks=1, order="random"), dict(n_masks=3, mask_resampling="connectivity", order="reversed")],
)
def test_per_dimension_conditionals_are_normalised_and_sum_to_log_prob(options):
    D = 5
    model = build(D, "bernoulli", hidden_sizes=(16, 16), **options)
    take_training_steps(model, markov_chain(128, D))
    x = all_binary(D)
    with torch.no_grad():
        conditionals = model.conditional_log_probs(x)  # (2^D, D), input order
        assert torch.allclose(conditionals.sum(1), model.log_prob(x), atol=1e-5)
        ordering = model.network.ordering(0).tolist()
        for position, d in enumerate(ordering):
            # p(x_d | x_<d) must not depend on x_d's successors and must sum to one over x_d.
            flipped = x.clone()
            flipped[:, d] = 1 - flipped[:, d]
            both = conditionals[:, d].exp() + model.conditional_log_probs(flipped)[:, d].exp()
            assert torch.allclose(both, torch.ones_like(both), atol=1e-5)
            for later in ordering[position + 1 :]:
                changed = x.clone()
                changed[:, later] = 1 - changed[:, later]
                assert torch.allclose(
                    model.conditional_log_probs(changed)[:, d], conditionals[:, d], atol=1e-6
                )


def test_per_dimension_conditionals_of_mixed_orderings_are_refused():
    model = build(4, hidden_sizes=(8,), n_masks=3, mask_resampling="order")
    with pytest.raises(ValueError, match="share one ordering"):
        model.conditional_log_probs(all_binary(4), masks=3)
    assert model.conditional_log_probs(all_binary(4), masks=1).shape == (16, 4)
