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

    def forward(self, x: torch.Tensor, rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        """(B, in) -> (B, out); with `rows` / `cols`, only that block of the layer: (B, in[cols]) -> (B, out[rows])
        (a mixture's mask uses one block of units, and the rest would be multiplied by zeros)."""
        weight, mask, bias, cond = self.weight, self.mask, self.bias, self.cond_weight
        if rows is not None or cols is not None:
            rows, cols = rows or slice(None), cols or slice(None)
            weight, mask = weight[rows, cols], mask[rows, cols]
            bias = bias[rows] if bias is not None else None
            cond = cond[rows, cols] if cond is not None else None
        y = F.linear(x, weight * mask, bias)
        if cond is not None:
            y = y + (cond * mask).sum(dim=1)
        return y
