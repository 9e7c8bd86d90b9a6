"""The same maths on CUDA: skipped cleanly where there is no GPU."""

from __future__ import annotations

import pytest
import torch

from service.made import build, make_generator, sample
from service.training import TrainConfig, train
from tests.conftest import all_binary, markov_chain

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_log_prob_on_cuda_matches_cpu():
    model = build(10, hidden_sizes=(64, 64), n_masks=3, order="random", direct_connections=True,
                  mask_conditioning=True)
    x = all_binary(10)
    with torch.no_grad():
        cpu = model.log_prob(x)
        gpu = model.to("cuda").log_prob(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)
    assert abs(torch.logsumexp(gpu.double(), 0).exp().item() - 1) < 1e-5


def test_sampling_on_cuda_is_seeded_and_in_support():
    model = build(12, "categorical", categories=3, hidden_sizes=(32,), n_masks=2).to("cuda")
    a = sample(model, 100, generator=make_generator(1, "cuda"))
    b = sample(model, 100, generator=make_generator(1, "cuda"))
    assert a.is_cuda and torch.equal(a, b) and bool(model.likelihood.in_support(a).all())


def test_training_on_cuda():
    model = build(8, hidden_sizes=(64,)).to("cuda")
    result = train(model, markov_chain(500, 8), markov_chain(200, 8, seed=1),
                   TrainConfig(epochs=3, batch_size=50, progress=False))
    assert result.history[-1].valid_nll < result.history[0].valid_nll + 1e-6
