"""The reference sampler draws from exactly the distribution log_prob scores.

Bound used throughout: for n samples over S outcomes with probabilities p, the empirical total variation
has E[TV] = 1/2 sum E|p_hat - p| <= 1/2 sum sqrt(p (1-p) / n) <= 1/2 sqrt(S / n) (Cauchy-Schwarz).
Each test asserts TV below 3x that expectation bound; the seeds are fixed, so the tests are
deterministic, and a wrong sampler (a wrong mask, order or conditional) misses by far more.
"""

from __future__ import annotations

import math

import pytest
import torch

from service.made import build, make_generator, sample
from tests.helpers import all_binary, all_categorical, markov_chain, take_training_steps


def expected_tv_bound(n_outcomes: int, n_samples: int) -> float:
    return 0.5 * math.sqrt(n_outcomes / n_samples)


def empirical_tv(samples: torch.Tensor, categories: int, probabilities: torch.Tensor) -> float:
    """TV between the samples' frequencies and `probabilities`, listed in itertools.product order."""
    D = samples.shape[1]
    place = categories ** torch.arange(D - 1, -1, -1)  # first dimension most significant, as in product()
    index = (samples.long() * place).sum(dim=1)
    counts = torch.bincount(index, minlength=categories**D).double()
    return 0.5 * (counts / len(samples) - probabilities).abs().sum().item()


@pytest.mark.parametrize("masks", [1, 3])
def test_binary_samples_match_exact_probabilities(masks):
    D, n = 5, 200_000
    model = build(
        D,
        "bernoulli",
        hidden_sizes=(24, 24),
        n_masks=3,
        order="random",
        direct_connections=True,
        mask_conditioning=True,
    )
    take_training_steps(model, markov_chain(512, D, stay=0.85), steps=100)
    outcomes = all_binary(D)
    with torch.no_grad():
        exact = model.log_prob(outcomes, masks=masks).double().exp()
    samples = sample(model, n, masks=masks, generator=make_generator(1))
    tv = empirical_tv(samples, 2, exact)
    assert tv < 3 * expected_tv_bound(len(outcomes), n), tv
    # A sampler that ignored the ensemble (always mask 0) would be caught: its law differs from the mixture.
    if masks == 3:
        with torch.no_grad():
            mask0 = model.log_prob(outcomes, masks=1).double().exp()
        assert 0.5 * (mask0 - exact).abs().sum() > 3 * expected_tv_bound(len(outcomes), n)


def test_categorical_samples_match_exact_probabilities():
    D, K, n = 3, 3, 200_000
    model = build(D, "categorical", categories=K, hidden_sizes=(16,), n_masks=2, order="random")
    data = torch.randint(0, K, (256, D)).float()
    data[:, 2] = (data[:, 0] + 1) % K
    take_training_steps(model, data, steps=100)
    outcomes = all_categorical(D, K)
    with torch.no_grad():
        exact = model.log_prob(outcomes, masks=2).double().exp()
    samples = sample(model, n, masks=2, generator=make_generator(2))
    assert empirical_tv(samples, K, exact) < 3 * expected_tv_bound(len(outcomes), n)


@pytest.mark.parametrize("likelihood", ["gaussian", "mog"])
def test_real_valued_samples_match_the_density(likelihood):
    """Binned: exact bin probabilities come from integrating the density on a fine grid."""
    D, n, bins = 2, 200_000, 8
    z = torch.randn(600, D)
    z[:, 1] = torch.where(z[:, 0] > 0, 2.0, -2.0) + 0.5 * z[:, 1]  # bimodal given x_0
    data = z * torch.tensor([2.0, 1.0]) + torch.tensor([5.0, 0.0])
    model = build(
        D,
        likelihood,
        components=3,
        hidden_sizes=(24,),
        n_masks=2,
        order="random",
        shift=data.mean(0),
        scale=data.std(0),
    ).double()
    take_training_steps(model, data.double(), steps=80)
    lo, hi = data.min(0).values - 1, data.max(0).values + 1
    fine = 50  # grid cells per bin and axis
    axes = [
        torch.linspace(float(lo[i]), float(hi[i]), bins * fine + 1, dtype=torch.float64) for i in range(D)
    ]
    centres = [(a[1:] + a[:-1]) / 2 for a in axes]
    grid = torch.cartesian_prod(*centres)
    with torch.no_grad():
        mass = model.log_prob(grid, masks=2).exp() * math.prod(float(a[1] - a[0]) for a in axes)
    bin_probability = mass.reshape(bins, fine, bins, fine).sum(dim=(1, 3)).flatten()
    outside = 1 - bin_probability.sum()
    exact = torch.cat([bin_probability, outside.reshape(1)])

    samples = sample(model, n, masks=2, generator=make_generator(3))
    bin_index = [((samples[:, i] - lo[i]) / (hi[i] - lo[i]) * bins).floor().long() for i in range(D)]
    inside = (bin_index[0] >= 0) & (bin_index[0] < bins) & (bin_index[1] >= 0) & (bin_index[1] < bins)
    flat = torch.where(inside, bin_index[0] * bins + bin_index[1], torch.full_like(bin_index[0], bins * bins))
    empirical = torch.bincount(flat, minlength=bins * bins + 1).double() / n
    tv = 0.5 * (empirical - exact).abs().sum().item()
    assert tv < 3 * expected_tv_bound(len(exact), n), tv


def test_same_seed_same_samples_and_seeds_differ():
    model = build(
        8,
        "mog",
        components=2,
        hidden_sizes=(16,),
        n_masks=3,
        order="random",
        shift=torch.zeros(8),
        scale=torch.ones(8),
    )
    a = sample(model, 64, generator=make_generator(11))
    b = sample(model, 64, generator=make_generator(11))
    c = sample(model, 64, generator=make_generator(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_samples_lie_in_the_support_and_dropout_is_off_while_sampling():
    model = build(6, "categorical", categories=4, hidden_sizes=(16,), dropout=0.5)
    model.train()
    samples = sample(model, 200, generator=make_generator(0))
    assert model.training  # the sampler restores the mode it found
    assert bool(model.likelihood.in_support(samples).all())
    model.eval()
    assert torch.equal(sample(model, 200, generator=make_generator(0)), samples)


def test_rows_drawn_with_different_generators_can_be_sampled_in_one_batch():
    """What the server's batcher relies on: merging requests never changes a request's samples."""
    from service.made import draw_randomness, sample_from_randomness

    model = build(7, "categorical", categories=3, hidden_sizes=(16,), n_masks=3, order="random")
    alone = [sample(model, n, generator=make_generator(seed)) for n, seed in ((5, 1), (9, 2))]
    parts = [draw_randomness(model, n, generator=make_generator(seed)) for n, seed in ((5, 1), (9, 2))]
    merged = sample_from_randomness(model, type(parts[0])(*(torch.cat(t) for t in zip(*parts, strict=True))))
    assert torch.equal(merged, torch.cat(alone))
