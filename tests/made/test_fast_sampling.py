"""The fast sampler gives the reference sampler's samples, sample for sample, under one seed."""

from __future__ import annotations

import pytest
import torch

from service.made import build, make_generator, sample
from service.made.fast_sampling import sample_fast
from tests.helpers import markov_chain, take_training_steps

ARCHITECTURES = [
    dict(hidden_sizes=(30,)),
    dict(hidden_sizes=(20, 20), direct_connections=True, mask_conditioning=True, n_masks=3, order="random"),
    dict(hidden_sizes=(), direct_connections=True),  # no hidden layer: the output layer reads the inputs
    dict(hidden_sizes=(16, 12, 8), direct_connections=True, activation="elu", n_masks=2, order="random"),
    dict(hidden_sizes=(24,), activation="tanh", n_masks=4, mask_resampling="connectivity"),
    # Narrow layers leave degrees without units: several positions are drawn after one event, and the
    # second layer has events where the first has none.
    dict(hidden_sizes=(3,)),
    dict(hidden_sizes=(4, 2), activation="sigmoid", n_masks=2, order="random"),
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
    model = build(
        64, "bernoulli", hidden_sizes=(128, 128), direct_connections=True, n_masks=2, order="random"
    )
    take_training_steps(model, markov_chain(256, 64), steps=30)
    reference = sample(model, 2000, generator=make_generator(5))
    fast = sample_fast(model, 2000, generator=make_generator(5))
    assert (reference != fast).float().mean() < 1e-3  # a flipped draw flips what follows it: still rare
    gauss = build(32, "mog", components=3, hidden_sizes=(64,), shift=torch.zeros(32), scale=torch.ones(32))
    assert torch.allclose(
        sample(gauss, 500, generator=make_generator(1)),
        sample_fast(gauss, 500, generator=make_generator(1)),
        atol=1e-3,
        rtol=1e-4,
    )


def test_cached_plans_follow_the_weights():
    model = randomised("bernoulli", hidden_sizes=(20,), n_masks=2, order="random")
    first = sample_fast(model, 200, generator=make_generator(0))
    take_training_steps(model, markov_chain(128, 9).double(), steps=20, lr=0.1)  # in-place updates
    after = sample_fast(model, 200, generator=make_generator(0))
    assert torch.equal(after, sample(model, 200, generator=make_generator(0)))
    assert not torch.equal(first, after)


# ---- the fixed-buffer walk that CUDA graphs replay (capture itself needs a GPU: tests/gpu) ----------------


def test_graph_batch_sizes_are_powers_of_two_that_fit():
    from service.made.fast_sampling import graph_rows

    assert [graph_rows(n) for n in (1, 2, 3, 4, 5, 63, 64, 65, 1000)] == [1, 2, 4, 4, 8, 64, 64, 128, 1024]


@pytest.mark.parametrize("likelihood", HEADS)
def test_fixed_buffer_walk_pads_and_slices_without_changing_a_sample(likelihood):
    from service.made.fast_sampling import GraphedWalk, _plan, sample_with_plan

    model = randomised(
        likelihood,
        hidden_sizes=(20, 20),
        direct_connections=True,
        mask_conditioning=True,
        n_masks=2,
        order="random",
    )
    _, plan = _plan(model, 1)
    noise = model.likelihood.draw_noise(8, 9, make_generator(2), "cpu").double()
    walk = GraphedWalk(model, plan, 8, noise.shape[2], capture=False)
    for n in (8, 3, 1, 5):  # the same buffers, reused by smaller batches padded to 8 rows
        eager = sample_with_plan(model, plan, noise[:n])
        fixed = walk(noise[:n])
        assert fixed.shape == (n, 9)
        assert torch.allclose(fixed, eager, atol=1e-12, rtol=0)
    assert walk(noise[:3]).data_ptr() != walk(noise[:3]).data_ptr()  # callers never hold the buffer itself
    with pytest.raises(ValueError, match="9 rows for a walk of 8"):
        walk(model.likelihood.draw_noise(9, 9, make_generator(2), "cpu").double())


def test_fixed_buffer_walk_made_in_inference_mode_works_outside_it():
    """The registry warms models up under inference_mode; the engine's later calls are not."""
    from service.made.fast_sampling import GraphedWalk, _plan

    model = randomised("bernoulli", hidden_sizes=(20,))
    noise = torch.rand(4, 9, 1, generator=make_generator(0), dtype=torch.float64)
    with torch.inference_mode():
        walk = GraphedWalk(model, _plan(model, 0)[1], 4, 1, capture=False)
        inside = walk(noise)
    outside = walk(noise)
    assert torch.equal(inside, outside)


def test_cached_fixed_buffer_walks_serve_every_batch_like_the_reference(monkeypatch):
    """The CUDA path's bookkeeping (rows split among masks, one cached walk per mask and power of two,
    reused by later batches), run on CPU with eager walks in place of captured graphs."""
    from service.made import fast_sampling

    monkeypatch.setattr(fast_sampling, "GRAPH_DEVICES", ("cuda", "cpu"))
    model = randomised("bernoulli", hidden_sizes=(20, 20), direct_connections=True, n_masks=3, order="random")
    for n in (64, 5, 7, 1, 64):
        fast = sample_fast(model, n, generator=make_generator(n))
        assert torch.equal(fast, sample(model, n, generator=make_generator(n)))
        assert torch.equal(fast, sample_fast(model, n, generator=make_generator(n), cuda_graphs=False))
    walks = [walk for _, plan in fast_sampling._PLANS[model].values() for walk in plan.graphs.values()]
    assert walks and all(walk.graph is None for walk in walks)  # no capture off CUDA
    assert all(walk.rows & (walk.rows - 1) == 0 for walk in walks)
    assert len(walks) <= 3 * 7  # at most one per mask and power of two up to 64


# ---- the CPU walks cached per batch size ------------------------------------------------------------------


def test_cached_walks_serve_every_batch_like_the_reference():
    """One cached walk per mask and batch size, reused by later batches (its buffers are overwritten),
    made in inference mode and used outside it, and no more of them kept than WALKS_PER_PLAN."""
    from service.made import fast_sampling

    model = randomised("categorical", hidden_sizes=(6, 5), n_masks=2, order="random")
    sizes = [5, 7, 5, 1, 7, 5] + list(range(10, 10 + fast_sampling.WALKS_PER_PLAN + 2))
    for i, n in enumerate(sizes):
        with torch.inference_mode(i % 2 == 0):
            fast = sample_fast(model, n, generator=make_generator(i))
        assert torch.equal(fast, sample(model, n, generator=make_generator(i)))
    for _, plan in fast_sampling._PLANS[model].values():
        assert 0 < len(plan.walks) <= fast_sampling.WALKS_PER_PLAN


def test_a_walk_in_use_is_not_shared_between_threads():
    """A second thread sampling the same batch size while a cached walk is busy gets buffers of its own."""
    import threading

    from service.made import fast_sampling

    model = randomised("bernoulli", hidden_sizes=(20,))
    n = 50
    expected = [sample(model, n, generator=make_generator(seed)) for seed in range(8)]
    sample_fast(model, n, generator=make_generator(0))  # cache the walk for n rows
    ((_, plan),) = fast_sampling._PLANS[model].values()
    cached = plan.walks[n]
    results = {}

    def sample_while_busy(seed: int) -> None:
        results[seed] = sample_fast(model, n, generator=make_generator(seed))

    with cached.lock:  # as if another thread were walking it
        thread = threading.Thread(target=sample_while_busy, args=(3,))
        thread.start()
        thread.join(timeout=30)
    assert torch.equal(results[3], expected[3])
    threads = [threading.Thread(target=sample_while_busy, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(torch.equal(results[seed], expected[seed]) for seed in range(8))


def test_cached_walks_do_not_keep_their_model_alive(monkeypatch):
    """Plans are cached by the model, weakly: a replaced model version must be freed with its walks (CPU
    walks and the fixed-buffer walks of the CUDA path alike)."""
    import gc
    import weakref

    from service.made import fast_sampling

    for graph_devices in (("cuda",), ("cuda", "cpu")):
        monkeypatch.setattr(fast_sampling, "GRAPH_DEVICES", graph_devices)
        model = randomised("bernoulli", hidden_sizes=(8,), n_masks=2, order="random")
        sample_fast(model, 16, generator=make_generator(0))
        (_, plan), *_ = fast_sampling._PLANS[model].values()
        assert plan.walks or plan.graphs  # something was cached
        alive = weakref.ref(model)
        del model, plan
        gc.collect()
        assert alive() is None
