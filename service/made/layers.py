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
        # bool: a quarter of a float mask's memory (W * M promotes it back to the weight's dtype)
        self.register_buffer(
            "mask", torch.ones(out_features, in_features, dtype=torch.bool), persistent=False
        )
        # Zero start: the term begins as a no-op and learns what each mask needs.
        self.cond_weight = nn.Parameter(torch.zeros(out_features, in_features)) if conditioning else None
        self._cache_key: tuple | None = None  # what the inference cache of W * M was made from
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        if not torch.is_grad_enabled():  # inference: W * M (and the conditioning bias) from the cache
            weight, cond_bias = self._masked_inference_tensors()
            y = F.linear(x, weight, self.bias)
            return y if cond_bias is None else y + cond_bias
        y = F.linear(x, self.weight * self.mask, self.bias)
        if self.cond_weight is not None:
            y = y + (self.cond_weight * self.mask).sum(dim=1)
        return y

    def _masked_inference_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W * M and (V * M) 1, made again only when a weight or the mask has changed (in-place updates bump
        a tensor's version; moving or converting the module gives new storage). Serving a model calls the
        same masks over and over: this saves a full pass over the weights per call, for a copy's memory."""
        tensors = (self.weight, self.mask, self.cond_weight)
        key = tuple((t._version, t.data_ptr(), t.dtype) for t in tensors if t is not None)
        if self._cache_key != key:
            weight = self.weight * self.mask
            cond_bias = (self.cond_weight * self.mask).sum(dim=1) if self.cond_weight is not None else None
            self._cache, self._cache_key = (weight, cond_bias), key
        return self._cache
