"""The autoregressive property, proven through gradients, and the paper's degree rules, checked by hand."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.made import build
from tests.conftest import take_training_steps
from service.made.masks import check_degrees, degrees_from_ordering, make_ordering


def output_jacobian(model, x: torch.Tensor) -> torch.Tensor:
    """(P, D, D) d params[p, d] / d x[d'] summed in absolute value over a batch of inputs."""
    def f(inp):
        return model.network(inp)  # (B, P, D)

    jac = torch.autograd.functional.jacobian(f, x)  # (B, P, D, B, D)
    return jac.abs().sum(dim=(0, 3))


CONFIGS = [
    dict(hidden_sizes=(30,)),
    dict(hidden_sizes=(30, 30)),
    dict(hidden_sizes=(25, 20, 15), direct_connections=True),
    dict(hidden_sizes=(30, 30), mask_conditioning=True),
    dict(hidden_sizes=(30, 30), direct_connections=True, mask_conditioning=True, activation="tanh"),
    dict(hidden_sizes=(), direct_connections=True),  # no hidden layer: direct connections alone
]


@pytest.mark.parametrize("likelihood", ["bernoulli", "mog"])
@pytest.mark.parametrize("options", CONFIGS)
def test_outputs_never_depend_on_their_own_or_later_inputs(options, likelihood):
    D = 7
    model = build(D, likelihood, components=2, n_masks=4, order="random", seed=3, **options).double()
    # Train first so that every weight, including the conditioning terms, is non-zero and non-trivial.
    x = torch.randn(16, D, dtype=torch.float64)
    if likelihood == "bernoulli":
        x = (x > 0).double()
    take_training_steps(model, x, steps=12)
    for k in range(model.n_masks):
        assert_autoregressive(model, k)


def assert_autoregressive(model, k: int) -> None:
    """Under stored mask k, no output's gradient reaches its own input or a later one (float64 model)."""
    model.network.use_mask(k)
    D, degrees = model.n_dims, model.network.input_degrees[k]
    jac = output_jacobian(model, torch.randn(5, D, dtype=torch.float64))  # (P, D, D)
    for d, d_in in itertools.product(range(D), range(D)):
        if degrees[d_in] >= degrees[d]:
            assert torch.all(jac[:, d, d_in] == 0), f"mask {k}: output {d} depends on input {d_in}"


@pytest.mark.parametrize("direct", [False, True])
def test_dense_network_reaches_every_earlier_input(direct):
    D = 8
    model = build(D, "gaussian", hidden_sizes=(200, 200), activation="tanh", n_masks=3, order="random",
                  direct_connections=direct, seed=1).double()
    for k in range(model.n_masks):
        model.network.use_mask(k)
        degrees = model.network.input_degrees[k]
        jac = output_jacobian(model, torch.randn(3, D, dtype=torch.float64))
        for d, d_in in itertools.product(range(D), range(D)):
            if degrees[d_in] < degrees[d]:
                assert torch.all(jac[:, d, d_in] > 0), f"mask {k}: output {d} never sees earlier input {d_in}"


def test_degrees_and_masks_follow_the_paper():
    D, hidden = 9, (40, 30, 20)
    model = build(D, "categorical", categories=3, hidden_sizes=hidden, n_masks=5, order="random",
                  direct_connections=True, seed=7)
    net = model.network
    for k in range(net.config.n_masks):
        net.use_mask(k)
        m_in = net.input_degrees[k].tolist()
        assert sorted(m_in) == list(range(1, D + 1))
        previous = m_in
        for layer, m in zip(net.hidden, net.hidden_degrees(k)):
            m = m.tolist()
            assert min(m) >= min(previous) and max(m) <= D - 1
            for i, j in itertools.product(range(len(m)), range(len(previous))):
                assert layer.mask[i, j] == float(m[i] >= previous[j])
            previous = m
        P = net.config.params_per_dim
        for out, j in itertools.product(range(P * D), range(len(previous))):
            assert net.output.mask[out, j] == float(m_in[out % D] > previous[j])
        for out, j in itertools.product(range(P * D), range(D)):
            assert net.direct.mask[out, j] == float(m_in[out % D] > m_in[j])


@pytest.mark.parametrize("kind,expected", [("natural", [0, 1, 2, 3]), ("reversed", [3, 2, 1, 0]),
                                           ([2, 0, 3, 1], [2, 0, 3, 1])])
def test_orderings(kind, expected):
    model = build(4, hidden_sizes=(10,), order=kind)
    assert model.network.ordering(0).tolist() == expected
    assert degrees_from_ordering(torch.tensor(expected)).tolist() == model.network.input_degrees[0].tolist()


def test_bad_orderings_are_refused():
    with pytest.raises(ValueError, match="permutation"):
        make_ordering([0, 0, 1], 3)
    with pytest.raises(ValueError, match="unknown ordering"):
        make_ordering("sideways", 3)


@pytest.mark.parametrize("resampling", ["order", "connectivity", "both"])
def test_mask_resampling_changes_only_what_it_names(resampling):
    model = build(10, hidden_sizes=(20, 20), n_masks=6, mask_resampling=resampling, order="natural", seed=2)
    net = model.network
    orderings = {tuple(net.ordering(k).tolist()) for k in range(6)}
    hidden = {tuple(torch.cat(net.hidden_degrees(k)).tolist()) for k in range(6)}
    assert net.ordering(0).tolist() == list(range(10))  # mask 0 keeps the configured ordering
    assert (len(orderings) > 1) == (resampling in ("order", "both"))
    assert (len(hidden) > 1) == (resampling in ("connectivity", "both"))
    fresh_inputs, fresh_hidden = net.draw_degrees(torch.Generator().manual_seed(0))
    assert torch.equal(fresh_inputs, net.input_degrees[0]) == (resampling == "connectivity")
    same_hidden = all(torch.equal(a, b) for a, b in zip(fresh_hidden, net.hidden_degrees(0)))
    assert same_hidden == (resampling == "order")


def test_masks_come_from_stored_degrees_not_from_a_generator():
    a = build(6, hidden_sizes=(12,), n_masks=3, order="random", seed=1)
    b = build(6, hidden_sizes=(12,), n_masks=3, order="random", seed=2)
    assert not torch.equal(a.network.input_degrees, b.network.input_degrees)
    b.load_state_dict(a.state_dict())
    for k in range(3):
        a.network.use_mask(k)
        b.network.use_mask(k)
        assert torch.equal(a.network.hidden[0].mask, b.network.hidden[0].mask)
        assert torch.equal(a.network.output.mask, b.network.output.mask)


def test_check_degrees_rejects_invalid_sets():
    check_degrees(torch.tensor([2, 1, 3]), [torch.tensor([1, 2, 2])], 3)
    with pytest.raises(ValueError, match="permutation"):
        check_degrees(torch.tensor([1, 1, 3]), [torch.tensor([1, 2])], 3)
    with pytest.raises(ValueError, match="outside"):
        check_degrees(torch.tensor([1, 2, 3]), [torch.tensor([0, 3])], 3)
