"""Log-likelihoods of MADE models: one mask, a mask ensemble, and per-dimension conditionals.

For one mask, log p(x) = sum_d log p(x_d | x_<d): a single network pass gives every conditional.
A K-mask ensemble is a uniform mixture of K autoregressive models, so it averages *probabilities*:
    log p(x) = logsumexp_k log p_k(x) - log K.
`Density` holds these formulas for any K autoregressive components; `MADEDensity`'s components are the
masks of one network, `mixture.MADEMixture`'s are separately trained MADEs.
Real-valued data is modelled after standardisation z = (x - shift) / scale; the density in the original
units includes the log-Jacobian, log p(x) = log p(z) - sum_d log scale_d.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .config import MADEConfig
from .likelihoods import Likelihood
from .network import MADE


def mask_average(per_component: torch.Tensor) -> torch.Tensor:
    """log (1/K sum_k p_k) from the (K, ...) log p_k of K components along dim 0: the ensemble (and mixture)
    average of *probabilities*, never of logits. With one component it is that component (logsumexp of one
    value is the value: the same bits, without the call)."""
    K = per_component.shape[0]
    if K == 1:
        return per_component[0]
    return torch.logsumexp(per_component, dim=0) - math.log(K)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode (no dropout) for the block, then the mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Density(nn.Module):
    """A uniform mixture of K autoregressive components over the same D dimensions.

    Component k is one mask of one MADE network: `component(k)` says which (a MADEDensity and the mask
    index in it). Subclasses give `config`, `likelihood`, `shift`, `scale`, `n_masks`, `device`, `dtype`,
    `order_agnostic` and `component`; everything below is the same maths for any of them."""

    config: MADEConfig
    likelihood: Likelihood

    def component(self, k: int) -> tuple[MADEDensity, int]:
        raise NotImplementedError

    @property
    def n_dims(self) -> int:
        return self.config.n_dims

    def resolve_masks(self, masks: int | None) -> int:
        """The ensemble size to use: the model's default when None; more than are stored is refused."""
        if masks is None:
            return self.config.eval_masks
        if not 1 <= masks <= self.n_masks:
            raise ValueError(f"masks must be between 1 and {self.n_masks} (the model stores {self.n_masks})")
        return masks

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale if self.likelihood.real_valued else x

    def destandardise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.shift if self.likelihood.real_valued else z

    def ordering(self, k: int) -> torch.Tensor:
        """(D,) the dimensions of component k in the order they are generated."""
        density, mask = self.component(k)
        return density.network.ordering(mask)

    def shares_ordering(self, masks: int) -> bool:
        """Whether the first `masks` components generate the dimensions in one order."""
        first = self.ordering(0)
        return all(torch.equal(self.ordering(k), first) for k in range(1, masks))

    # ---- one component -------------------------------------------------------------------------------
    def conditionals_for_mask(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(B, D) log p(x_d | x_<d) under component k, in input order, in the data's original units."""
        density, mask = self.component(k)
        density.network.use_mask(mask)
        return density.conditionals_for_active_mask(x)

    # ---- ensembles ---------------------------------------------------------------------------------
    def log_prob_per_mask(self, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
        """(K, B) log p_k(x) for the first K components."""
        K = self.resolve_masks(masks)
        return torch.stack([self.conditionals_for_mask(x, k).sum(dim=1) for k in range(K)])

    def log_prob(self, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
        """(B,) log p(x) in nats under the K-component ensemble."""
        K = self.resolve_masks(masks)
        if K == 1:  # logsumexp of one value is itself: three torch calls fewer
            return self.conditionals_for_mask(x, 0).sum(dim=1)
        return mask_average(self.log_prob_per_mask(x, K))

    def log_prob_batches(
        self, batches: Iterable[torch.Tensor], masks: int | None = None
    ) -> Iterator[torch.Tensor]:
        """float64 log p(x) on the CPU for each batch of rows, in eval mode without autograd: how scoring
        many rows (evaluation, calibration, `made score`) goes."""
        with evaluating(self), torch.no_grad():
            for batch in batches:
                yield self.log_prob(batch.to(self.device), masks=masks).double().cpu()

    def conditional_log_probs(self, x: torch.Tensor, masks: int | None = None) -> torch.Tensor:
        """(B, D) log p(x_d | x_<d) in input order; they sum to log_prob(x).

        For an ensemble the conditionals are the mixture's own: with prefix marginals
        log p(x_{<=i}) = logsumexp_k sum_{j<=i} log p_k(x_j | x_<j) - log K, the conditional at ordering
        position i is their difference. This needs one ordering shared by the K components (connectivity-
        agnostic ensembles); components with different orderings have no common "x_<d" and are refused.
        """
        K = self.resolve_masks(masks)
        if K == 1:
            return self.conditionals_for_mask(x, 0)
        if not self.shares_ordering(K):
            raise ValueError(
                "per-dimension conditionals of an ensemble need masks that share one ordering; "
                "these masks use different orderings (ask for masks=1)"
            )
        return self._mixture_conditionals(torch.stack([self.conditionals_for_mask(x, k) for k in range(K)]))

    def _mixture_conditionals(self, per_mask: torch.Tensor) -> torch.Tensor:
        """(B, D) the mixture's conditionals from its components' (K, B, D), all in one ordering."""
        ordering = self.ordering(0)
        by_position = per_mask[:, :, ordering]
        prefix = mask_average(by_position.cumsum(dim=2))  # (B, D) log p(x_{<=i}) of the mixture
        steps = torch.diff(prefix, dim=1, prepend=torch.zeros_like(prefix[:, :1]))
        conditionals = torch.empty_like(steps)
        conditionals[:, ordering] = steps
        return conditionals

    def log_prob_and_feature_scores(
        self, x: torch.Tensor, masks: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """((B,) log p(x), (B, D) each dimension's part of the anomaly score -log p(x_d | x_<d), input order),
        from one pass over the K components.

        With one ordering across the components the parts are the ensemble's own conditionals: they sum to
        -log p(x). Components with different orderings have no common x_<d; then each dimension gets the
        mean over components of its conditional under each, so the attribution does not hang on one
        ordering. Those sum to the components' mean NLL, which is at least -log p(x) (Jensen)."""
        K = self.resolve_masks(masks)
        per_mask = torch.stack([self.conditionals_for_mask(x, k) for k in range(K)])  # (K, B, D)
        log_prob = mask_average(per_mask.sum(dim=2))
        if K == 1:
            return log_prob, -per_mask[0]
        if self.shares_ordering(K):
            return log_prob, -self._mixture_conditionals(per_mask)
        return log_prob, -per_mask.mean(dim=0)


class MADEDensity(Density):
    """One MADE network and its likelihood head: the components are the network's stored masks."""

    def __init__(
        self,
        network: MADE,
        likelihood: Likelihood,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ):
        super().__init__()
        if network.params_per_dim != likelihood.params_per_dim:
            raise ValueError("network.params_per_dim does not match the likelihood head")
        D = network.config.n_dims
        self.network = network
        self.config = network.config  # the network's, fixed when it was built; an attribute is cheap to read
        self.likelihood = likelihood
        # Standardisation statistics live in the checkpoint's config.json, so they are not persistent here.
        self.register_buffer("shift", torch.zeros(D) if shift is None else shift.float(), persistent=False)
        self.register_buffer("scale", torch.ones(D) if scale is None else scale.float(), persistent=False)

    @classmethod
    def from_config(
        cls, config: MADEConfig, shift: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> MADEDensity:
        return cls(MADE(config), config.likelihood.make(), shift=shift, scale=scale)

    @property
    def n_masks(self) -> int:
        return self.config.n_masks

    @property
    def order_agnostic(self) -> bool:
        return self.config.order_agnostic

    @property
    def device(self) -> torch.device:
        return self.network.input_degrees.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.output.weight.dtype

    def component(self, k: int) -> tuple[MADEDensity, int]:
        return self, k

    def conditionals_for_active_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) log p(x_d | x_<d) under whatever mask the network has installed (training draws its own)."""
        z = self.standardise(x)
        log_probs = self.likelihood.log_prob(self.network(z), z)  # (B, D)
        if self.likelihood.real_valued:
            log_probs = log_probs - torch.log(self.scale)  # log-Jacobian of the standardisation
        return log_probs
