"""What many tests share: small synthetic data, quick training, and the autoregressive check."""

from __future__ import annotations

import itertools

import torch

from service.made import Density


def all_binary(n_dims: int) -> torch.Tensor:
    """(2^D, D) every binary vector."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_dims)))


def all_categorical(n_dims: int, categories: int) -> torch.Tensor:
    """(K^D, D) every integer vector."""
    return torch.tensor(list(itertools.product(range(categories), repeat=n_dims)), dtype=torch.float32)


def markov_chain(n: int, n_dims: int, stay: float = 0.9, seed: int = 0) -> torch.Tensor:
    """Binary rows where each bit copies the one before with probability `stay`: known structure,
    entropy log 2 + (D-1) H(stay) nats."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, n_dims)
    x[:, 0] = (torch.rand(n, generator=g) < 0.5).float()
    for d in range(1, n_dims):
        flip = (torch.rand(n, generator=g) > stay).float()
        x[:, d] = (x[:, d - 1] + flip) % 2
    return x


def take_training_steps(model: Density, x: torch.Tensor, steps: int = 40, lr: float = 1e-2) -> Density:
    """A few Adam steps, cycling masks as training does, so tests see trained (not initial) weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = -model.conditionals_for_mask(x, step % model.n_masks).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def output_jacobian(model: Density, k: int, x: torch.Tensor) -> torch.Tensor:
    """(P, D, D) d params[p, d] / d x[d'] under component k, summed in absolute value over a batch."""
    density, mask = model.component(k)
    density.network.use_mask(mask)
    jac = torch.autograd.functional.jacobian(density.network, x)  # (B, P, D, B, D)
    return jac.abs().sum(dim=(0, 3))


def assert_autoregressive(model: Density, k: int) -> None:
    """Under component k, no output's gradient reaches its own input or a later one (float64 model)."""
    position = torch.argsort(model.ordering(k))  # (D,) where each dimension comes in the ordering
    D = model.n_dims
    jac = output_jacobian(model, k, torch.randn(5, D, dtype=torch.float64))  # (P, D, D)
    for d, d_in in itertools.product(range(D), range(D)):
        if position[d_in] >= position[d]:
            assert torch.all(jac[:, d, d_in] == 0), f"mask {k}: output {d} depends on input {d_in}"
