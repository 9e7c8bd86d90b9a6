"""A uniform mixture of K separately trained one-mask MADEs, as one K-mask network.

    p(x) = 1/K sum_k p_k(x),   log p(x) = logsumexp_k log p_k(x) - log K

is the mask-ensemble formula, so the mixture is stored and served as a mask ensemble whose masks share no
weights: every hidden layer is the members' layers side by side, mask k uses only member k's block of
units (the others are UNUSED under it), and the output and direct layers hold one block of rows per member
(each member has its own output biases and direct weights). Members with different orderings make errors
in different places, so the mixture beats each member by more than a wider single network of the same
size would (docs/results.md).
"""

from __future__ import annotations

import torch

from .density import MADEDensity
from .masks import UNUSED
from .network import MADE, MADEConfig


class MergeError(ValueError):
    """The models cannot be merged into one mixture (they model different data, or are not one-mask)."""


def _check_members(members: list[MADEDensity]) -> None:
    if len(members) < 2:
        raise MergeError("a mixture needs at least two models")
    first = members[0]
    for i, member in enumerate(members):
        config = member.network.config
        if config.n_masks != 1 or config.mixture:
            raise MergeError(f"model {i} has {config.n_masks} masks; only one-mask models can be merged")
        if config.mask_conditioning:
            raise MergeError(f"model {i} uses mask conditioning, which a one-mask mixture member cannot have")
        checks = {
            "n_dims": (member.n_dims, first.n_dims),
            "likelihood": (member.likelihood.spec(), first.likelihood.spec()),
            "number of hidden layers": (len(config.hidden_sizes), len(first.network.config.hidden_sizes)),
            "activation": (config.activation, first.network.config.activation),
            "direct connections": (config.direct_connections, first.network.config.direct_connections),
        }
        for what, (value, wanted) in checks.items():
            if value != wanted:
                raise MergeError(f"model {i} differs from model 0 in {what}: {value} against {wanted}")
        if not (torch.equal(member.shift, first.shift) and torch.equal(member.scale, first.scale)):
            raise MergeError(f"model {i} standardises the data differently from model 0")


@torch.no_grad()
def merge(members: list[MADEDensity]) -> MADEDensity:
    """The uniform mixture of `members` (one-mask MADEs of the same data) as one mixture network, on CPU in
    float32; mask k computes exactly what member k computes."""
    _check_members(members)
    first = members[0].network.config
    K, D, P = len(members), first.n_dims, first.params_per_dim
    widths = [m.network.config.hidden_sizes for m in members]  # (K, L)
    config = MADEConfig(
        n_dims=D,
        hidden_sizes=[sum(layer) for layer in zip(*widths)],
        params_per_dim=P,
        n_masks=K,
        mask_resampling="both",
        order=first.order,
        eval_masks=K,
        direct_connections=first.direct_connections,
        activation=first.activation,
        dropout=first.dropout,
        seed=first.seed,
        mixture=True,
    )
    network = MADE(config)
    for parameter in network.parameters():
        parameter.zero_()  # entries outside every member's block are never used: keep them zero
    starts = [0] * len(config.hidden_sizes)  # where the next member's block begins, per layer
    for k, member in enumerate(members):
        source = {name: t.detach().cpu() for name, t in member.network.state_dict().items()}
        network.input_degrees[k] = source["input_degrees"][0]
        previous = slice(None)  # layer 0 reads every input
        for l, layer in enumerate(network.hidden):
            block = slice(starts[l], starts[l] + widths[k][l])
            degrees = getattr(network, f"hidden_degrees_{l}")
            degrees[k] = UNUSED
            degrees[k, block] = source[f"hidden_degrees_{l}"][0]
            layer.weight[block, previous] = source[f"hidden.{l}.weight"]
            layer.bias[block] = source[f"hidden.{l}.bias"]
            starts[l], previous = block.stop, block
        rows = network.output_rows(k)
        network.output.weight[rows, previous] = source["output.weight"]
        network.output.bias[rows] = source["output.bias"]
        if network.direct is not None:
            network.direct.weight[rows] = source["direct.weight"]
    network.refresh_masks()
    head = members[0]
    return MADEDensity(network, head.likelihood, shift=head.shift.cpu(), scale=head.scale.cpu()).eval()
