"""Log-likelihoods of a MADE: one mask, a mask ensemble, and per-dimension conditionals.

For one mask, log p(x) = sum_d log p(x_d | x_<d): a single network pass gives every conditional.
A K-mask ensemble is a uniform mixture of K autoregressive models, so it averages *probabilities*:
    log p(x) = logsumexp_k log p_k(x) - log K.
Real-valued data is modelled after standardisation z = (x - shift) / scale; the density in the original
units includes the log-Jacobian, log p(x) = log p(z) - sum_d log scale_d.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .likelihoods import Likelihood
from .network import MADE


class MADEDensity(nn.Module):
    def __init__(
        self,
        network: MADE,
        likelihood: Likelihood,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ):
        super().__init__()
        if network.config.params_per_dim != likelihood.params_per_dim:
            raise ValueError("network.params_per_dim does not match the likelihood head")
        D = network.config.n_dims
        self.network = network
        self.likelihood = likelihood
        # Standardisation statistics live in the checkpoint's config.json, so they are not persistent here.
        self.register_buffer("shift", torch.zeros(D) if shift is None else shift.float(), persistent=False)
        self.register_buffer("scale", torch.ones(D) if scale is None else scale.float(), persistent=False)

    @property
    def n_dims(self) -> int:
        return self.network.config.n_dims

    @property
    def n_masks(self) -> int:
        return self.network.config.n_masks

    @property
    def device(self) -> torch.device:
        return self.network.input_degrees.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.output.weight.dtype

    def resolve_masks(self, masks: int | None) -> int:
        """The ensemble size to use: the model's default when None; more than are stored is refused."""
        if masks is None:
            return self.network.config.eval_masks
        if not 1 <= masks <= self.n_masks:
            raise ValueError(f"masks must be between 1 and {self.n_masks} (the model stores {self.n_masks})")
        return masks

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale if self.likelihood.real_valued else x

    def destandardise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.shift if self.likelihood.real_valued else z

    # ---- one mask --------------------------------------------------------------------------------
    def conditionals_for_mask(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(B, D) log p(x_d | x_<d) under stored mask k, in input order, in the data's original units."""
        self.network.use_mask(k)
        return self.conditionals_for_active_mask(x)

    def conditionals_for_active_mask(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardise(x)
        log_probs = self.likelihood.log_prob(self.network(z), z)  # (B, D)
        if self.likelihood.real_valued:
            log_probs = log_probs - torch.log(self.scale)  # log-Jacobian of the standardisation
        return log_probs

    # ---- ensembles ---------------------------------------------------------------------------------
    def log_prob_per_mask(self, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
        """(K, B) log p_k(x) for the first K stored masks."""
        K = self.resolve_masks(masks)
        return torch.stack([self.conditionals_for_mask(x, k).sum(dim=1) for k in range(K)])

    def log_prob(self, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
        """(B,) log p(x) in nats under the K-mask ensemble (mixture of the K autoregressive models)."""
        per_mask = self.log_prob_per_mask(x, masks)
        return torch.logsumexp(per_mask, dim=0) - math.log(per_mask.shape[0])

    def conditional_log_probs(self, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
        """(B, D) log p(x_d | x_<d) in input order; they sum to log_prob(x).

        For an ensemble the conditionals are the mixture's own: with prefix marginals
        log p(x_{<=i}) = logsumexp_k sum_{j<=i} log p_k(x_j | x_<j) - log K, the conditional at ordering
        position i is their difference. This needs one ordering shared by the K masks (connectivity-
        agnostic ensembles); masks with different orderings have no common "x_<d" and are refused.
        """
        K = self.resolve_masks(masks)
        if K == 1:
            return self.conditionals_for_mask(x, 0)
        orderings = [self.network.ordering(k) for k in range(K)]
        if any(not torch.equal(o, orderings[0]) for o in orderings[1:]):
            raise ValueError(
                "per-dimension conditionals of an ensemble need masks that share one ordering; "
                "these masks use different orderings (ask for masks=1)"
            )
        ordering = orderings[0]
        per_mask = torch.stack([self.conditionals_for_mask(x, k)[:, ordering] for k in range(K)])  # (K,B,D)
        prefix = torch.logsumexp(per_mask.cumsum(dim=2), dim=0) - math.log(K)  # (B, D) by position
        by_position = torch.diff(prefix, dim=1, prepend=torch.zeros_like(prefix[:, :1]))
        conditionals = torch.empty_like(by_position)
        conditionals[:, ordering] = by_position
        return conditionals
