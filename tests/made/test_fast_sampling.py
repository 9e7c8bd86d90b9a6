"""The fast sampler gives the reference sampler's samples, sample for sample, under one seed."""

from __future__ import annotations

import pytest
import torch

from service.made import build, make_generator, sample
from service.made.fast_sampling import sample_fast
from tests.conftest import markov_chain, take_training_steps

ARCHITECTURES = [
    dict(hidden_sizes=(30,)),
    dict(hidden_sizes=(20, 20), direct_connections=True, mask_conditioning=True, n_masks=3, order="random"),
    dict(hidden_sizes=(), direct_connections=True),  # no hidden layer: the output layer reads the inputs
    dict(hidden_sizes=(16, 12, 8), direct_connections=True, activation="elu", n_masks=2, order="random"),
    dict(hidden_sizes=(24,), activation="tanh", n_masks=4, mask_resampling="connectivity"),
]
HEADS = ["bernoulli", "categorical", "gaussian", "mog"]


def randomised(likelihood: str, **options):
    model = build(9, likelihood, categories=4, components=3, **options).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # every weight matters, conditioning terms included
    return model


@pytest.mark.parametrize("options", ARCHITECTURES, ids=lambda o: str(o.get("hidden_sizes")))
@pytest.mark.parametrize("likelihood", HEADS)
def test_fast_and_reference_agree_sample_for_sample(likelihood, options):
    model = randomised(likelihood, **options)
    reference = sample(model, 400, generator=make_generator(3))
    fast = sample_fast(model, 400, generator=make_generator(3))
    if likelihood in ("bernoulli", "categorical"):
        assert torch.equal(reference, fast)  # float64: no probability lies within rounding of its draw
    else:
        assert torch.allclose(reference, fast, atol=1e-9, rtol=1e-9)


def test_float32_differs_only_within_rounding():
    torch.manual_seed(0)
    model = build(64, "bernoulli", hidden_sizes=(128, 128), direct_connections=True, n_masks=2, order="random")
    take_training_steps(model, markov_chain(256, 64), steps=30)
    reference = sample(model, 2000, generator=make_generator(5))
    fast = sample_fast(model, 2000, generator=make_generator(5))
    assert (reference != fast).float().mean() < 1e-3  # a flipped draw flips what follows it: still rare
    gauss = build(32, "mog", components=3, hidden_sizes=(64,), shift=torch.zeros(32), scale=torch.ones(32))
    assert torch.allclose(sample(gauss, 500, generator=make_generator(1)),
                          sample_fast(gauss, 500, generator=make_generator(1)), atol=1e-3, rtol=1e-4)


def test_cached_plans_follow_the_weights():
    model = randomised("bernoulli", hidden_sizes=(20,), n_masks=2, order="random")
    first = sample_fast(model, 200, generator=make_generator(0))
    take_training_steps(model, markov_chain(128, 9).double(), steps=20, lr=0.1)  # in-place updates
    after = sample_fast(model, 200, generator=make_generator(0))
    assert torch.equal(after, sample(model, 200, generator=make_generator(0)))
    assert not torch.equal(first, after)
