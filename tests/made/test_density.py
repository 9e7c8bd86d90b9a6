"""Each dimension's part of an anomaly score (Density.log_prob_and_feature_scores): the ensemble's own
conditionals when its masks share one ordering, else the mean over masks of each mask's conditionals; and
log p(x) from the same pass."""

from __future__ import annotations

import math

import torch

from service.made import build
from service.made.density import mask_average
from service.made.mixture import MADEMixture
from tests.helpers import all_binary, markov_chain, take_training_steps


def test_with_one_ordering_the_parts_are_the_ensembles_conditionals_and_sum_to_the_score():
    model = build(5, hidden_sizes=(16,), n_masks=3, mask_resampling="connectivity", order="random")
    take_training_steps(model, markov_chain(128, 5))
    x = all_binary(5)
    with torch.no_grad():
        log_prob, parts = model.log_prob_and_feature_scores(x, masks=3)
        assert torch.allclose(log_prob, model.log_prob(x, masks=3))
        assert torch.allclose(parts, -model.conditional_log_probs(x, masks=3))
        assert torch.allclose(parts.sum(1), -model.log_prob(x, masks=3), atol=1e-5)


def test_with_mixed_orderings_each_part_is_the_mean_over_masks():
    model = build(5, hidden_sizes=(16,), n_masks=4, mask_resampling="order")
    take_training_steps(model, markov_chain(128, 5))
    x = all_binary(5)
    with torch.no_grad():
        log_prob, parts = model.log_prob_and_feature_scores(x, masks=4)
        assert torch.allclose(log_prob, model.log_prob(x, masks=4))
        per_mask = torch.stack([model.conditionals_for_mask(x, k) for k in range(4)])  # (K, B, D)
        assert torch.allclose(parts, -per_mask.mean(0))
        # they sum to the masks' mean NLL, which is never below the ensemble's (Jensen)
        assert torch.allclose(parts.sum(1), -model.log_prob_per_mask(x, 4).mean(0), atol=1e-5)
        assert torch.all(parts.sum(1) >= -model.log_prob(x, masks=4) - 1e-5)
        # one mask: its own conditionals
        _, one = model.log_prob_and_feature_scores(x, masks=1)
        assert torch.allclose(one, -model.conditionals_for_mask(x, 0))


def test_one_mask_log_prob_is_the_ensemble_formula_exactly():
    """log p with K = 1 skips the logsumexp (and - log 1): the same numbers to the last bit, whichever
    mask the model had installed before, for a model that stores several masks and for a mixture."""
    model = build(5, hidden_sizes=(16,), n_masks=3, mask_resampling="both", order="random")
    take_training_steps(model, markov_chain(128, 5))
    mixture = MADEMixture([build(5, hidden_sizes=(8,), seed=seed) for seed in (1, 2)])
    x = all_binary(5)
    with torch.no_grad():
        for density in (model, mixture):
            per_mask = density.log_prob_per_mask(x, 1)  # (1, B)
            expected = torch.logsumexp(per_mask, dim=0) - math.log(1)
            density.conditionals_for_mask(x, density.n_masks - 1)  # another mask installed first
            assert torch.equal(density.log_prob(x, masks=1), expected)
            if density is model:
                model.config.eval_masks = 1  # masks=None: the model's default, here one
                assert torch.equal(density.log_prob(x), expected)


def test_mask_average_averages_probabilities_not_logits():
    per_component = torch.tensor([[-1.0, -50.0], [-3.0, -2.0], [-8.0, -2.5]], dtype=torch.float64)  # (K, B)
    averaged = mask_average(per_component)
    expected = torch.log(per_component.exp().mean(dim=0))  # log (1/K sum_k p_k), computed directly
    assert torch.allclose(averaged, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(averaged, per_component.mean(dim=0))  # what averaging logits would give
    one = per_component[:1]
    assert torch.equal(mask_average(one), one[0])  # one component: itself, bit for bit
    assert torch.equal(mask_average(torch.full((2, 3), -math.inf)), torch.full((3,), -math.inf))
