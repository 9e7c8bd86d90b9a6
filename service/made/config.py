"""The architecture of a MADE model: one config type, validated once and round-tripped whole.

The network, the likelihood head, `made train`, `made merge` and the checkpoint (whose schema extends this
type) all read and write this one object, so a new architecture field is added here and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from .masks import ORDERINGS

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


class LikelihoodSpec(BaseModel):
    """Which head turns the network's outputs into log p(x_d | x_<d), with its options."""

    model_config = ConfigDict(extra="forbid")
    name: Literal[LIKELIHOODS]
    categories: Annotated[int, Field(ge=2)] | None = None
    components: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _head_options(self):
        if self.name == "categorical" and self.categories is None:
            raise ValueError("a categorical likelihood needs 'categories'")
        if self.name == "mog" and self.components is None:
            raise ValueError("a mog likelihood needs 'components'")
        return self

    def make(self) -> Likelihood:
        return make_likelihood(self.name, categories=self.categories, components=self.components)


class MADEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    likelihood: LikelihoodSpec = LikelihoodSpec(name="bernoulli")
    n_dims: Annotated[int, Field(ge=1)]
    hidden_sizes: list[Annotated[int, Field(ge=1)]] = [500]
    activation: Literal[tuple(ACTIVATIONS)] = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0  # on hidden units, while training
    direct_connections: bool = False  # input-to-output weights, with the strict (output) mask
    mask_conditioning: bool = False  # a learned mask-dependent bias per layer (the paper's section 4)
    n_masks: Annotated[int, Field(ge=1)] = 1  # size of the stored mask set; 1 is a plain MADE
    mask_resampling: Literal[MASK_RESAMPLING] = (
        "both"  # what differs between masks: the ordering, the connectivity
    )
    fresh_masks: bool = False  # train with a new mask every step; the stored set is for evaluation
    order: str | list[int] = "natural"  # ordering of mask 0: natural | reversed | random | a permutation
    eval_masks: Annotated[int, Field(ge=1)] | None = None  # default ensemble size (None: every stored mask)
    seed: int = 0  # draws the stored masks; after that they are stored, not re-drawn
    # a uniform mixture of n_masks separately trained one-mask MADEs (`made merge`, mixture.py), stored as
    # one network whose masks use disjoint blocks of units (checkpoint layout)
    mixture: bool = False

    @model_validator(mode="after")
    def _consistent(self):
        if self.eval_masks is None:
            self.eval_masks = self.n_masks
        if self.eval_masks > self.n_masks:
            raise ValueError(f"eval_masks={self.eval_masks} exceeds n_masks={self.n_masks}")
        if isinstance(self.order, str) and self.order not in ORDERINGS:
            raise ValueError(f"unknown order {self.order!r}; expected one of {ORDERINGS} or a permutation")
        if not isinstance(self.order, str) and sorted(self.order) != list(range(self.n_dims)):
            raise ValueError(f"a given order must be a permutation of 0..{self.n_dims - 1}")
        if self.mixture:
            if self.mask_conditioning or self.fresh_masks:
                raise ValueError("a mixture has a fixed set of masks without mask conditioning")
            if any(h < self.n_masks for h in self.hidden_sizes):
                raise ValueError(
                    f"a mixture of {self.n_masks} needs at least {self.n_masks} units per hidden layer"
                )
        return self

    @property
    def params_per_dim(self) -> int:
        """P network outputs per dimension, as the likelihood head needs them."""
        return self.likelihood.make().params_per_dim

    @property
    def order_agnostic(self) -> bool:
        """Trained to predict under many orderings (so it can be re-ordered to condition on any set)."""
        return self.mask_resampling in ("order", "both") and (self.n_masks > 1 or self.fresh_masks)
