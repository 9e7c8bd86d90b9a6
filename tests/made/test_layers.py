"""The masked layer's inference cache of W * M always follows the weights and the mask."""

from __future__ import annotations

import torch

from service.made import build
from service.made.layers import MaskedLinear
from tests.helpers import markov_chain, take_training_steps


def direct(layer: MaskedLinear, x: torch.Tensor) -> torch.Tensor:
    y = x @ (layer.weight * layer.mask).t() + layer.bias
    return y + (layer.cond_weight * layer.mask).sum(1) if layer.cond_weight is not None else y


def test_the_cached_product_follows_weight_and_mask_changes():
    torch.manual_seed(0)
    layer = MaskedLinear(5, 4, conditioning=True)
    with torch.no_grad():
        layer.cond_weight.normal_()
    x = torch.randn(3, 5)
    with torch.no_grad():
        assert torch.allclose(layer(x), direct(layer, x))
        layer.weight.add_(1.0)  # an in-place update, as an optimizer step makes
        assert torch.allclose(layer(x), direct(layer, x))
        layer.mask.copy_(torch.tril(torch.ones(4, 5)))
        assert torch.allclose(layer(x), direct(layer, x))
        layer.cond_weight.mul_(3.0)
        assert torch.allclose(layer(x), direct(layer, x))
    with torch.inference_mode():  # a mask installed in inference mode (the server's warm-up) counts too
        layer.mask.copy_(torch.triu(torch.ones(4, 5)))
        assert torch.allclose(layer(x), direct(layer, x))
    layer.double()
    with torch.no_grad():
        assert torch.allclose(layer(x.double()), direct(layer, x.double()))
    with torch.no_grad():  # a new mask tensor, as installing a mask makes
        layer.mask = torch.rand(4, 5) < 0.5
        assert torch.allclose(layer(x.double()), direct(layer, x.double()))


def test_scores_without_gradients_match_scores_with_them_through_mask_switches_and_training():
    model = build(
        8, hidden_sizes=(20, 20), n_masks=3, order="random", mask_conditioning=True, direct_connections=True
    )
    x = markov_chain(32, 8)
    for _ in range(2):
        take_training_steps(model, x, steps=5)
        with torch.no_grad():
            cached = model.log_prob_per_mask(x)
        assert torch.allclose(cached, model.log_prob_per_mask(x).detach(), atol=1e-6)


def test_masks_installed_in_inference_mode_serve_later_calls():
    model = build(6, hidden_sizes=(10,), n_masks=3, order="random")
    x = markov_chain(8, 6)
    with torch.no_grad():
        expected = model.log_prob(x)
    with torch.inference_mode():  # as the server warms a model up: every mask installed in inference mode
        model.log_prob(x)
    with torch.no_grad():
        assert torch.allclose(model.log_prob(x), expected)
    with torch.inference_mode():
        assert torch.allclose(model.log_prob(x), expected)
