"""Likelihood heads: how the network's P outputs per dimension become log p(x_d | x_<d).

Each head turns params (B, P, D) and x (B, D) into per-dimension log-probabilities (B, D) in nats, and
turns the parameters of one dimension plus pre-drawn noise into a sample of that dimension. Drawing all
noise up front (`draw_noise`) fixes which random number each dimension consumes, so every sampler that
walks the same masks produces the same samples from the same seed.
Real-valued heads work on standardised data; `density.MADEDensity` converts to the original units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# Log-scales pass through a soft clamp to +-LOG_SCALE_BOUND: a point mass in the data (a value repeated
# exactly) would otherwise drive the scale to zero and the log-density to infinity. On standardised data
# exp(-7) ~ 1e-3 standard deviations is finer than anything a real-valued feature needs.
LOG_SCALE_BOUND = 7.0


def soft_clamp(log_scale: torch.Tensor, bound: float = LOG_SCALE_BOUND) -> torch.Tensor:
    return bound * torch.tanh(log_scale / bound)


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z * z - log_scale - LOG_SQRT_2PI


def inverse_cdf_index(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index i with cdf[i-1] <= u < cdf[i] for probs (B, K) and u (B,); clamped for rounding at u ~ 1."""
    cdf = torch.cumsum(probs, dim=1)
    index = (cdf <= u[:, None]).sum(dim=1)
    return index.clamp_(max=probs.shape[1] - 1)


class Likelihood:
    name: str
    params_per_dim: int
    noise_per_dim: int = 1
    real_valued: bool = False
    support: str  # words for error messages

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B,P,D),(B,D) -> (B,D)
        raise NotImplementedError

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:  # (B,P),(B,R) -> (B,)
        raise NotImplementedError

    # in_support takes a torch tensor or a numpy array alike (operators and methods both have), so request
    # rows are checked in numpy (data.validate).
    def in_support(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> bool (B, D)
        return abs(x) < math.inf  # finite: NaN and +-Inf compare false

    # The fast sampler turns all noise into whatever form makes one dimension's draw cheapest, once.
    def prepare_noise(self, noise: torch.Tensor) -> torch.Tensor:  # (n, D, R) -> (n, D, R')
        return noise

    def sample_prepared(self, params: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:  # (n,P),(n,R')
        return self.sample(params, prepared)

    def draw_noise(self, n: int, n_dims: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """(n, D, R) random numbers, R per dimension (uniform unless a head says otherwise)."""
        return torch.rand(n, n_dims, self.noise_per_dim, generator=generator, device=device)

    def spec(self) -> dict:
        return {"name": self.name}

    # How samples are handed out: their numpy dtype (None: the model's float dtype, as computed) ...
    sample_dtype: str | None = None

    def cast_samples(self, samples):  # numpy (n, D) -> numpy (n, D) of sample_dtype
        return samples if self.sample_dtype is None else samples.astype(self.sample_dtype)

    # ... and the value range of an image of them (None: real-valued, the range comes from the samples).
    def value_range(self) -> tuple[float, float] | None:
        return None


class Bernoulli(Likelihood):
    """Binary data: one logit per dimension."""

    name, params_per_dim, support = "bernoulli", 1, "0 or 1"

    def log_prob(self, params, x):
        return -F.binary_cross_entropy_with_logits(params[:, 0], x, reduction="none")

    def sample(self, params, noise):
        return (noise[:, 0] < torch.sigmoid(params[:, 0])).to(params.dtype)

    def prepare_noise(self, noise):
        # u < sigmoid(l)  <=>  logit(u) < l: one comparison per draw instead of a sigmoid and a comparison
        return torch.logit(noise.double()).to(noise.dtype)

    def sample_prepared(self, params, prepared):
        return (params[:, 0] > prepared[:, 0]).to(params.dtype)

    def in_support(self, x):
        return (x == 0) | (x == 1)

    sample_dtype = "int64"  # integers, like categorical samples: JSON shows 0/1, .npy holds int64

    def value_range(self):
        return 0.0, 1.0


class Categorical(Likelihood):
    """Integer-coded discrete data with K values per dimension: K logits per dimension."""

    name, real_valued = "categorical", False

    def __init__(self, categories: int):
        if categories < 2:
            raise ValueError("categorical likelihood needs at least 2 categories")
        self.categories = self.params_per_dim = int(categories)
        self.support = f"an integer in [0, {categories - 1}]"

    def log_prob(self, params, x):  # params (B, K, D)
        log_probs = torch.log_softmax(params, dim=1)
        return log_probs.gather(1, x.long().unsqueeze(1)).squeeze(1)

    def sample(self, params, noise):  # params (B, K)
        return inverse_cdf_index(torch.softmax(params, dim=1), noise[:, 0]).to(params.dtype)

    def in_support(self, x):
        return (x == x.round()) & (x >= 0) & (x < self.categories)

    def spec(self):
        return {"name": self.name, "categories": self.categories}

    sample_dtype = "int64"

    def value_range(self):
        return 0.0, float(self.categories - 1)


class Gaussian(Likelihood):
    """Real-valued data: mean and log-scale per dimension."""

    name, params_per_dim, real_valued, support = "gaussian", 2, True, "a finite real number"

    def log_prob(self, params, x):
        return normal_log_prob(x, params[:, 0], soft_clamp(params[:, 1]))

    def draw_noise(self, n, n_dims, generator, device):
        return torch.randn(n, n_dims, 1, generator=generator, device=device)

    def sample(self, params, noise):
        return params[:, 0] + torch.exp(soft_clamp(params[:, 1])) * noise[:, 0]


class MixtureOfGaussians(Likelihood):
    """MADE MoG (Papamakarios et al. 2017): C components per dimension, params (B, 3C, D) laid out as
    [mixture logits | means | log-scales]."""

    name, real_valued, support, noise_per_dim = "mog", True, "a finite real number", 2

    def __init__(self, components: int):
        if components < 1:
            raise ValueError("mog likelihood needs at least 1 component")
        self.components = int(components)
        self.params_per_dim = 3 * self.components

    def _split(self, params):
        logits, means, log_scales = params.split(self.components, dim=1)
        return torch.log_softmax(logits, dim=1), means, soft_clamp(log_scales)

    def log_prob(self, params, x):  # (B, 3C, D), (B, D)
        log_weights, means, log_scales = self._split(params)  # each (B, C, D)
        return torch.logsumexp(log_weights + normal_log_prob(x.unsqueeze(1), means, log_scales), dim=1)

    def draw_noise(self, n, n_dims, generator, device):
        u = torch.rand(n, n_dims, 1, generator=generator, device=device)  # picks the component
        eps = torch.randn(n, n_dims, 1, generator=generator, device=device)  # draws within it
        return torch.cat([u, eps], dim=2)

    def sample(self, params, noise):  # (B, 3C), (B, 2)
        log_weights, means, log_scales = self._split(params.unsqueeze(-1))
        component = inverse_cdf_index(log_weights[..., 0].exp(), noise[:, 0]).unsqueeze(1)  # (B, 1)
        mean = means[..., 0].gather(1, component)[:, 0]
        scale = log_scales[..., 0].gather(1, component)[:, 0].exp()
        return mean + scale * noise[:, 1]

    def spec(self):
        return {"name": self.name, "components": self.components}


LIKELIHOODS = ("bernoulli", "categorical", "gaussian", "mog")


def make_likelihood(name: str, categories: int | None = None, components: int | None = None) -> Likelihood:
    if name == "bernoulli":
        return Bernoulli()
    if name == "categorical":
        if categories is None:
            raise ValueError("the categorical likelihood needs the number of categories (--categories K)")
        return Categorical(categories)
    if name == "gaussian":
        return Gaussian()
    if name == "mog":
        return MixtureOfGaussians(components if components is not None else 10)
    raise ValueError(f"unknown likelihood {name!r}; expected one of {LIKELIHOODS}")
