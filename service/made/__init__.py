"""MADE, the maths: masks, the network, likelihood heads, ensembles, mixtures and the samplers.

Pure PyTorch; no I/O and no web code. See Germain, Gregor, Murray & Larochelle (ICML 2015).
"""

from .config import ACTIVATIONS, MASK_RESAMPLING, LikelihoodSpec, MADEConfig
from .density import Density, MADEDensity, evaluating
from .likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from .mixture import MADEMixture, merge
from .network import MADE
from .sampling import Randomness, draw_randomness, make_generator, sample, sample_from_randomness

__all__ = [
    "ACTIVATIONS",
    "LIKELIHOODS",
    "MADE",
    "MASK_RESAMPLING",
    "Density",
    "LikelihoodSpec",
    "Likelihood",
    "MADEConfig",
    "MADEDensity",
    "MADEMixture",
    "Randomness",
    "build",
    "draw_randomness",
    "evaluating",
    "make_generator",
    "make_likelihood",
    "merge",
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
    """A MADEDensity from plain options (`network_options` are MADEConfig fields)."""
    head = make_likelihood(likelihood, categories=categories, components=components)
    config = MADEConfig(n_dims=n_dims, likelihood=head.spec(), **network_options)
    return MADEDensity.from_config(config, shift=shift, scale=scale)
