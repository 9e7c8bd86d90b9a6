"""Orderings, degrees and connectivity masks of MADE (Germain et al. 2015, section 4).

Every unit gets a *degree*:
  * input d gets its position 1..D in the ordering;
  * hidden unit k of layer l gets m_l(k), drawn uniformly from [min m_{l-1}, D-1];
  * output d (and each of its likelihood parameters) gets the degree of input d.
A hidden layer connects k' -> k iff m_l(k) >= m_{l-1}(k'); the output layer and the direct
input-to-output layer connect iff d > m(k') (strictly), so output d only ever sees x_<d.
A hidden degree of 0 (UNUSED) marks a unit that the mask does not use at all: it sees nothing and
nothing sees it. A mixture of MADEs (network.py) gives each mask its own block of units this way.
Degrees are stored explicitly; masks are always rebuilt from them, so a loaded model never
depends on a random number generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ORDERINGS = ("natural", "reversed", "random")
UNUSED = 0  # the hidden degree of a unit outside the mask (real degrees start at 1)


def make_ordering(
    kind: str | Sequence[int], n_dims: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ordering as a (D,) permutation: ordering[i] is the dimension placed at position i+1."""
    if not isinstance(kind, str):
        ordering = torch.as_tensor(list(kind), dtype=torch.long)
        if ordering.shape != (n_dims,) or not torch.equal(ordering.sort().values, torch.arange(n_dims)):
            raise ValueError(f"a given ordering must be a permutation of 0..{n_dims - 1}")
        return ordering
    if kind == "natural":
        return torch.arange(n_dims)
    if kind == "reversed":
        return torch.arange(n_dims - 1, -1, -1)
    if kind == "random":
        return torch.randperm(n_dims, generator=generator)
    raise ValueError(f"unknown ordering {kind!r}; expected one of {ORDERINGS} or a permutation")


def degrees_from_ordering(ordering: torch.Tensor) -> torch.Tensor:
    """(D,) input degrees: degree[d] = 1-based position of dimension d in the ordering."""
    degrees = torch.empty_like(ordering)
    degrees[ordering] = torch.arange(1, len(ordering) + 1)
    return degrees


def ordering_from_degrees(input_degrees: torch.Tensor) -> torch.Tensor:
    """Inverse of degrees_from_ordering: the dimensions sorted by degree."""
    return torch.argsort(input_degrees)


def sample_hidden_degrees(
    previous_degrees: torch.Tensor, n_units: int, n_dims: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(H,) degrees uniform on [min m_{l-1}, D-1]: starting at the previous layer's minimum keeps every
    unit connected to something, and stopping at D-1 keeps it useful to some output."""
    low = int(previous_degrees[previous_degrees != UNUSED].min())
    high = max(low, n_dims - 1)  # D == 1: no unit can reach the output; any degree is as good
    return torch.randint(low, high + 1, (n_units,), generator=generator)


def hidden_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor) -> torch.Tensor:
    """(out, in) mask of a hidden layer: out unit k sees in unit k' iff m(k) >= m(k') (both used)."""
    used = (out_degrees[:, None] != UNUSED) & (in_degrees[None, :] != UNUSED)
    return ((out_degrees[:, None] >= in_degrees[None, :]) & used).float()


def output_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor) -> torch.Tensor:
    """(out, in) mask of the output (and direct) layer: strict, so output d never sees x_d or later."""
    return ((out_degrees[:, None] > in_degrees[None, :]) & (in_degrees[None, :] != UNUSED)).float()


def check_degrees(
    input_degrees: torch.Tensor, hidden_degrees: Sequence[torch.Tensor], n_dims: int, allow_unused: bool = False
) -> None:
    """Raise ValueError unless the degrees describe a valid MADE (used when loading a checkpoint).
    `allow_unused`: units may be UNUSED (a mixture's mask), but every layer keeps at least one unit."""
    if not torch.equal(torch.sort(input_degrees).values.cpu(), torch.arange(1, n_dims + 1)):
        raise ValueError("input degrees are not a permutation of 1..D")
    high = max(1, n_dims - 1)
    for layer, degrees in enumerate(hidden_degrees):
        used = degrees[degrees != UNUSED] if allow_unused else degrees
        if allow_unused and len(degrees) and not len(used):
            raise ValueError(f"hidden layer {layer} has no unit in this mask")
        if len(used) and (int(used.min()) < 1 or int(used.max()) > high):
            raise ValueError(f"hidden layer {layer} has degrees outside [1, {high}]")


def check_mixture_blocks(hidden_degrees: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless, in every layer ((M, H_l) degrees), each mask's used units form one
    contiguous block and no two masks share a unit: what a mixture's forward pass and masks rely on."""
    for layer, degrees in enumerate(hidden_degrees):
        owners = (degrees != UNUSED).sum(dim=0)
        if bool((owners > 1).any()):
            raise ValueError(f"hidden layer {layer}: a unit is used by more than one mask of the mixture")
        for k, row in enumerate(degrees):
            used = (row != UNUSED).nonzero().squeeze(1)
            if len(used) and int(used[-1] - used[0]) + 1 != len(used):
                raise ValueError(f"hidden layer {layer}: mask {k}'s units are not one contiguous block")
