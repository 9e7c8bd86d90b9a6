"""The MADE network: masked hidden layers, a masked output layer, optional direct connections.

The network maps x (B, D) to P parameters per dimension, (B, P, D), where output (p, d) depends only on
the inputs that come before d in the active mask's ordering. It stores `n_masks` mask configurations
(an ordering plus hidden degrees each); `use_mask(k)` switches between them, and order-agnostic /
connectivity-agnostic training moves to another configuration every minibatch.

A *mixture* network (`mixture=True`, built by `made merge` from separately trained MADEs) gives each
mask its own block of every hidden layer (the other units are UNUSED under that mask) and its own block of
output and direct rows: mask k is then an independent MADE with its own ordering, and the mask ensemble's
average of probabilities is a uniform mixture of K MADEs. Only the active mask's blocks are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import MaskedLinear
from .masks import (
    UNUSED,
    degrees_from_ordering,
    hidden_mask,
    make_ordering,
    ordering_from_degrees,
    output_mask,
    sample_hidden_degrees,
)

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
MASK_RESAMPLING = ("both", "order", "connectivity")


@dataclass
class MADEConfig:
    n_dims: int
    hidden_sizes: Sequence[int] = (500,)
    params_per_dim: int = 1  # set by the likelihood head
    n_masks: int = 1  # size of the stored mask set; 1 is a plain MADE
    mask_resampling: str = "both"  # what differs between masks: "order", "connectivity" or "both"
    order: str | Sequence[int] = "natural"  # ordering of mask 0: natural | reversed | random | a permutation
    fresh_masks: bool = False  # train with a new mask every step; the stored set is for evaluation
    eval_masks: int | None = None  # default ensemble size at evaluation (None: all stored masks)
    direct_connections: bool = False
    mask_conditioning: bool = False
    activation: str = "relu"
    dropout: float = 0.0
    seed: int = 0  # draws the stored masks; after that they are stored, not re-drawn
    mixture: bool = False  # each mask its own hidden units and output rows: a mixture of n_masks MADEs

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        if self.n_dims < 1:
            raise ValueError("n_dims must be >= 1")
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError("hidden layer sizes must be >= 1")
        if self.n_masks < 1:
            raise ValueError("n_masks must be >= 1")
        if self.mask_resampling not in MASK_RESAMPLING:
            raise ValueError(f"mask_resampling must be one of {MASK_RESAMPLING}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.eval_masks is None:
            self.eval_masks = self.n_masks
        if not 1 <= self.eval_masks <= self.n_masks:
            raise ValueError(f"eval_masks must be in [1, n_masks={self.n_masks}]")
        if not isinstance(self.order, str):
            self.order = [int(i) for i in self.order]
        if self.mixture:
            if self.mask_conditioning or self.fresh_masks:
                raise ValueError("a mixture has a fixed set of masks without mask conditioning")
            if any(h < self.n_masks for h in self.hidden_sizes):
                raise ValueError(f"a mixture of {self.n_masks} needs at least {self.n_masks} units per hidden layer")


class MADE(nn.Module):
    def __init__(self, config: MADEConfig):
        super().__init__()
        self.config = config
        D, P = config.n_dims, config.params_per_dim
        sizes = [D, *config.hidden_sizes]
        self.hidden = nn.ModuleList(
            MaskedLinear(n_in, n_out, conditioning=config.mask_conditioning)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.activation = ACTIVATIONS[config.activation]()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        # A mixture keeps one block of P*D output (and direct) rows per mask; otherwise the masks share one.
        row_blocks = config.n_masks if config.mixture else 1
        self.output = MaskedLinear(sizes[-1], row_blocks * P * D)
        self.direct = MaskedLinear(D, row_blocks * P * D, bias=False) if config.direct_connections else None
        self.rows: slice | None = None  # the active mask's output rows (mixture)
        self.units: list[slice] | None = None  # the active mask's hidden units per layer (mixture)

        # The stored mask set, as degrees: (M, D) for the inputs and (M, H_l) per hidden layer.
        generator = torch.Generator().manual_seed(config.seed)
        base_ordering = make_ordering(config.order, D, generator)
        base_hidden = self._draw_hidden_degrees(degrees_from_ordering(base_ordering), generator)
        input_degrees, hidden_degrees = [], []
        for k in range(config.n_masks):
            if config.mixture:
                ordering = base_ordering if k == 0 else torch.randperm(D, generator=generator)
                inp, hid = degrees_from_ordering(ordering), self._draw_member_degrees(k, ordering, generator)
            elif k == 0:
                inp, hid = degrees_from_ordering(base_ordering), base_hidden
            else:
                inp, hid = self.draw_degrees(generator, base_ordering, base_hidden)
            input_degrees.append(inp)
            hidden_degrees.append(hid)
        self.register_buffer("input_degrees", torch.stack(input_degrees))
        for layer in range(len(self.hidden)):
            self.register_buffer(f"hidden_degrees_{layer}", torch.stack([h[layer] for h in hidden_degrees]))
        self.active_mask: int | None = None
        self._member_blocks: dict[int, tuple[slice, list[slice]]] = {}  # mixture: members whose masks are in place
        self.refresh_masks()
        # Loaded degrees replace the drawn ones: rebuild the masks from them.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_masks())

    # ---- mask configurations -------------------------------------------------------------------
    def _draw_hidden_degrees(self, input_degrees: torch.Tensor, generator: torch.Generator | None):
        degrees, previous = [], input_degrees
        for size in self.config.hidden_sizes:
            previous = sample_hidden_degrees(previous, size, self.config.n_dims, generator)
            degrees.append(previous)
        return degrees

    def _draw_member_degrees(self, k: int, ordering: torch.Tensor, generator: torch.Generator | None):
        """Mixture mask k: degrees for the k-th of n_masks equal blocks of each layer, UNUSED elsewhere."""
        degrees, previous = [], degrees_from_ordering(ordering)
        for size in self.config.hidden_sizes:
            block = torch.arange(size).tensor_split(self.config.n_masks)[k]
            layer = torch.full((size,), UNUSED, dtype=torch.long)
            layer[block] = sample_hidden_degrees(previous, len(block), self.config.n_dims, generator)
            degrees.append(layer)
            previous = layer
        return degrees

    def draw_degrees(
        self,
        generator: torch.Generator | None,
        base_ordering: torch.Tensor | None = None,
        base_hidden: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A new mask configuration: resample the ordering, the hidden degrees, or both, per the config.
        What is not resampled is kept from `base_*` (by default, mask 0)."""
        if self.config.mixture:
            raise ValueError("a mixture's masks are its members: they are not redrawn")
        resample = self.config.mask_resampling
        if base_ordering is None:
            base_ordering = self.ordering(0).cpu()
        if base_hidden is None:
            base_hidden = [h.cpu() for h in self.hidden_degrees(0)]
        ordering = (
            torch.randperm(self.config.n_dims, generator=generator)
            if resample in ("order", "both")
            else base_ordering
        )
        input_degrees = degrees_from_ordering(ordering)
        hidden = (
            self._draw_hidden_degrees(input_degrees, generator)
            if resample in ("connectivity", "both")
            else list(base_hidden)
        )
        return input_degrees, hidden

    def hidden_degrees(self, k: int) -> list[torch.Tensor]:
        return [getattr(self, f"hidden_degrees_{layer}")[k] for layer in range(len(self.hidden))]

    def ordering(self, k: int) -> torch.Tensor:
        """(D,) dimensions of mask k in the order they are generated."""
        return ordering_from_degrees(self.input_degrees[k])

    def use_mask(self, k: int) -> None:
        """Make stored mask configuration k the active one (no-op if it already is)."""
        if not 0 <= k < self.config.n_masks:
            raise IndexError(f"mask {k} is not in the stored set of {self.config.n_masks}")
        if self.active_mask == k:
            return
        if k in self._member_blocks:  # a mixture member whose masks are in place: only the blocks change
            self.rows, self.units = self._member_blocks[k]
        else:
            self.use_degrees(self.input_degrees[k], self.hidden_degrees(k), member=k)
            if self.config.mixture:
                self._member_blocks[k] = (self.rows, self.units)
        self.active_mask = k

    def refresh_masks(self) -> None:
        """Rebuild the masks from the stored degrees (after loading them)."""
        self.clear_masks()
        if self.config.mixture:  # every member's masks in place at once, so no pass rewrites a mask in use
            for k in range(self.config.n_masks):
                self.use_mask(k)
        self.use_mask(0)

    def clear_masks(self) -> None:
        """Forget the installed masks (a mixture's are zeroed)."""
        self.active_mask = None
        if self.config.mixture:
            self._member_blocks.clear()
            for layer in (*self.hidden, self.output, self.direct):
                if layer is not None:
                    layer.mask.zero_()

    def output_rows(self, member: int) -> slice:
        """The rows of the output and direct layers that mask `member` drives: in a mixture its own block of
        P*D, otherwise all of them (the masks share one block)."""
        block = member if self.config.mixture else 0
        PD = self.config.params_per_dim * self.config.n_dims
        return slice(block * PD, (block + 1) * PD)

    def use_degrees(
        self, input_degrees: torch.Tensor, hidden_degrees: Sequence[torch.Tensor], member: int = 0
    ) -> None:
        """Install masks built from explicit degrees (fresh masks during training use this).
        Only the block of each mask that these degrees use is written: every unit and row for a plain MADE;
        in a mixture, `member`'s own units and output rows. Members share neither, so all members' masks stay
        in place side by side and switching between them costs nothing."""
        device = self.input_degrees.device
        input_degrees = input_degrees.to(device)
        previous, previous_units = input_degrees, slice(None)  # layer 0 reads every input
        units = []
        for layer, degrees in zip(self.hidden, hidden_degrees, strict=True):
            degrees = degrees.to(device)
            used = (degrees != UNUSED).nonzero()
            block = slice(int(used.min()), int(used.max()) + 1) if len(used) else slice(0, 0)
            layer.mask[block, previous_units] = hidden_mask(previous[previous_units], degrees[block])
            units.append(block)
            previous, previous_units = degrees, block
        output_degrees = input_degrees.repeat(self.config.params_per_dim)  # unit p*D + d: parameter p of dim d
        rows = self.output_rows(member)
        self.output.mask[rows, previous_units] = output_mask(previous[previous_units], output_degrees)
        if self.direct is not None:
            self.direct.mask[rows] = output_mask(input_degrees, output_degrees)
        if self.config.mixture:
            self._member_blocks.pop(member, None)  # until use_mask installs the stored degrees again
            self.rows, self.units = rows, units
        self.active_mask = None

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, P, D)
        # A mixture computes only the active mask's blocks: the rest is masked out for it anyway.
        units = self.units or [None] * len(self.hidden)
        h, previous = x, None
        for layer, block in zip(self.hidden, units, strict=True):
            h = self.dropout(self.activation(layer(h, rows=block, cols=previous)))  # (B, H_l or its block)
            previous = block
        out = self.output(h, rows=self.rows, cols=previous)  # (B, P*D)
        if self.direct is not None:
            out = out + self.direct(x, rows=self.rows)
        return out.view(x.shape[0], self.config.params_per_dim, self.config.n_dims)
