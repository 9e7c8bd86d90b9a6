"""The reference sampler: D sequential network passes per mask, one dimension fixed per pass.

It samples exactly the distribution that `MADEDensity.log_prob` scores: each sample picks one of the K
ensemble masks uniformly, then fills the dimensions in that mask's order, drawing x_d from
p(x_d | x_<d). Random numbers come from a `torch.Generator` in a fixed order (mask choices for all
rows, then all per-dimension noise), so the same seed gives the same samples.
"""

from __future__ import annotations

import torch

from .density import MADEDensity


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


@torch.no_grad()
def sample(
    model: MADEDensity, n: int, masks: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n, D) samples in the data's original units."""
    K = model.resolve_masks(masks)
    D, device, dtype = model.n_dims, model.device, model.dtype
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        mask_choice = torch.randint(K, (n,), generator=generator, device=device)  # (n,)
        noise = model.likelihood.draw_noise(n, D, generator, device).to(dtype)  # (n, D, R)
        z = torch.zeros(n, D, device=device, dtype=dtype)
        for k in range(K):
            rows = (mask_choice == k).nonzero(as_tuple=True)[0]
            if len(rows) == 0:
                continue
            model.network.use_mask(k)
            z_k = torch.zeros(len(rows), D, device=device, dtype=dtype)  # (n_k, D), filled one dimension per pass
            for d in model.network.ordering(k).tolist():
                params = model.network(z_k)  # (n_k, P, D); column d depends only on the fixed x_<d
                z_k[:, d] = model.likelihood.sample(params[:, :, d], noise[rows, d])
            z[rows] = z_k
        return model.destandardise(z)
    finally:
        model.train(was_training)
