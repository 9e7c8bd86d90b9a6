"""The MADE network: the autoregressive property proven through gradients first, then what the network
does with its stored masks."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.made import build
from tests.helpers import assert_autoregressive, output_jacobian, take_training_steps

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


@pytest.mark.parametrize("direct", [False, True])
def test_dense_network_reaches_every_earlier_input(direct):
    D = 8
    model = build(
        D,
        "gaussian",
        hidden_sizes=(200, 200),
        activation="tanh",
        n_masks=3,
        order="random",
        direct_connections=direct,
        seed=1,
    ).double()
    for k in range(model.n_masks):
        degrees = model.network.input_degrees[k]
        jac = output_jacobian(model, k, torch.randn(3, D, dtype=torch.float64))
        for d, d_in in itertools.product(range(D), range(D)):
            if degrees[d_in] < degrees[d]:
                assert torch.all(jac[:, d, d_in] > 0), f"mask {k}: output {d} never sees earlier input {d_in}"


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
    same_hidden = all(torch.equal(a, b) for a, b in zip(fresh_hidden, net.hidden_degrees(0), strict=True))
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
