"""The MADE network: masked hidden layers, a masked output layer, optional direct connections.

The network maps x (B, D) to P parameters per dimension, (B, P, D), where output (p, d) depends only on
the inputs that come before d in the active mask's ordering. It stores `n_masks` mask configurations
(an ordering plus hidden degrees each); `use_mask(k)` switches between them, and order-agnostic /
connectivity-agnostic training moves to another configuration every minibatch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import ACTIVATIONS, MADEConfig
from .layers import MaskedLinear
from .masks import (
    degrees_from_ordering,
    layer_masks,
    make_ordering,
    ordering_from_degrees,
    sample_hidden_degrees,
)


class MADE(nn.Module):
    def __init__(self, config: MADEConfig):
        super().__init__()
        if config.mixture:
            raise ValueError("a mixture of MADEs is a MADEMixture of one-mask networks, not one network")
        self.config = config
        self.params_per_dim = P = config.params_per_dim
        D = config.n_dims
        sizes = [D, *config.hidden_sizes]
        self.hidden = nn.ModuleList(
            MaskedLinear(n_in, n_out, conditioning=config.mask_conditioning)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = ACTIVATIONS[config.activation]()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.output = MaskedLinear(sizes[-1], P * D)
        self.direct = MaskedLinear(D, P * D, bias=False) if config.direct_connections else None

        # The stored mask set, as degrees: (M, D) for the inputs and (M, H_l) per hidden layer.
        generator = torch.Generator().manual_seed(config.seed)
        base_ordering = make_ordering(config.order, D, generator)
        base_hidden = self._draw_hidden_degrees(degrees_from_ordering(base_ordering), generator)
        input_degrees, hidden_degrees = [degrees_from_ordering(base_ordering)], [base_hidden]
        for _ in range(1, config.n_masks):
            inp, hid = self.draw_degrees(generator, base_ordering, base_hidden)
            input_degrees.append(inp)
            hidden_degrees.append(hid)
        self.register_buffer("input_degrees", torch.stack(input_degrees))
        for layer in range(len(self.hidden)):
            self.register_buffer(f"hidden_degrees_{layer}", torch.stack([h[layer] for h in hidden_degrees]))
        self.active_mask: int | None = None
        self.use_mask(0)
        # Loaded degrees replace the drawn ones: rebuild the masks from them.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.reinstall_mask())

    # ---- mask configurations -------------------------------------------------------------------
    def _draw_hidden_degrees(self, input_degrees: torch.Tensor, generator: torch.Generator | None):
        degrees, previous = [], input_degrees
        for size in self.config.hidden_sizes:
            previous = sample_hidden_degrees(previous, size, self.config.n_dims, generator)
            degrees.append(previous)
        return degrees

    def draw_degrees(
        self,
        generator: torch.Generator | None,
        base_ordering: torch.Tensor | None = None,
        base_hidden: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A new mask configuration: resample the ordering, the hidden degrees, or both, per the config.
        What is not resampled is kept from `base_*` (by default, mask 0)."""
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
        if self.active_mask != k:
            self.use_degrees(self.input_degrees[k], self.hidden_degrees(k))
            self.active_mask = k

    def reinstall_mask(self) -> None:
        """Rebuild the active mask from the stored degrees (after loading them)."""
        k, self.active_mask = self.active_mask or 0, None
        self.use_mask(k)

    def use_degrees(self, input_degrees: torch.Tensor, hidden_degrees: Sequence[torch.Tensor]) -> None:
        """Install masks built from explicit degrees (fresh masks in training, re-ordered masks for
        conditioning). Each is a new tensor, so a mask that autograd saved for a pass is never rewritten."""
        device = self.input_degrees.device
        # Normal tensors even when called in inference mode (the server's warm-up): the inference cache
        # keys on the masks' version counters, which inference tensors do not have.
        with torch.inference_mode(False):
            masks = layer_masks(
                input_degrees.to(device), [h.to(device) for h in hidden_degrees], self.params_per_dim
            )
        for layer, mask in zip(self.hidden, masks.hidden, strict=True):
            layer.mask = mask
        self.output.mask = masks.output
        if self.direct is not None:
            self.direct.mask = masks.direct
        self.active_mask = None

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, P, D)
        h = x
        for layer in self.hidden:
            h = self.dropout(self.activation(layer(h)))  # (B, H_l)
        out = self.output(h)  # (B, P*D)
        if self.direct is not None:
            out = out + self.direct(x)
        return out.view(x.shape[0], self.params_per_dim, self.config.n_dims)
