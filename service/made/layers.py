"""The masked linear layer: a dense layer whose weight is multiplied by a 0/1 connectivity mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLinear(nn.Linear):
    """y = (W * M) x + b  [+ (V * M) 1  with mask conditioning].

    The mask M is a non-persistent buffer: it is derived from the degrees the network stores.
    Mask conditioning (the paper's section 4, and the original code's `use_cond_mask`) adds a learned
    bias that depends on the mask, so a network trained on many masks knows which one is active.
    (V * M) 1 does not depend on x, so it cannot break the autoregressive property.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, conditioning: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features), persistent=False)
        # Zero start: the term begins as a no-op and learns what each mask needs.
        self.cond_weight = nn.Parameter(torch.zeros(out_features, in_features)) if conditioning else None

    def set_mask(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        y = F.linear(x, self.weight * self.mask, self.bias)
        if self.cond_weight is not None:
            y = y + (self.cond_weight * self.mask).sum(dim=1)
        return y
