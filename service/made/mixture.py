"""A uniform mixture of K separately trained one-mask MADEs.

    p(x) = 1/K sum_k p_k(x),   log p(x) = logsumexp_k log p_k(x) - log K

is the mask-ensemble formula, so the mixture is a `Density` whose component k is member k: it scores,
samples and conditions exactly as a K-mask model does, and the members know nothing about being mixed.
Members with different orderings make errors in different places, so the mixture beats each member by
more than a wider single network of the same size would (docs/results.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import MADEConfig
from .density import Density, MADEDensity


class MergeError(ValueError):
    """The models cannot be merged into one mixture (they model different data, or are not one-mask)."""


class MADEMixture(Density):
    def __init__(self, members: list[MADEDensity], eval_masks: int | None = None):
        super().__init__()
        check_members(members)
        self.members = nn.ModuleList(members)
        self.config = mixture_config(members, eval_masks)  # once: the members are fixed

    @property
    def likelihood(self):
        return self.members[0].likelihood

    @property
    def shift(self) -> torch.Tensor:
        return self.members[0].shift

    @property
    def scale(self) -> torch.Tensor:
        return self.members[0].scale

    @property
    def n_masks(self) -> int:
        return len(self.members)

    @property
    def order_agnostic(self) -> bool:
        # The stored mixture keeps one ordering per member and not how each was trained, so it conditions
        # only on a prefix of every member's ordering (conditional.py), before and after saving alike.
        return False

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    def component(self, k: int) -> tuple[MADEDensity, int]:
        return self.members[k], 0


def mixture_config(members: list[MADEDensity], eval_masks: int | None = None) -> MADEConfig:
    """The mixture as one architecture: the members' layers side by side, one mask per member (what its
    checkpoint describes); the order and seed are the first member's."""
    first = members[0].config
    widths = [m.config.hidden_sizes for m in members]
    return MADEConfig(
        **first.model_dump(
            exclude={"hidden_sizes", "n_masks", "eval_masks", "mask_resampling", "fresh_masks", "mixture"}
        ),
        hidden_sizes=[sum(layer) for layer in zip(*widths, strict=True)],
        n_masks=len(members),
        eval_masks=eval_masks,
        mixture=True,
    )


def check_members(members: list[MADEDensity]) -> None:
    """Raise MergeError unless the models can be mixed: one-mask models of the same data, alike in what
    the stored mixture keeps once (head, layer count, activation, direct connections, standardisation)."""
    if len(members) < 2:
        raise MergeError("a mixture needs at least two models")
    first = members[0].config
    for i, member in enumerate(members):
        if not isinstance(member, MADEDensity) or member.config.n_masks != 1:
            raise MergeError(f"model {i} has {member.n_masks} masks; only one-mask models can be merged")
        config = member.config
        if config.mask_conditioning:
            raise MergeError(f"model {i} uses mask conditioning, which a one-mask mixture member cannot have")
        checks = {
            "n_dims": (config.n_dims, first.n_dims),
            "likelihood": (config.likelihood, first.likelihood),
            "number of hidden layers": (len(config.hidden_sizes), len(first.hidden_sizes)),
            "activation": (config.activation, first.activation),
            "direct connections": (config.direct_connections, first.direct_connections),
        }
        for what, (value, wanted) in checks.items():
            if value != wanted:
                raise MergeError(f"model {i} differs from model 0 in {what}: {value} against {wanted}")
        if not (torch.equal(member.shift, members[0].shift) and torch.equal(member.scale, members[0].scale)):
            raise MergeError(f"model {i} standardises the data differently from model 0")


def merge(members: list[MADEDensity]) -> MADEMixture:
    """The uniform mixture of `members` (one-mask MADEs of the same data), on CPU in float32, in eval mode;
    component k computes exactly what member k computes. (MADEMixture checks that they can be mixed.)"""
    return MADEMixture([copy.deepcopy(m).float().cpu() for m in members]).eval()
