"""MADE, the maths: masks, the network, likelihood heads, ensembles and the reference sampler.

Pure PyTorch; no I/O and no web code. See Germain, Gregor, Murray & Larochelle (ICML 2015).
"""

from .density import MADEDensity
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from .network import ACTIVATIONS, MADE, MASK_RESAMPLING, MADEConfig
from .sampling import Randomness, draw_randomness, make_generator, sample, sample_from_randomness

__all__ = [
    "ACTIVATIONS",
    "LIKELIHOODS",
    "MADE",
    "MASK_RESAMPLING",
    "Likelihood",
    "MADEConfig",
    "MADEDensity",
    "Randomness",
    "draw_randomness",
    "make_generator",
    "make_likelihood",
    "sample",
    "sample_from_randomness",
]


def build(
    n_dims: int,
    likelihood: str = "bernoulli",
    categories: int | None = None,
    components: int | None = None,
    shift=None,
    scale=None,
    **network_options,
) -> MADEDensity:
    """A MADEDensity from plain options: the likelihood head sets the network's params_per_dim."""
    head = make_likelihood(likelihood, categories=categories, components=components)
    config = MADEConfig(n_dims=n_dims, params_per_dim=head.params_per_dim, **network_options)
    return MADEDensity(MADE(config), head, shift=shift, scale=scale)


__all__.append("build")
