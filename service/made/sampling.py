"""The reference sampler: D sequential network passes per mask, one dimension fixed per pass.

It samples exactly the distribution that `Density.log_prob` scores: each sample picks one of the K
ensemble masks uniformly, then fills the dimensions in that mask's order, drawing x_d from
p(x_d | x_<d). All randomness is drawn first (`draw_randomness`: the mask choice of every row, then all
per-dimension noise) and the walk itself (`sample_from_randomness`) is deterministic. So the same seed
gives the same samples, and rows drawn with different generators can be sampled together in one batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .density import Density, evaluating


class Randomness(NamedTuple):
    mask_choice: torch.Tensor  # (n,) which of the K ensemble masks each row uses
    noise: torch.Tensor  # (n, D, R) the random numbers each dimension consumes


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def draw_randomness(
    model: Density, n: int, masks: int | None = None, generator: torch.Generator | None = None
) -> Randomness:
    K = model.resolve_masks(masks)
    mask_choice = torch.randint(K, (n,), generator=generator, device=model.device)
    noise = model.likelihood.draw_noise(n, model.n_dims, generator, model.device).to(model.dtype)
    return Randomness(mask_choice, noise)


@torch.no_grad()
def sample_per_mask(model: Density, randomness: Randomness, fill) -> torch.Tensor:
    """What every sampler shares: eval mode (no dropout), the rows grouped by the mask they drew, and
    `fill(k, rows)` giving those rows' standardised samples under mask k; returns original units."""
    mask_choice, noise = randomness
    with evaluating(model):
        z = torch.zeros(noise.shape[0], model.n_dims, device=model.device, dtype=model.dtype)
        for k in mask_choice.unique().tolist():
            rows = (mask_choice == k).nonzero(as_tuple=True)[0]
            z[rows] = fill(k, rows)
        return model.destandardise(z)


def sample_from_randomness(model: Density, randomness: Randomness) -> torch.Tensor:
    """(n, D) samples in the data's original units, a deterministic function of the randomness."""
    noise = randomness.noise

    def walk(k: int, rows: torch.Tensor) -> torch.Tensor:
        density, mask = model.component(k)
        density.network.use_mask(mask)
        z_k = torch.zeros(len(rows), model.n_dims, device=model.device, dtype=model.dtype)  # one dim per pass
        for d in density.network.ordering(mask).tolist():
            params = density.network(z_k)  # (n_k, P, D); column d depends only on the fixed x_<d
            z_k[:, d] = model.likelihood.sample(params[:, :, d], noise[rows, d])
        return z_k

    return sample_per_mask(model, randomness, walk)


def sample(
    model: Density, n: int, masks: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n, D) samples from the K-mask ensemble, in the data's original units."""
    return sample_from_randomness(model, draw_randomness(model, n, masks, generator))
