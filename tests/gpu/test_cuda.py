"""The same maths on CUDA: skipped cleanly where there is no GPU."""

from __future__ import annotations

import pytest
import torch

from service.made import build, make_generator, merge, sample
from service.training import TrainConfig, train
from tests.helpers import all_binary, markov_chain

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_log_prob_on_cuda_matches_cpu():
    model = build(
        10, hidden_sizes=(64, 64), n_masks=3, order="random", direct_connections=True, mask_conditioning=True
    )
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
    result = train(
        model,
        markov_chain(500, 8),
        markov_chain(200, 8, seed=1),
        TrainConfig(epochs=3, batch_size=50, progress=False),
    )
    assert result.history[-1].valid_nll < result.history[0].valid_nll + 1e-6


def test_fast_sampler_on_cuda_draws_the_reference_samples():
    from service.made.fast_sampling import sample_fast

    model = (
        build(
            20,
            "bernoulli",
            hidden_sizes=(64, 64),
            n_masks=3,
            order="random",
            direct_connections=True,
            mask_conditioning=True,
        )
        .double()
        .to("cuda")
    )
    reference = sample(model, 256, generator=make_generator(4, "cuda"))
    fast = sample_fast(model, 256, generator=make_generator(4, "cuda"))
    assert fast.is_cuda and torch.equal(reference, fast)


def test_a_mixture_scores_and_samples_on_cuda_as_on_cpu():
    from service.made.fast_sampling import sample_fast

    model = merge(
        [
            build(9, "bernoulli", hidden_sizes=(40, 30), order="random", direct_connections=True, seed=k)
            for k in range(3)
        ]
    ).double()
    x = all_binary(9).double()
    with torch.no_grad():
        cpu = model.log_prob(x)
        gpu = model.to("cuda").log_prob(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-9)
    reference = sample(model, 256, generator=make_generator(2, "cuda"))
    assert torch.equal(sample_fast(model, 256, generator=make_generator(2, "cuda")), reference)


def test_conditional_sampling_and_marginals_on_cuda():
    from service.made.conditional import marginal_log_prob, sample_conditional

    model = build(8, "bernoulli", hidden_sizes=(32,), n_masks=4, order="random").double().to("cuda")
    query = torch.full((100, 8), float("nan"), dtype=torch.float64, device="cuda")
    query[:, :3] = 1.0
    samples = sample_conditional(model, query, generator=make_generator(0, "cuda"))
    assert torch.all(samples[:, :3] == 1.0) and torch.isfinite(samples).all()
    everything = all_binary(8).double().cuda()
    partial = everything.clone()
    partial[:, 5:] = float("nan")
    assert torch.isfinite(marginal_log_prob(model, partial)).all()


def _graphed_walks(model):
    from service.made.fast_sampling import _PLANS

    return [walk for _, plan in _PLANS.get(model, {}).values() for walk in plan.graphs.values()]


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "gaussian", "mog"])
def test_cuda_graph_sampler_draws_the_eager_and_reference_samples(likelihood):
    from service.made.fast_sampling import sample_fast

    torch.manual_seed(0)
    model = (
        build(
            20,
            likelihood,
            categories=3,
            components=2,
            hidden_sizes=(64, 64),
            n_masks=3,
            order="random",
            direct_connections=True,
            mask_conditioning=True,
        )
        .double()
        .to("cuda")
    )
    for n in (256, 5, 7, 1):  # smaller batches reuse graphs of the same power of two
        graphed = sample_fast(model, n, generator=make_generator(n, "cuda"))
        eager = sample_fast(model, n, generator=make_generator(n, "cuda"), cuda_graphs=False)
        reference = sample(model, n, generator=make_generator(n, "cuda"))
        if likelihood in ("bernoulli", "categorical"):
            assert torch.equal(graphed, eager) and torch.equal(graphed, reference)
        else:
            assert torch.allclose(graphed, eager, atol=1e-9) and torch.allclose(graphed, reference, atol=1e-9)
    walks = _graphed_walks(model)
    assert walks and all(walk.graph is not None for walk in walks)  # really captured, not the eager fallback
    # each mask's share of a batch gets the graph of the next power of two (rows are split among the masks)
    assert all(walk.rows & (walk.rows - 1) == 0 and walk.rows <= 256 for walk in walks)


def test_fast_sampler_walk_never_waits_for_the_host():
    """A host-device synchronisation inside the walk would break CUDA graph capture."""
    from service.made.fast_sampling import _plan, sample_with_plan

    model = (
        build(30, "bernoulli", hidden_sizes=(64, 64), direct_connections=True, n_masks=2, order="random")
        .to("cuda")
        .eval()
    )
    _, plan = _plan(model, 1)
    noise = torch.rand(16, 30, 1, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        samples = sample_with_plan(model, plan, noise)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert samples.shape == (16, 30)


def test_cuda_graph_made_during_inference_mode_warm_up_serves_later_calls():
    from service.made.fast_sampling import sample_fast

    model = build(12, "bernoulli", hidden_sizes=(32,), n_masks=2, order="random").double().to("cuda")
    with torch.inference_mode():  # how the registry warms a model up
        sample_fast(model, 1, masks=1, generator=make_generator(0, "cuda"))
    later = sample_fast(model, 1, masks=1, generator=make_generator(1, "cuda"))
    assert torch.equal(later, sample(model, 1, masks=1, generator=make_generator(1, "cuda")))
    assert all(walk.graph is not None for walk in _graphed_walks(model))


@pytest.mark.parametrize("shape", [None, (4, 5)], ids=["1-D", "4x5"])
def test_the_context_model_counts_and_scores_on_cuda_as_on_cpu(shape):
    """The default anomaly score's context model: the same counts from CUDA rows, the same code lengths on
    both of its context paths (a few rows: one gather; more: shifts)."""
    from service.calibration import ContextCounts

    rows = markov_chain(300, 20, seed=4)
    cpu, gpu = ContextCounts.fit(rows, shape), ContextCounts.fit(rows.cuda(), shape)
    assert cpu.ones == gpu.ones and cpu.seen == gpu.seen
    model_cpu, model_gpu = cpu.model(20, shape), gpu.model(20, shape, device="cuda")
    for n in (1, 300):
        x = rows[:n]
        assert torch.allclose(model_gpu.code_length(x.cuda()).cpu(), model_cpu.code_length(x), atol=1e-9)
