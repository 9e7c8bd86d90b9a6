"""A learned simple model of local structure for binary rows: the input-complexity term of an anomaly score.

    p(x) = prod_i p(x_i = 1 | c_i(x)),   c_i(x) = the bits at a fixed causal template of positions before i

For a 2-D input shape (H, W) the template is JBIG's 10 pixels: the four to the left in the same row, five
in the row above (columns -2..2) and one two rows above; positions outside the image read 0. Without a
shape it is the previous 10 dimensions. One table of 2^10 probabilities is shared by every position and
fitted by counting with the Krichevsky-Trofimov estimator (add 1/2 to each count). Every conditional looks
only at earlier positions in raster order, so p is exactly normalised.

Its code length, -log p(x), says how predictable x is from local statistics alone (few "on" pixels, long
blank runs, stroke texture), which is what makes a likelihood model call simple inputs likely (Serra et
al. 2020, Schirrmeister et al. 2020). docs/anomaly.md measures NLL minus this code length as an anomaly
score.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# (row offset, column offset) of each context bit, relative to the pixel predicted; bit b has weight 2^b
TEMPLATE_2D = ((0, -1), (0, -2), (0, -3), (0, -4), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (-2, 0))
ORDER_1D = 10  # without a shape: the previous 10 dimensions, lag 1 is bit 0
CONTEXT_BITS = 10
N_CONTEXTS = 2**CONTEXT_BITS
GATHER_BELOW_ROWS = 8  # measured: below 8 rows one gather is faster than ten shifts; above, far slower
Template = Literal["jbig10", "previous10"]  # the names checkpoints record: 2-D template, or the previous dims


def template_for(input_shape: list[int] | tuple[int, ...] | None) -> Template:
    """The template a model of rows with this input shape uses: JBIG's for images, else the previous 10."""
    return "jbig10" if input_shape is not None and len(input_shape) == 2 else "previous10"


class ContextModel(nn.Module):
    def __init__(self, n_dims: int, input_shape: list[int] | tuple[int, ...] | None = None):
        super().__init__()
        if input_shape is not None and (len(input_shape) != 2 or input_shape[0] * input_shape[1] != n_dims):
            raise ValueError(f"input_shape {list(input_shape)} is not a 2-D shape of {n_dims} values")
        self.n_dims = n_dims
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.register_buffer("p_one", torch.full((N_CONTEXTS,), 0.5, dtype=torch.float64))  # (2^10,)
        # (D, 10) the input position each template bit of each position reads (D: off the edge, reads 0)
        self.register_buffer("template_index", self._template_index(), persistent=False)
        self.register_buffer("bit_shifts", torch.arange(CONTEXT_BITS, dtype=torch.int32), persistent=False)
        # [log p(0 | c), log p(1 | c)] per context c, at 2c and 2c + 1: what scoring gathers from
        self.register_buffer("log_table", self._log_table(), persistent=False)  # (2^11,)

    def _template_index(self) -> torch.Tensor:
        position = torch.arange(self.n_dims)[:, None]  # (D, 1)
        if self.input_shape is None:
            source = position - torch.arange(1, ORDER_1D + 1)[None, :]  # lag 1 is bit 0
            return torch.where(source >= 0, source, self.n_dims)
        height, width = self.input_shape
        offsets = torch.tensor(TEMPLATE_2D)  # (10, 2)
        row, column = position // width + offsets[:, 0], position % width + offsets[:, 1]  # (D, 10) each
        inside = (row >= 0) & (row < height) & (column >= 0) & (column < width)
        return torch.where(inside, row * width + column, self.n_dims)

    def _log_table(self) -> torch.Tensor:
        return torch.stack([torch.log1p(-self.p_one), self.p_one.log()], dim=1).reshape(-1)

    def contexts(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) 0/1 rows -> (N, D) context index of every position, in 0..2^10 - 1: each template bit is
        a shifted copy of the input (zeros shifted in at the edges), weighted by its power of two. (Ten
        integer shifts and adds: faster than the equivalent one-channel convolution. A few rows take one
        gather of every position's template instead, which is a quarter of the shifts' per-call cost.)"""
        bits = x.to(torch.int32)
        if len(bits) < GATHER_BELOW_ROWS:
            padded = F.pad(bits, (0, 1))  # (N, D + 1): column D reads 0, for template bits off the edge
            return (padded[:, self.template_index] << self.bit_shifts).sum(dim=2, dtype=torch.int32)
        if self.input_shape is None:
            padded = F.pad(bits, (ORDER_1D, 0))  # zeros before the first dimension
            index = torch.zeros_like(bits)
            for lag in range(1, ORDER_1D + 1):
                index += padded[:, ORDER_1D - lag : ORDER_1D - lag + self.n_dims] << (lag - 1)
            return index
        height, width = self.input_shape
        images = bits.reshape(-1, height, width)
        padded = F.pad(images, (4, 4, 2, 0))  # 4 columns either side, 2 rows above
        index = torch.zeros_like(images)
        for bit, (dr, dc) in enumerate(TEMPLATE_2D):
            index += padded[:, 2 + dr : 2 + dr + height, 4 + dc : 4 + dc + width] << bit
        return index.reshape(len(x), self.n_dims)

    def conditional_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) 0/1 rows -> (N, D) log p(x_i | c_i(x)) in nats (float64)."""
        # one gather per value, at 2c + x_i (cheaper than two and a where)
        return self.log_table[(2 * self.contexts(x) + x.to(torch.int32)).long()]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) 0/1 rows -> (N,) log p(x) in nats (float64)."""
        return self.conditional_log_probs(x).sum(dim=1)

    def code_length(self, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x)

    def count(self, rows: torch.Tensor, batch_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Per context, over the (N, D) 0/1 rows: (how often the predicted bit was 1, how often it was seen),
        both (2^10,) int64."""
        ones = torch.zeros(N_CONTEXTS, dtype=torch.int64, device=rows.device)
        seen = torch.zeros(N_CONTEXTS, dtype=torch.int64, device=rows.device)
        for start in range(0, len(rows), batch_rows):
            batch = rows[start : start + batch_rows]
            index = self.contexts(batch).reshape(-1).long()
            ones.index_add_(0, index, batch.reshape(-1).to(torch.int64))
            seen += torch.bincount(index, minlength=N_CONTEXTS)
        return ones, seen

    def set_counts(self, ones: torch.Tensor, seen: torch.Tensor) -> ContextModel:
        """The Krichevsky-Trofimov estimate from counts: per context, (ones + 1/2) / (seen + 1)."""
        ones, seen = (torch.as_tensor(t, dtype=torch.float64, device=self.p_one.device) for t in (ones, seen))
        if ones.shape != (N_CONTEXTS,) or seen.shape != (N_CONTEXTS,) or bool((ones > seen).any()):
            raise ValueError(f"context counts must be {N_CONTEXTS} pairs with ones <= seen")
        return self.set_probabilities((ones + 0.5) / (seen + 1.0))

    def set_probabilities(self, p_one: torch.Tensor) -> ContextModel:
        """p(bit = 1 | c) for each of the 2^10 contexts c, each in (0, 1)."""
        self.p_one.copy_(p_one)
        self.log_table.copy_(self._log_table())
        return self

    @classmethod
    def fit(
        cls,
        rows: torch.Tensor,
        input_shape: list[int] | tuple[int, ...] | None = None,
        batch_rows: int = 4096,
    ) -> ContextModel:
        """The model of (N, D) 0/1 rows, fitted by counting."""
        model = cls(rows.shape[1], input_shape).to(rows.device)
        return model.set_counts(*model.count(rows, batch_rows))
