"""Orderings, degrees and connectivity masks of MADE (Germain et al. 2015, section 4).

Every unit gets a *degree*:
  * input d gets its position 1..D in the ordering;
  * hidden unit k of layer l gets m_l(k), drawn uniformly from [min m_{l-1}, D-1];
  * output d (and each of its likelihood parameters) gets the degree of input d.
A hidden layer connects k' -> k iff m_l(k) >= m_{l-1}(k'); the output layer and the direct
input-to-output layer connect iff d > m(k') (strictly), so output d only ever sees x_<d.
Degrees are stored explicitly; masks are always rebuilt from them, so a loaded model never
depends on a random number generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

ORDERINGS = ("natural", "reversed", "random")


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
    low = int(previous_degrees.min())
    high = max(low, n_dims - 1)  # D == 1: no unit can reach the output; any degree is as good
    return torch.randint(low, high + 1, (n_units,), generator=generator)


def hidden_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor) -> torch.Tensor:
    """bool (out, in) mask of a hidden layer: out unit k sees in unit k' iff m(k) >= m(k')."""
    return out_degrees[:, None] >= in_degrees[None, :]


def output_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor) -> torch.Tensor:
    """bool (out, in) mask of the output (and direct) layer: strict, so output d never sees x_d or later."""
    return out_degrees[:, None] > in_degrees[None, :]


class LayerMasks(NamedTuple):
    hidden: list[torch.Tensor]  # (H_l, H_{l-1}) per hidden layer; layer 0 reads the D inputs
    output: torch.Tensor  # (P*D, H_L), or (P*D, D) without hidden layers
    direct: torch.Tensor  # (P*D, D) direct input-to-output connections


def layer_masks(
    input_degrees: torch.Tensor, hidden_degrees: Sequence[torch.Tensor], params_per_dim: int
) -> LayerMasks:
    """Every masked layer's mask for one mask configuration. Output unit p*D + d is parameter p of
    dimension d, so it takes the degree of input d."""
    hidden, previous = [], input_degrees
    for degrees in hidden_degrees:
        hidden.append(hidden_mask(previous, degrees))
        previous = degrees
    output_degrees = input_degrees.repeat(params_per_dim)
    return LayerMasks(
        hidden, output_mask(previous, output_degrees), output_mask(input_degrees, output_degrees)
    )


def check_degrees(input_degrees: torch.Tensor, hidden_degrees: Sequence[torch.Tensor], n_dims: int) -> None:
    """Raise ValueError unless the degrees describe a valid MADE (used when loading a checkpoint)."""
    if not torch.equal(torch.sort(input_degrees).values.cpu(), torch.arange(1, n_dims + 1)):
        raise ValueError("input degrees are not a permutation of 1..D")
    high = max(1, n_dims - 1)
    for layer, degrees in enumerate(hidden_degrees):
        if len(degrees) and (int(degrees.min()) < 1 or int(degrees.max()) > high):
            raise ValueError(f"hidden layer {layer} has degrees outside [1, {high}]")
